"""``glcgeo predict``: georeferenced land-cover maps of scenes from a checkpoint."""

import argparse
import os
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from ..allocator import keep_freed_memory
from ..bands import band_files, stack_of
from ..errors import GlcgeoError
from ..outputs import OutputLock, check_destination
from ..sources import RASTER_SUFFIXES, expand, is_url

if TYPE_CHECKING:
    from torch import nn

    from ..checkpoints import CheckpointMetadata
    from ..inference.scenes import SceneJob
from .types import at_least, band, finite, positive
from .vectorize import add_polygon_options


def add_parser(subparsers: Any) -> None:
    """Register ``glcgeo predict``.

    Args:
        subparsers: the sub-command group of the ``glcgeo`` parser.
    """
    parser = subparsers.add_parser(
        'predict',
        help='predict land-cover maps of scenes (Cloud Optimized GeoTIFFs)',
        description=(
            'Run a segmentation checkpoint (glcgeo fine-tuning or TorchGeo '
            'SemanticSegmentation) over rasters of any size, tile by tile, and '
            "write Cloud Optimized GeoTIFFs of class ids with each input's size, "
            'CRS and transform, a colour map, class names (for GDAL and QGIS, in '
            '<map>.tif.aux.xml and the QGIS style <map>.qml beside it) and '
            'provenance tags. Bands, normalisation '
            'and class names come from the checkpoint; flags override them. With '
            'several scenes (or --out naming a folder), each map is written to '
            'OUT/<input stem>.tif, scenes whose map exists are skipped (a killed '
            'run resumes), a failed scene does not stop the others, and '
            'OUT/footprints.gpkg indexes the maps.'
        ),
    )
    add = parser.add_argument
    add(
        '--in',
        dest='source',
        metavar='PATH',
        nargs='+',
        required=True,
        help='input rasters: files, folders, glob patterns, or URLs (http(s)://, '
        "s3://, gs://, /vsi...); a file per band ('S2/*_{band}.tif' with --bands "
        'B02 B03 ...); STAC items (.json), each map named after its item',
    )
    add(
        '--out',
        metavar='PATH',
        required=True,
        help='output class map (GeoTIFF), or folder of maps (several scenes, or an '
        'existing folder or a path ending in /)',
    )
    add('--model', metavar='CKPT', required=True, help='Lightning checkpoint')
    add(
        '--probabilities',
        metavar='PATH',
        help='also write per-class percent here (a folder when --out is one)',
    )
    add(
        '--confidence',
        action='store_true',
        help='add a last band to --probabilities: the percent probability of the '
        'class mapped',
    )
    add(
        '--polygons',
        metavar='GPKG',
        help='also write the class polygons here (one scene; see glcgeo vectorize)',
    )
    add_polygon_options(parser)
    add(
        '--overwrite', action='store_true', help='replace (re-predict) existing outputs'
    )
    add(
        '--bands',
        metavar='BAND',
        type=band,
        nargs='+',
        help="1-based input bands (default: the checkpoint's, or all), or the band "
        'names of {band} patterns and STAC items (B04, red), which the model reads '
        'in that order',
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
        '--class-names',
        metavar='NAME',
        nargs='+',
        help="one name per class (default: the checkpoint's, or class_<i>)",
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
        help='several processes (Lightning DDP): devices per node, or auto; scenes '
        'are dealt to processes, each predicted whole by one',
    )
    add('--num-nodes', metavar='M', type=at_least(1), help='machines (default: 1)')
    add('--accelerator', help='cpu, gpu or auto, with --devices (default: auto)')
    add('--quiet', action='store_true', help='no progress bar nor summary')
    parser.set_defaults(func=run)


def _is_folder(path: str) -> bool:
    """Whether an output path names a folder: an existing one, or ending in /."""
    return os.path.isdir(path) or path.endswith(('/', os.sep))


def _several_processes(args: argparse.Namespace) -> bool:
    """Whether the command line asks for processes started by Lightning."""
    return any(v is not None for v in (args.devices, args.num_nodes, args.accelerator))


def _make_folder(path: str, flag: str) -> None:
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


