"""``glcgeo stats``: per-band normalisation statistics of a mosaic."""

import argparse
import os
from typing import TYPE_CHECKING, Any

from ..bands import band_files
from ..outputs import OutputLock, check_destination
from ..sources import expand
from .types import SOURCES, HelpFormatter, at_least, band, crs, positive

if TYPE_CHECKING:
    from ..stats import BandStats


def add_parser(subparsers: Any) -> None:
    """Register ``glcgeo stats``.

    Args:
        subparsers: the sub-command group of the ``glcgeo`` parser.
    """
    parser = subparsers.add_parser(
        'stats',
        help='per-band mean and standard deviation of a mosaic, as JSON',
        description=(
            'Estimate per-band mean and standard deviation of raw pixel values from '
            'random windows of the valid area of GeoTIFF mosaics (nodata excluded), '
            'print them and write them as JSON for glcgeo pretrain/finetune --stats.'
        ),
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add('--data', nargs='+', required=True, metavar='SOURCE', help=SOURCES)
    add('--out', required=True, help='statistics JSON to write')
    add(
        '--bands',
        metavar='BAND',
        type=band,
        nargs='+',
        help='1-based band indexes or names (default: all): of {band} patterns and '
        "STAC items (B04, red), or else the files' band descriptions",
    )
    add(
        '--crs',
        type=crs,
        help='CRS to reproject every file to (default: each file read in its own)',
    )
    add(
        '--res',
        type=positive(),
        help="pixel size in CRS units, on one grid (default: each file's own)",
    )
    add('--nodata', type=float, help="nodata value overriding the files' own")
    add('--windows', type=positive(int), default=64, help='random windows to read')
    add('--window-size', type=positive(int), default=128, help='window side, pixels')
    add('--seed', type=at_least(0), default=0, help='seed of the window draw')
    add('--overwrite', action='store_true', help='replace --out if it exists')
    add('--quiet', action='store_true', help='no table nor summary')
    parser.set_defaults(func=run)


def format_table(stats: 'BandStats', names: list[str]) -> str:
    """Format statistics as a plain-text table, one band per row.

    Args:
        stats: the statistics.
        names: a name per band, in the order of *stats*.

    Returns:
        the table, without a trailing newline.
    """
    rows = [f'{"band":>6} {"name":<12} {"mean":>14} {"std":>14}']
    for index, name, mean, std in zip(
        stats.bands, names, stats.mean, stats.std, strict=True
    ):
        rows.append(f'{index:>6} {name:<12} {mean:>14.4f} {std:>14.4f}')
    return '\n'.join(rows)


def run(args: argparse.Namespace) -> None:
    """Compute, print and write the statistics.

    Args:
        args: the parsed command line.

    Raises:
        GlcgeoError: when --out cannot be written (it exists without --overwrite,
            its folder does not, it is one of the inputs, or another live run
            writes it), or for bad input data.
    """
    import torch

    from ..collection import open_mosaic
    from ..datasets import GeoTiffMosaic
    from ..stats import compute_band_stats

    inputs = band_files(expand(args.data, args.bands))
    check_destination(args.out, args.overwrite, inputs=inputs)
    out = os.path.abspath(args.out)
    with OutputLock(out):
        dataset = open_mosaic(
            GeoTiffMosaic,
            args.data,
            bands=args.bands,
            crs=args.crs,
            res=args.res,
            nodata=args.nodata,
        )
        stats = compute_band_stats(
            dataset,
            windows=args.windows,
            window_size=args.window_size,
            generator=torch.Generator().manual_seed(args.seed),
        )
        if not args.quiet:
            names = [dataset.all_bands[i - 1] for i in stats.bands]
            print(format_table(stats, names))
        stats.save(out)
    if not args.quiet:
        print(
            f'glcgeo: statistics of {len(stats.files)} file(s) from {stats.pixels} '
            f'valid pixels written to {out}'
        )
