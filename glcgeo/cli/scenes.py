"""What the commands that run a network over scenes share (``predict``, ``embed``).

Their options (:func:`add_scene_options`) and their run (:class:`SceneCommand`):
the rules of their outputs (a file for one scene, a folder for several), their
claims on the outputs (:func:`claim`), and the run over many scenes in one or
several processes (:func:`run_over_scenes`). Nothing here imports torch at the
top.
"""

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from ..allocator import keep_freed_memory
from ..bands import band_files, stack_of
from ..errors import GlcgeoError
from ..gdal_paths import RASTER_SUFFIXES, is_url
from ..outputs import OutputLock, check_destination, written_as_folder
from ..sources import expand
from .types import at_least, band, devices, finite, positive

if TYPE_CHECKING:
    from torch import nn

    from ..checkpoints import ModelMetadata
    from ..inference.predict import UnpublishedScene
    from ..inference.scenes import SceneJob, SceneResult


def add_scene_options(parser: argparse.ArgumentParser, what: str) -> None:
    """Add the inputs, bands, tiling and process options to a command.

    Args:
        parser: the command's parser.
        what: what the command writes per scene, for the help (``'map'``).
    """
    add = parser.add_argument
    add(
        '--in',
        dest='source',
        metavar='PATH',
        nargs='+',
        required=True,
        help='input rasters: files, folders, glob patterns, or URLs (http(s)://, '
        "s3://, gs://, /vsi...); a file per band ('S2/*_{band}.tif' with --bands "
        'B02 B03 ...); STAC items (.json), each output named after its item',
    )
    add(
        '--out',
        metavar='PATH',
        required=True,
        help=f'output {what} (GeoTIFF), or folder of them (several scenes, or an '
        'existing folder or a path ending in /)',
    )
    add('--overwrite', action='store_true', help='replace (re-make) existing outputs')
    add(
        '--bands',
        metavar='BAND',
        type=band,
        nargs='+',
        help="1-based input bands (default: the checkpoint's, or all), or names: of "
        "{band} patterns and STAC items (B04, red), or else the files' band "
        'descriptions; the network reads them in that order',
    )
    add(
        '--mean',
        metavar='VALUE',
        type=finite,
        nargs='+',
        help="per-band mean of raw values (default: the checkpoint's)",
    )
    add(
        '--std',
        metavar='VALUE',
        type=positive(),
        nargs='+',
        help="per-band std of raw values (default: the checkpoint's)",
    )
    add(
        '--stats',
        metavar='JSON',
        help='"mean" and "std" lists in a JSON file, e.g. from glcgeo stats',
    )
    add(
        '--nodata',
        metavar='VALUE',
        type=float,
        help="input nodata value (default: the file's)",
    )
    add(
        '--tile-size',
        metavar='PIXELS',
        type=positive(int),
        default=512,
        help='tile side (default: %(default)s)',
    )
    add(
        '--overlap',
        metavar='PIXELS',
        type=at_least(0),
        default=128,
        help='pixels shared by neighbouring tiles (default: %(default)s)',
    )
    add(
        '--batch-size',
        metavar='TILES',
        type=positive(int),
        help='tiles per forward pass (default: on a CPU as many as make 512 x 512 '
        'pixels, on a GPU 4)',
    )
    add(
        '--device',
        help='one process: auto (CUDA if available), cpu, cuda:1, ... (default: auto)',
    )
    add(
        '--devices',
        metavar='N',
        type=devices,
        help='several processes (Lightning DDP): devices per node, or auto; scenes '
        'are dealt to processes, each made whole by one',
    )
    add('--num-nodes', metavar='M', type=at_least(1), help='machines (default: 1)')
    add('--accelerator', help='cpu, gpu or auto, with --devices (default: auto)')
    add('--quiet', action='store_true', help='no progress bar nor summary')


def scene_inputs(args: argparse.Namespace) -> list[str]:
    """The scenes of ``--in``, with ``args.bands`` made the bands the network reads.

    Indexes are the files' bands; band names choose the bands of band stacks
    ({band} patterns, STAC items), which hold them in that order, so the
    network reads bands 1..n of each stack; in other files they are band
    descriptions.

    Returns:
        the sources, one per scene.

    Raises:
        GlcgeoError: for band names and both band stacks and other files.
    """
    sources = expand(args.source, args.bands)
    if args.bands is not None and not all(isinstance(b, int) for b in args.bands):
        # Names are the bands of band stacks, or else the files' band descriptions.
        stacks = [stack_of(source) is not None for source in sources]
        if any(stacks) and not all(stacks):
            raise GlcgeoError(
                'band names (--bands) name the bands of {band} patterns and STAC '
                "items, or files' band descriptions: give inputs of one kind"
            )
        if all(stacks):
            args.bands = list(range(1, len(args.bands) + 1))
    return sources