def _outside_output_folders(sources: list[str], args: argparse.Namespace) -> list[str]:
    """The sources, less the files found in the output folders.

    Maps written into a folder inside an input folder are no inputs of the
    next run; a file named on the command line stays (an input that an output
    would replace is refused later).
    """
    named = {os.path.abspath(path) for path in args.source}
    folders = [
        os.path.realpath(path) + os.sep
        for path in (args.out, args.probabilities)
        if path is not None
    ]
    kept = [
        source
        for source in sources
        if is_url(source)
        or source in named
        or not os.path.realpath(source).startswith(tuple(folders))
    ]
    if not kept:
        raise GlcgeoError(
            'every input lies in the output folder: choose another --out', args.out
        )
    return kept


def _model_bands(bands: list[int | str] | None, sources: list[str]) -> list[int] | None:
    """The 1-based bands the model reads of each source.

    Indexes are the files' bands; band names choose the bands of band stacks
    ({band} patterns, STAC items), which hold them in that order.

    Raises:
        GlcgeoError: for band names and a source that is no band stack.
    """
    if bands is None:
        return None
    if all(isinstance(b, int) for b in bands):
        return [int(b) for b in bands]
    for source in sources:
        if stack_of(source) is None:
            raise GlcgeoError(
                'band names (--bands) choose the bands of {band} patterns and STAC '
                "items; give this file's bands as 1-based indexes",
                source,
            )
    return list(range(1, len(bands) + 1))


def _claim(args: argparse.Namespace, folder: bool) -> ExitStack:
    """Claim the outputs (:class:`~glcgeo.outputs.OutputLock`) until the stack closes.

    Raises:
        GlcgeoError: if another live run writes one of them.
    """
    with ExitStack() as stack:
        for output in (args.out, args.probabilities):
            if output is not None:
                stack.enter_context(OutputLock(output, folder=folder))
        return stack.pop_all()


def run(args: argparse.Namespace) -> None:
    """Predict the maps described by the parsed arguments.

    Args:
        args: the parsed ``glcgeo predict`` arguments.

    Raises:
        GlcgeoError: for bad input or outputs that another live run writes,
            before any tile is predicted; at the end, when some scenes failed
            (each reported as it failed).
    """
    # Cheap checks first, so a mistake is reported before the model loads.
    sources = expand(args.source, args.bands)
    args.bands = _model_bands(args.bands, sources)
    processes = _several_processes(args)
    if processes and args.device is not None:
        raise GlcgeoError(
            'give --device for one process, or --accelerator/--devices/--num-nodes '
            'for several, not both'
        )
    mean, std = args.mean, args.std
    if args.stats is not None:
        if mean is not None or std is not None:
            raise GlcgeoError('give either --stats or --mean/--std, not both')
        from ..stats import BandStats

        stats = BandStats.load(args.stats)
        mean, std = stats.mean, stats.std
    folder = len(sources) > 1 or _is_folder(args.out)
    if args.confidence and args.probabilities is None:
        raise GlcgeoError('--confidence is a band of --probabilities: give both')
    if args.polygons is not None and (folder or processes):
        raise GlcgeoError(
            '--polygons takes one scene in one process; run glcgeo vectorize on '
            'each map of several'
        )
    if folder:
        sources = _outside_output_folders(sources, args)
    inputs = [
        p for p in (*band_files(sources), args.model, args.stats) if p and not is_url(p)
    ]
    # This process only predicts: before the model's first tensor, its forward
    # passes may keep their memory (see glcgeo.allocator).
    keep_freed_memory()
    if not folder and not processes:
        # One scene in one process: its errors are the command's.
        from ..inference.writer import sidecar_paths

        rasters = [args.out, *sidecar_paths(args.out), args.probabilities]
        if args.polygons is not None and os.path.realpath(args.polygons) in {
            os.path.realpath(output) for output in rasters if output is not None
        }:
            raise GlcgeoError('--polygons must be another file than the maps')
        for output in (*rasters, args.polygons):
            if output is not None:
                check_destination(output, args.overwrite, inputs)
        with _claim(args, folder=False):
            _predict_scene(args, sources[0], mean, std)
        return

    from ..inference.scenes import FOOTPRINTS, scene_jobs

    jobs = scene_jobs(sources, args.out, args.probabilities, folder=folder)
    outputs = [output for job in jobs for output in job.outputs]
    if folder:
        folders = [('--out', args.out), ('--probabilities', args.probabilities)]
        if args.probabilities is not None and os.path.realpath(
            args.probabilities
        ) == os.path.realpath(args.out):
            raise GlcgeoError('--probabilities and --out must be different folders')
        for flag, path in folders:
            if path is not None:
                _make_folder(path, flag)
        outputs.append(os.path.join(args.out, FOOTPRINTS))
    with _claim(args, folder):
        for output in outputs:
            # Existing maps are skipped or replaced scene by scene, not refused.
            check_destination(output, True, inputs)
        _predict_scenes(args, jobs, folder, mean, std)


