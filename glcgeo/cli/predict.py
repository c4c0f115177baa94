"""``glcgeo predict``: a georeferenced land-cover map of a scene from a checkpoint."""

import argparse
import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from ..errors import GlcgeoError
from ..inference import load_segmentation_checkpoint, predict_raster
from ..outputs import check_destination


def add_parser(subparsers: Any) -> None:
    """Register ``glcgeo predict``.

    Args:
        subparsers: the sub-command group of the ``glcgeo`` parser.
    """
    parser = subparsers.add_parser(
        'predict',
        help='predict a land-cover map of a scene (Cloud Optimized GeoTIFF)',
        description=(
            'Run a segmentation checkpoint (glcgeo fine-tuning or TorchGeo '
            'SemanticSegmentation) over a raster of any size, tile by tile, and '
            "write a Cloud Optimized GeoTIFF of class ids with the input's size, CRS "
            'and transform, a colour map and class names. Bands, normalisation and '
            'class names come from the checkpoint; flags override them.'
        ),
    )
    add = parser.add_argument
    add('--in', dest='source', metavar='PATH', required=True, help='input raster')
    add('--out', metavar='PATH', required=True, help='output class map (GeoTIFF)')
    add('--model', metavar='CKPT', required=True, help='Lightning checkpoint')
    add('--probabilities', metavar='PATH', help='also write per-class percent here')
    add('--overwrite', action='store_true', help='replace existing outputs')
    add(
        '--bands',
        metavar='N',
        type=int,
        nargs='+',
        help="1-based input bands (default: the checkpoint's, or all)",
    )
    add(
        '--mean',
        metavar='VALUE',
        type=float,
        nargs='+',
        help="per-band mean of raw values (default: the checkpoint's)",
    )
    add(
        '--std',
        metavar='VALUE',
        type=float,
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
        type=int,
        default=512,
        help='tile side (default: %(default)s)',
    )
    add(
        '--overlap',
        metavar='PIXELS',
        type=int,
        default=128,
        help='pixels shared by neighbouring tiles (default: %(default)s)',
    )
    add(
        '--batch-size',
        metavar='TILES',
        type=int,
        default=4,
        help='tiles per forward pass (default: %(default)s)',
    )
    add('--device', default='auto', help='auto (CUDA if available), cpu, cuda:1, ...')
    add('--quiet', action='store_true', help='no progress bar nor summary')
    parser.set_defaults(func=run)


def _read_stats(path: str) -> tuple[list[float], list[float]]:
    """Read per-band mean and std from a JSON file with keys ``mean`` and ``std``."""
    try:
        with open(path) as f:
            stats = json.load(f)
        return list(stats['mean']), list(stats['std'])
    except FileNotFoundError:
        raise GlcgeoError('no such statistics file', path) from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise GlcgeoError(f'not band statistics ({error!r})', path) from None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM (e.g. a job scheduler's) like Ctrl-C, so temporaries go too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> None:
    """Predict the map described by the parsed arguments.

    Args:
        args: the parsed ``glcgeo predict`` arguments.

    Raises:
        GlcgeoError: for bad input, before any tile is predicted.
    """
    # Cheap checks first, so a mistake is reported before the model loads.
    inputs = [path for path in (args.source, args.model, args.stats) if path]
    for output in (args.out, args.probabilities):
        if output is not None:
            check_destination(output, args.overwrite, inputs)
    mean, std = args.mean, args.std
    if args.stats is not None:
        if mean is not None or std is not None:
            raise GlcgeoError('give either --stats or --mean/--std, not both')
        mean, std = _read_stats(args.stats)
    model, metadata = load_segmentation_checkpoint(args.model)
    metadata = metadata.replace(
        bands=args.bands, band_mean=mean, band_std=std, class_names=args.class_names
    )
    with _sigterm_interrupts():
        summary = predict_raster(
            model,
            metadata,
            args.source,
            args.out,
            probabilities=args.probabilities,
            tile_size=args.tile_size,
            overlap=args.overlap,
            batch_size=args.batch_size,
            device=args.device,
            nodata=args.nodata,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    if not args.quiet:
        print(
            f'{summary.destination}: {summary.width} x {summary.height} pixels; '
            f'tiles: {summary.tiles}, {summary.skipped_tiles} of them without data; '
            f'{summary.seconds:.1f} s'
        )
