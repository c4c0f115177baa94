"""Class polygons of a class map, in one GeoPackage layer, streamed by row bands.

:func:`vectorize` reads a class map a band of rows at a time and traces each
band's 4-connected regions of one class (:func:`rasterio.features.shapes`), in
pixel coordinates of the map, where the band edges are exact integers. A region
cut by a band edge comes out as pieces touching it: those pieces are merged, per
class, with the pieces of the next band touching the same edge (a union, then
split into separate polygons), and a polygon is written once no later band can
touch it. Memory is bounded by the band and the polygons crossing one band edge,
not by the map.

Example::

    vectorize('landcover.tif', 'landcover.gpkg', min_area=4)
"""

import itertools
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.windows import Window

from ..errors import GlcgeoError
from ..outputs import atomic_write, check_destination
from ..rasters import open_raster

__all__ = ['POLYGON_LAYER', 'check_geopackage_name', 'vectorize']

#: The layer of class polygons in the GeoPackage.
POLYGON_LAYER = 'classes'

#: Pixels per band of rows read at a time, unless told (16 MB of uint8 ids).
BAND_PIXELS = 1 << 24

#: Polygons written to the GeoPackage at a time.
_WRITE_BATCH = 10_000

#: The dtypes :func:`rasterio.features.shapes` traces.
_TRACED_DTYPES = ('uint8', 'uint16', 'int16', 'int32')


def _band_polygons(
    classes: np.ndarray, valid: np.ndarray, top: int
) -> Iterator[tuple[int, Any]]:
    """The 4-connected regions of one class in a band, in map pixel coordinates."""
    if classes.dtype.name not in _TRACED_DTYPES:
        classes = classes.astype('int32')
    for geometry, value in rasterio.features.shapes(
        classes, mask=valid, connectivity=4, transform=Affine.translation(0, top)
    ):
        yield int(value), shapely.geometry.shape(geometry)


def class_polygons(
    src: rasterio.io.DatasetReader, band_rows: int
) -> Iterator[tuple[int, Any]]:
    """Each region of one class in a class map, whole, once.

    Args:
        src: the class map (band 1: class ids; nodata is left out).
        band_rows: rows read and traced at a time.

    Yields:
        (class id, polygon in the map's pixel coordinates: column, row).
    """
    height, width = src.height, src.width
    # Pieces touching the bottom edge of the band just traced, by class.
    cut: dict[int, list[Any]] = {}
    for top in range(0, height, band_rows):
        bottom = min(top + band_rows, height)
        classes = src.read(1, window=Window(0, top, width, bottom - top))
        valid = np.ones(classes.shape, bool)
        if src.nodata is not None:
            valid = classes != src.nodata
        # The pieces left above this band's top edge join the ones below it.
        joining, cut = cut, {}
        for value, polygon in _band_polygons(classes, valid, top):
            _, row_min, _, row_max = polygon.bounds
            if top > 0 and row_min == top:
                joining.setdefault(value, []).append(polygon)
            elif bottom < height and row_max == bottom:
                cut.setdefault(value, []).append(polygon)
            else:
                yield value, polygon
        for value, pieces in joining.items():
            for part in shapely.get_parts(shapely.union_all(pieces)):
                if bottom < height and part.bounds[3] == bottom:
                    cut.setdefault(value, []).append(part)
                else:
                    yield value, part


def _class_names(src: rasterio.io.DatasetReader) -> list[str]:
    """The class names glcgeo writes in band 1's ``class_names`` tag, if any."""
    try:
        names = json.loads(src.tags(1).get('class_names', '[]'))
    except json.JSONDecodeError:
        return []
    return [str(name) for name in names] if isinstance(names, list) else []


def _area_m2(crs: Any, transform: Affine) -> Callable[[np.ndarray, np.ndarray], Any]:
    """How to measure polygons in square metres, from their pixels and geometry.

    Returns:
        a function of (pixel counts, polygons in map coordinates) giving areas:
        pixels times the pixel's area for a projected CRS (in its unit, squared,
        converted), geodesic on the CRS's ellipsoid for degrees, pixels times
        the pixel's area in squared CRS units without CRS.
    """
    from pyproj import CRS

    pixel = abs(transform.determinant)
    projection = None if crs is None else CRS.from_user_input(crs.to_wkt())
    if projection is not None and projection.is_geographic:
        geod = projection.get_geod()
        assert geod is not None  # a geographic CRS has an ellipsoid

        def geodesic(pixels: np.ndarray, polygons: np.ndarray) -> Any:
            return np.array([abs(geod.geometry_area_perimeter(p)[0]) for p in polygons])

        return geodesic
    if projection is not None:
        pixel *= projection.axis_info[0].unit_conversion_factor ** 2
    return lambda pixels, polygons: pixels * pixel


