"""``glcgeo embed``: per-pixel embeddings of scenes from a pretrained network."""

import argparse
import os
from typing import TYPE_CHECKING, Any

from ..allocator import keep_freed_memory
from ..errors import GlcgeoError
from ..outputs import check_destination
from .scenes import (
    add_scene_options,
    band_statistics,
    claim,
    is_folder,
    local_inputs,
    make_folder,
    outside_output_folders,
    run_over_scenes,
    scene_inputs,
    several_processes,
)
from .types import at_least, positive

if TYPE_CHECKING:
    from ..checkpoints import ModelMetadata
    from ..inference.embed import DecoderFeatures
    from ..inference.scenes import SceneResult


def add_parser(subparsers: Any) -> None:
    """Register ``glcgeo embed``.

    Args:
        subparsers: the sub-command group of the ``glcgeo`` parser.
    """
    parser = subparsers.add_parser(
        'embed',
        help='write per-pixel embeddings of scenes (Cloud Optimized GeoTIFFs)',
        description=(
            'Run a pretrained network (a GLCNet pretraining checkpoint, or its '
            'weights from glcgeo export) over rasters of any size, tile by tile as '
            'glcgeo predict does, and write its DeepLabV3+ decoder features (256 '
            'channels at stride 4, upsampled to pixels) as float16 Cloud Optimized '
            "GeoTIFFs with each input's size, CRS and transform, NaN where the "
            'input has no data, and provenance tags. --dims keeps the first '
            'principal components (the PCA is stored in the tag "pca"). With '
            'several scenes (or --out naming a folder), each is written to '
            'OUT/<input stem>.tif, scenes whose output exists are skipped, and '
            'OUT/footprints.gpkg indexes them.'
        ),
    )
    add_scene_options(parser, 'embeddings')
    add = parser.add_argument
    add(
        '--weights',
        metavar='CKPT',
        required=True,
        help='GLCNet pretraining checkpoint or exported weights',
    )
    add(
        '--dims',
        metavar='N',
        type=positive(int),
        help='write the first N principal components, fitted on a seeded sample '
        "of each scene's pixels (default: all 256 channels)",
    )
    add(
        '--seed',
        metavar='SEED',
        type=at_least(0),
        default=0,
        help='seed of the pixels the PCA is fitted on (default: %(default)s)',
    )
    add(
        '--preview',
        metavar='PNG',
        help='also write a PNG of the first three principal components, as '
        'colour (one scene)',
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Embed the scenes described by the parsed arguments.

    Args:
        args: the parsed ``glcgeo embed`` arguments.

    Raises:
        GlcgeoError: for bad input or outputs that another live run writes,
            before any tile is embedded; at the end, when some scenes failed
            (each reported as it failed).
    """
    # Cheap checks first, so a mistake is reported before the network loads.
    sources = scene_inputs(args)
    processes = several_processes(args)
    mean, std = band_statistics(args)
    folder = len(sources) > 1 or is_folder(args.out)
    if args.preview is not None and (folder or processes):
        raise GlcgeoError('--preview takes one scene in one process', args.preview)
    if args.preview is not None and not args.preview.lower().endswith('.png'):
        raise GlcgeoError('--preview must name a .png file', args.preview)
    if folder:
        sources = outside_output_folders(sources, args.source, [args.out])
    inputs = local_inputs(sources, args.weights, args.stats)
    keep_freed_memory()
    if not folder and not processes:
        if args.preview is not None and os.path.realpath(
            args.preview
        ) == os.path.realpath(args.out):
            raise GlcgeoError('--preview must be another file than --out')
        for output in (args.out, args.preview):
            if output is not None:
                check_destination(output, args.overwrite, inputs)
        with claim([args.out, args.preview], folder=False):
            _embed_scene(args, sources[0], mean, std)
        return

    from ..inference.embed import embed_scenes
    from ..inference.scenes import FOOTPRINTS, scene_jobs

    jobs = scene_jobs(sources, args.out, folder=folder, class_map=False)
    outputs = [output for job in jobs for output in job.outputs]
    if folder:
        make_folder(args.out, '--out')
        outputs.append(os.path.join(args.out, FOOTPRINTS))

    def this_process(**process: Any) -> list['SceneResult']:  # its share
        model, metadata = _load(args, mean, std)
        return embed_scenes(model, metadata, jobs, **process, **_options(args))

    with claim([args.out], folder):
        for output in outputs:
            # Existing outputs are skipped or replaced scene by scene.
            check_destination(output, True, inputs)
        run_over_scenes(args, folder, this_process, 'embeddings')


def _load(
    args: argparse.Namespace, mean: list[float] | None, std: list[float] | None
) -> tuple['DecoderFeatures', 'ModelMetadata']:
    """The network and its metadata, the flags overriding the checkpoint's."""
    from ..inference.embed import load_embedding_network

    model, metadata = load_embedding_network(args.weights)
    try:
        metadata = metadata.replace(bands=args.bands, band_mean=mean, band_std=std)
    except GlcgeoError as error:
        raise GlcgeoError(str(error), args.weights) from None
    if metadata.band_mean is None:
        raise GlcgeoError(
            'the weights carry no band statistics; give the ones they were trained '
            'with: --stats FILE (from glcgeo stats) or --mean and --std',
            args.weights,
        )
    return model, metadata


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of embed_raster given on the command line, and provenance."""
    from ..provenance import Provenance

    return {
        'dims': args.dims,
        'seed': args.seed,
        'tile_size': args.tile_size,
        'overlap': args.overlap,
        'batch_size': args.batch_size,
        'nodata': args.nodata,
        'provenance': Provenance.of_checkpoint(args.weights),
    }


def _embed_scene(
    args: argparse.Namespace,
    source: str,
    mean: list[float] | None,
    std: list[float] | None,
) -> None:
    """Embed one scene in this process (and its preview); say what was written."""
    from ..inference.embed import embed_raster
    from ..inference.pca import write_preview

    model, metadata = _load(args, mean, std)
    summary = embed_raster(
        model,
        metadata,
        source,
        args.out,
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
    if args.preview is not None:
        write_preview(args.out, args.preview, overwrite=args.overwrite)
        if not args.quiet:
            print(f'{args.preview}: preview')