def _load(
    args: argparse.Namespace, mean: list[float] | None, std: list[float] | None
) -> tuple['nn.Module', 'CheckpointMetadata']:
    """The model and its metadata, the flags overriding the checkpoint's."""
    from ..inference import load_segmentation_checkpoint

    model, metadata = load_segmentation_checkpoint(args.model)
    metadata = metadata.replace(
        bands=args.bands, band_mean=mean, band_std=std, class_names=args.class_names
    )
    if metadata.band_mean is None:
        # A TorchGeo checkpoint has no statistics: raw values would go in.
        raise GlcgeoError(
            'the model carries no band statistics; give the ones it was trained '
            'with: --stats FILE (from glcgeo stats) or --mean and --std',
            args.model,
        )
    return model, metadata


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of predict_raster given on the command line, and provenance.

    The checkpoint is hashed here, once for all scenes.
    """
    from ..provenance import Provenance

    return {
        'tile_size': args.tile_size,
        'overlap': args.overlap,
        'batch_size': args.batch_size,
        'nodata': args.nodata,
        'confidence': args.confidence,
        'provenance': Provenance.of_checkpoint(args.model),
    }


def _predict_scene(
    args: argparse.Namespace,
    source: str,
    mean: list[float] | None,
    std: list[float] | None,
) -> None:
    """Predict one scene in this process (and its polygons); say what was written."""
    from ..inference import predict_raster
    from ..inference.polygons import vectorize

    model, metadata = _load(args, mean, std)
    summary = predict_raster(
        model,
        metadata,
        source,
        args.out,
        probabilities=args.probabilities,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.quiet,
        **_options(args),
    )
    if not args.quiet:
        print(
            f'{summary.destination}: {summary.width} x {summary.height} pixels; '
            f'tiles: {summary.tiles}, {summary.skipped_tiles} of them without data; '
            f'{summary.seconds:.1f} s'
        )
    if args.polygons is not None:
        count = vectorize(
            args.out, args.polygons, min_area=args.min_area, overwrite=args.overwrite
        )
        if not args.quiet:
            print(f'{args.polygons}: {count} polygons')


def _predict_scenes(
    args: argparse.Namespace,
    jobs: list['SceneJob'],
    folder: bool,
    mean: list[float] | None,
    std: list[float] | None,
) -> None:
    """Predict scenes, over several processes if asked; report and index them."""
    from ..inference.scenes import (
        FOOTPRINTS,
        SceneResult,
        format_summary,
        gather_results,
        predict_scenes,
        start_processes,
    )

    rank, world_size, device = 0, 1, args.device
    if _several_processes(args):
        devices = args.devices or 'auto'
        fabric = start_processes(
            accelerator=args.accelerator or 'auto',
            devices=int(devices) if devices.isdigit() else devices,
            num_nodes=args.num_nodes or 1,
        )
        rank, world_size, device = fabric.global_rank, fabric.world_size, fabric.device
    model, metadata = _load(args, mean, std)
    prefix = f'[process {rank}] ' if world_size > 1 else ''

    def report(result: SceneResult) -> None:
        if result.status == 'failed':
            print(f'glcgeo: {prefix}{result.error}', file=sys.stderr, flush=True)
        elif not args.quiet:
            print(
                f'{prefix}{result.job.destination}: {result.status} '
                f'({result.seconds:.1f} s)',
                flush=True,
            )

    results = predict_scenes(
        model,
        metadata,
        jobs,
        rank=rank,
        world_size=world_size,
        skip_complete=folder,
        overwrite=args.overwrite,
        report=report,
        device=device,
        progress=not args.quiet and world_size == 1,
        **_options(args),
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
            print(f'footprints of the maps (one layer): {index}')
    failed = sum(result.status == 'failed' for result in results)
    if failed:
        raise GlcgeoError(f'{failed} of {len(results)} scenes failed (see above)')
