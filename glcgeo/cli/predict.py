"""``glcgeo predict``: georeferenced land-cover maps of scenes from a checkpoint."""

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
from .vectorize import add_polygon_options

if TYPE_CHECKING:
    from torch import nn

    from ..checkpoints import CheckpointMetadata
    from ..inference.scenes import SceneResult


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
    add_scene_options(parser, 'class map')
    add = parser.add_argument
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
        '--class-names',
        metavar='NAME',
        nargs='+',
        help="one name per class (default: the checkpoint's, or class_<i>)",
    )
    parser.set_defaults(func=run)


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
    sources = scene_inputs(args)
    processes = several_processes(args)
    mean, std = band_statistics(args)
    folder = len(sources) > 1 or is_folder(args.out)
    if args.confidence and args.probabilities is None:
        raise GlcgeoError('--confidence is a band of --probabilities: give both')
    if args.polygons is not None and (folder or processes):
        raise GlcgeoError(
            '--polygons takes one scene in one process; run glcgeo vectorize on '
            'each map of several'
        )
    if folder:
        folders = [p for p in (args.out, args.probabilities) if p is not None]
        sources = outside_output_folders(sources, args.source, folders)
    inputs = local_inputs(sources, args.model, args.stats)
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
        with claim([args.out, args.probabilities], folder=False):
            _predict_scene(args, sources[0], mean, std)
        return

    from ..inference.scenes import FOOTPRINTS, predict_scenes, scene_jobs

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
                make_folder(path, flag)
        outputs.append(os.path.join(args.out, FOOTPRINTS))

    def this_process(**process: Any) -> list['SceneResult']:  # its share
        model, metadata = _load(args, mean, std)
        return predict_scenes(model, metadata, jobs, **process, **_options(args))

    with claim([args.out, args.probabilities], folder):
        for output in outputs:
            # Existing maps are skipped or replaced scene by scene, not refused.
            check_destination(output, True, inputs)
        run_over_scenes(args, folder, this_process, 'maps')


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
