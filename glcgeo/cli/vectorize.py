"""``glcgeo vectorize``: class polygons of a class map, for GIS."""

import argparse
from typing import Any

from .types import positive


def add_polygon_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of the polygons (shared with ``glcgeo predict --polygons``).

    Args:
        parser: the command's parser.
    """
    parser.add_argument(
        '--min-area',
        metavar='PIXELS',
        type=positive(int),
        default=1,
        help='leave out polygons of fewer pixels (default: %(default)s)',
    )


def add_parser(subparsers: Any) -> None:
    """Register ``glcgeo vectorize``.

    Args:
        subparsers: the sub-command group of the ``glcgeo`` parser.
    """
    parser = subparsers.add_parser(
        'vectorize',
        help='write the class polygons of a class map (GeoPackage)',
        description=(
            'Trace the regions of one class of a class map (e.g. from glcgeo '
            'predict) into one GeoPackage layer, "classes", in the map\'s CRS: a '
            'polygon per 4-connected region, with class_id, class_name and area_m2; '
            'nodata is left out. The map is read a band of rows at a time, so '
            'memory does not grow with its size.'
        ),
    )
    add = parser.add_argument
    add('--in', dest='map', metavar='MAP', required=True, help='class map (GeoTIFF)')
    add('--out', metavar='GPKG', required=True, help='GeoPackage to write')
    add_polygon_options(parser)
    add('--overwrite', action='store_true', help='replace --out if it exists')
    add('--quiet', action='store_true', help='no summary')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Write the polygons and say how many.

    Args:
        args: parsed ``map``, ``out``, ``min_area``, ``overwrite`` and ``quiet``.
    """
    from ..inference.polygons import vectorize

    count = vectorize(
        args.map, args.out, min_area=args.min_area, overwrite=args.overwrite
    )
    if not args.quiet:
        print(f'{args.out}: {count} polygons')