def local_inputs(sources: Sequence[str], *files: str | None) -> list[str]:
    """The local files a run reads (band files of stacks included): never outputs."""
    return [p for p in (*band_files(list(sources)), *files) if p and not is_url(p)]


def several_processes(args: argparse.Namespace) -> bool:
    """Whether the command line asks for processes started by Lightning.

    Raises:
        GlcgeoError: if it also gives ``--device``.
    """
    several = any(
        v is not None for v in (args.devices, args.num_nodes, args.accelerator)
    )
    if several and args.device is not None:
        raise GlcgeoError(
            'give --device for one process, or --accelerator/--devices/--num-nodes '
            'for several, not both'
        )
    return several


def band_statistics(
    args: argparse.Namespace,
) -> tuple[list[float] | None, list[float] | None]:
    """The band mean and std given by ``--stats`` or ``--mean``/``--std``.

    Raises:
        GlcgeoError: if both are given, or the file is not band statistics.
    """
    if args.stats is None:
        return args.mean, args.std
    if args.mean is not None or args.std is not None:
        raise GlcgeoError('give either --stats or --mean/--std, not both')
    from ..stats import BandStats

    stats = BandStats.load(args.stats)
    return stats.mean, stats.std


def make_folder(path: str, flag: str) -> None:
    """Create an output folder (and its parents) if it does not exist."""
    looks_like_a_file = not os.path.exists(path) and path.endswith(RASTER_SUFFIXES)
    if looks_like_a_file or (os.path.exists(path) and not os.path.isdir(path)):
        raise GlcgeoError(f'{flag} must be a folder for several scenes', path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise GlcgeoError(
            f'cannot create the folder ({error.strerror})', path
        ) from None


def outside_output_folders(
    sources: list[str], named: Sequence[str], folders: Sequence[str]
) -> list[str]:
    """The sources, less the files found in the output folders.

    Outputs written into a folder inside an input folder are no inputs of the
    next run; a file named on the command line stays (an input that an output
    would replace is refused later).

    Args:
        sources: the expanded inputs.
        named: the inputs as given on the command line.
        folders: the output folders.

    Raises:
        GlcgeoError: if no input is left.
    """
    given = {os.path.abspath(path) for path in named}
    prefixes = tuple(os.path.realpath(path) + os.sep for path in folders)
    kept = [
        source
        for source in sources
        if is_url(source)
        or source in given
        or not os.path.realpath(source).startswith(prefixes)
    ]
    if not kept:
        raise GlcgeoError(
            'every input lies in the output folder: choose another --out', folders[0]
        )
    return kept


def claim(outputs: Sequence[str | None], folder: bool) -> ExitStack:
    """Claim the outputs (:class:`~glcgeo.outputs.OutputLock`) until the stack closes.

    Raises:
        GlcgeoError: if another live run writes one of them.
    """
    with ExitStack() as stack:
        for output in outputs:
            if output is not None:
                stack.enter_context(OutputLock(output, folder=folder))
        return stack.pop_all()


def run_over_scenes(
    args: argparse.Namespace,
    folder: bool,
    run: Callable[..., list['SceneResult']],
    done: str,
) -> None:
    """Run a command over its scenes, in several processes if asked; report them.

    Each result is reported as it comes (a failure on stderr, in one line); the
    first process then prints the table and, for a folder, writes its
    footprint index.

    Args:
        args: the parsed command line (``out``, ``quiet``, ``overwrite``,
            process options).
        folder: whether ``--out`` is a folder.
        run: makes this process's share of the scenes (loading the network in
            it), given the device, progress and the options of
            :func:`~glcgeo.inference.scenes.run_scenes` (rank, report ...).
        done: what the index calls the outputs, e.g. ``'maps'``.

    Raises:
        GlcgeoError: at the end, when some scenes failed.
    """
    from ..inference.scenes import (
        FOOTPRINTS,
        format_summary,
        gather_results,
        start_processes,
    )

    rank, world_size, device = 0, 1, args.device
    if several_processes(args):
        fabric = start_processes(
            accelerator=args.accelerator or 'auto',
            devices=args.devices or 'auto',
            num_nodes=args.num_nodes or 1,
        )
        rank, world_size, device = fabric.global_rank, fabric.world_size, fabric.device
    prefix = f'[process {rank}] ' if world_size > 1 else ''

    def report(result: 'SceneResult') -> None:
        if result.status == 'failed':
            print(f'glcgeo: {prefix}{result.error}', file=sys.stderr, flush=True)
        elif not args.quiet:
            print(
                f'{prefix}{result.job.destination}: {result.status} '
                f'({result.seconds:.1f} s)',
                flush=True,
            )

    results = run(
        rank=rank,
        world_size=world_size,
        skip_complete=folder,
        overwrite=args.overwrite,
        report=report,
        device=device,
        progress=not args.quiet and world_size == 1,
    )
    results = gather_results(results)
    if rank != 0:
        return  # the first process reports for all
    index = os.path.join(args.out, FOOTPRINTS)
    if folder:
        from ..inference.scenes import write_footprints

        write_footprints(results, index)
    if not args.quiet:
        print(format_summary(results))
        if folder:
            print(f'footprints of the {done} (one layer): {index}')
    failed = sum(result.status == 'failed' for result in results)
    if failed:
        raise GlcgeoError(f'{failed} of {len(results)} scenes failed (see above)')


class SceneCommand[Metadata: 'ModelMetadata'](ABC):
    """A command that runs a network over scenes (``predict``, ``embed``).

    Its flags are checked first, so that a mistake is reported before the
    network loads. One scene in one process is made here and its errors are the
    command's; several scenes (or ``--out`` naming a folder, or several
    processes) each get their outputs in the output folders, are skipped when
    complete (a killed run resumes) and fail one by one (:func:`run_over_scenes`).
    Subclasses say which network runs and what a scene becomes.

    Attributes:
        network: the network's checkpoint.
        outputs: the outputs made of every scene, by flag: files, or folders.
        extras: further files a run of one scene in one process writes, by flag.
        sidecars: the files that travel with the output of one scene.
    """

    #: What the footprint index calls the outputs, e.g. ``'maps'``.
    made: str
    #: What to do instead of an extra for several scenes, by its flag.
    instead: dict[str, str] = {}

    def __init__(self, args: argparse.Namespace, network: str) -> None:
        """Initialize a new SceneCommand.

        Args:
            args: the command's parsed arguments.
            network: the network's checkpoint.
        """
        self.args, self.network = args, network
        self.outputs: dict[str, str | None] = {'--out': args.out}
        self.extras: dict[str, str | None] = {}
        self.sidecars: list[str] = []
        self.mean, self.std = band_statistics(args)

    @abstractmethod
    def load_network(self) -> tuple['nn.Module', Metadata]:
        """The network and its metadata, with the command's own flags applied."""

    def options(self) -> dict[str, Any]:
        """The options of every scene given on the command line, and provenance.

        The checkpoint is hashed here, once for all scenes.
        """
        from ..provenance import Provenance

        return {
            'tile_size': self.args.tile_size,
            'overlap': self.args.overlap,
            'batch_size': self.args.batch_size,
            'nodata': self.args.nodata,
            'provenance': Provenance.of_checkpoint(self.network),
        }

    @abstractmethod
    def jobs(self, sources: Sequence[str], folder: bool) -> list['SceneJob']:
        """The outputs of each scene."""

    @abstractmethod
    def unpublished(
        self, model: 'nn.Module', metadata: Metadata, job: 'SceneJob', **options: Any
    ) -> 'UnpublishedScene':
        """Make a scene's outputs into temporary files, to publish."""

    @abstractmethod
    def make_extras(self) -> None:
        """Write the :attr:`extras` from the scene's output."""

    def load(self) -> tuple['nn.Module', Metadata]:
        """The network and its metadata, the flags overriding the checkpoint's."""
        model, metadata = self.load_network()
        args = self.args
        try:
            metadata = metadata.replace(
                bands=args.bands, band_mean=self.mean, band_std=self.std
            )
        except GlcgeoError as error:
            raise GlcgeoError(str(error), self.network) from None
        if self.mean is not None:
            # The statistics given are the scenes' own, whatever their dtype.
            metadata = dataclasses.replace(metadata, band_dtype=None)
        if metadata.band_mean is None:
            # A TorchGeo checkpoint has no statistics: raw values would go in.
            raise GlcgeoError(
                'the model carries no band statistics; give the ones it was '
                'trained with: --stats FILE (from glcgeo stats) or --mean and --std',
                self.network,
            )
        return model, metadata

    def run(self) -> None:
        """Run the command.

        Raises:
            GlcgeoError: for bad input or outputs that another live run writes,
                before the network runs; at the end, when some scenes failed
                (each reported as it failed).
        """
        args = self.args
        sources = scene_inputs(args)
        processes = several_processes(args)
        folder = (
            len(sources) > 1 or os.path.isdir(args.out) or written_as_folder(args.out)
        )
        outputs = {flag: path for flag, path in self.outputs.items() if path}
        if len(set(map(os.path.realpath, outputs.values()))) < len(outputs):
            kind = 'folders' if folder else 'files'
            raise GlcgeoError(f'{" and ".join(outputs)} must be different {kind}')
        extras = {flag: path for flag, path in self.extras.items() if path}
        if extras and (folder or processes):
            flag, path = next(iter(extras.items()))
            instead = f'; {self.instead[flag]}' if flag in self.instead else ''
            raise GlcgeoError(f'{flag} takes one scene in one process{instead}', path)
        if folder:
            sources = outside_output_folders(sources, args.source, [*outputs.values()])
        inputs = local_inputs(sources, self.network, args.stats)
        # This process only runs the network: before its first tensor, its
        # forward passes may keep their memory (see glcgeo.allocator).
        keep_freed_memory()
        if folder or processes:
            self._run_scenes(sources, inputs, outputs, folder)
            return
        files = [*outputs.values(), *self.sidecars]
        for flag, path in extras.items():
            if os.path.realpath(path) in map(os.path.realpath, files):
                raise GlcgeoError(f'{flag} must be another file than the outputs', path)
        for output in (*files, *extras.values()):
            check_destination(output, args.overwrite, inputs)
        with claim([*outputs.values(), *extras.values()], folder=False):
            model, metadata = self.load()
            start = time.perf_counter()
            scene = self.unpublished(
                model,
                metadata,
                *self.jobs(sources, folder=False),
                device=args.device,
                overwrite=args.overwrite,
                progress=not args.quiet,
                **self.options(),
            )
            scene.publish()
            if not args.quiet:
                summary = scene.summary
                print(
                    f'{summary.destination}: {summary.width} x {summary.height} '
                    f'pixels; tiles: {summary.tiles}, {summary.skipped_tiles} of them '
                    f'without data; {time.perf_counter() - start:.1f} s'
                )
            self.make_extras()

    def _run_scenes(
        self,
        sources: list[str],
        inputs: list[str],
        outputs: dict[str, str],
        folder: bool,
    ) -> None:
        """Make every scene, in this and the processes it starts, resumably."""
        from ..inference.scenes import FOOTPRINTS

        jobs = self.jobs(sources, folder)
        written = [output for job in jobs for output in job.outputs]

        def this_process(
            device: Any, progress: bool, **sharing: Any
        ) -> list['SceneResult']:
            from ..inference.scenes import run_scenes

            model, metadata = self.load()
            options = {'device': device, 'progress': progress, **self.options()}

            def unpublished(job: 'SceneJob', replace: bool) -> 'UnpublishedScene':
                return self.unpublished(
                    model, metadata, job, overwrite=replace, **options
                )

            return run_scenes(jobs, unpublished, **sharing)

        created = [path for path in outputs.values() if not os.path.exists(path)]
        try:
            if folder:
                for flag, path in outputs.items():
                    make_folder(path, flag)
                written.append(os.path.join(self.args.out, FOOTPRINTS))
            with claim([*outputs.values()], folder):
                for output in written:
                    # Existing outputs are skipped or replaced scene by scene.
                    check_destination(output, True, inputs)
                run_over_scenes(self.args, folder, this_process, self.made)
        finally:
            for path in created if folder else ():
                # A run that wrote nothing leaves no folder of its own behind.
                with contextlib.suppress(OSError):
                    os.rmdir(path)