def _frame(
    polygons: Sequence[tuple[int, Any]],
    names: Sequence[str],
    transform: Affine,
    crs: Any,
    area_m2: Callable[[np.ndarray, np.ndarray], Any],
) -> Any:
    """A GeoDataFrame of (class id, polygon in pixel coordinates), placed on the map."""
    import geopandas as gpd

    t = transform
    ids = np.array([value for value, _ in polygons], dtype=np.int64)
    shapes = np.array([polygon for _, polygon in polygons], dtype=object)
    # Pixel (column, row) -> map coordinates.
    placed = shapely.transform(
        shapes, lambda xy: xy @ np.array([[t.a, t.d], [t.b, t.e]]) + (t.c, t.f)
    )
    return gpd.GeoDataFrame(
        {
            'class_id': ids,
            'class_name': [names[i] if 0 <= i < len(names) else None for i in ids],
            'area_m2': area_m2(shapely.area(shapes), placed),
        },
        geometry=gpd.GeoSeries(placed, crs=crs),
    )


def check_geopackage_name(destination: str | os.PathLike[str]) -> None:
    """Check that polygons go to a file named as a GeoPackage (``.gpkg``).

    Raises:
        GlcgeoError: naming *destination*, if it is named otherwise.
    """
    if not os.fspath(destination).lower().endswith('.gpkg'):
        raise GlcgeoError(
            'polygons are written as a GeoPackage: name the file .gpkg', destination
        )


def _write(frame: Any, path: str, metadata: dict[str, str] | None) -> None:
    """Add polygons to the layer; the first call (with *metadata*) creates it."""
    import pyogrio

    with warnings.catch_warnings():
        # The temporary name lacks the .gpkg extension.
        warnings.filterwarnings('ignore', message='.*extension')
        # A map without CRS has polygons without one (see vectorize).
        warnings.filterwarnings('ignore', message="'crs' was not provided")
        pyogrio.write_dataframe(
            frame,
            path,
            layer=POLYGON_LAYER,
            driver='GPKG',
            geometry_type='Polygon',
            append=metadata is None,
            layer_metadata=metadata,
        )


def vectorize(
    path: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    min_area: int = 1,
    band_rows: int | None = None,
    overwrite: bool = False,
) -> int:
    """Write the class polygons of a class map to a GeoPackage, one layer.

    One polygon per 4-connected region of one class, holes included; nodata is
    left out. Layer :data:`POLYGON_LAYER`, in the map's CRS, with fields
    ``class_id``, ``class_name`` (from the map's ``class_names`` tag, as
    ``glcgeo predict`` writes it; empty otherwise) and ``area_m2`` (planar area
    in the map's projection, geodesic for a map in degrees; in squared CRS units
    for a map without CRS). The layer's metadata are the map's tags (its
    provenance), ``map`` and ``min_area``. The file is written under a temporary
    name and renamed when complete.

    Args:
        path: the class map (band 1 holds class ids).
        destination: the ``.gpkg`` file.
        min_area: polygons of fewer pixels are left out (their area is then a
            hole in the layer).
        band_rows: rows read at a time; None for as many as make
            :data:`BAND_PIXELS`. The polygons do not depend on it.
        overwrite: whether an existing *destination* may be replaced.

    Returns:
        the number of polygons written.

    Raises:
        GlcgeoError: if the map cannot be read or is not one band of integers,
            *min_area* or *band_rows* is not positive, or *destination* is not
            named ``.gpkg`` or may not be written (see
            :func:`~glcgeo.outputs.check_destination`).
    """
    check_geopackage_name(destination)
    if min_area < 1:
        raise GlcgeoError(f'the minimum area must be at least 1 pixel, got {min_area}')
    if band_rows is not None and band_rows < 1:
        raise GlcgeoError(f'band rows must be positive, got {band_rows}')
    check_destination(destination, overwrite, inputs=[path])
    with open_raster(path, kind='class map') as src:
        if src.count != 1 or not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
            raise GlcgeoError(
                f'not a class map: {src.count} {src.dtypes[0]} bands, one band of '
                'integer class ids expected',
                path,
            )
        names = _class_names(src)
        rows = band_rows or max(1, BAND_PIXELS // src.width)
        area_m2 = _area_m2(src.crs, src.transform)
        metadata = {
            **src.tags(),
            'map': os.path.abspath(path),
            'min_area': str(min_area),
        }
        written = 0
        with atomic_write(destination) as temporary:
            kept = (
                (value, polygon)
                for value, polygon in class_polygons(src, rows)
                if polygon.area >= min_area
            )
            for batch in itertools.batched(kept, _WRITE_BATCH):
                frame = _frame(batch, names, src.transform, src.crs, area_m2)
                _write(frame, temporary, metadata if not written else None)
                written += len(batch)
            if not written:
                _write(
                    _frame((), names, src.transform, src.crs, area_m2),
                    temporary,
                    metadata,
                )
    return written
