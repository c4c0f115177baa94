"""CRSs as users name them, and the error for one PROJ cannot transform.

A local (engineering) CRS, such as a site grid or FLAIR-2's masks beside their
EPSG:2154 images, has no coordinate operation to any other CRS: PROJ refuses,
and rasterio raises :class:`~rasterio.errors.CRSError` deep inside a warp.
:func:`untransformable_error` turns that into one line naming the file.
"""

from collections.abc import Sequence

from pyproj import CRS as PROJ_CRS
from pyproj import Transformer
from pyproj.exceptions import ProjError
from rasterio.crs import CRS

from .errors import GlcgeoError
from .rasters import read_header

__all__ = ['crs_name', 'transformable', 'untransformable_error']


def crs_name(crs: CRS | None) -> str:
    """A CRS in a few words: its EPSG code, else its kind and name.

    Args:
        crs: the CRS, or None for a file that has none.

    Returns:
        ``'EPSG:32618'``, ``'a local CRS "site grid"'``, ``'the CRS "name"'``
        or ``'no CRS'``.
    """
    if crs is None:
        return 'no CRS'
    epsg = crs.to_epsg()
    if epsg is not None:
        return f'EPSG:{epsg}'
    proj = PROJ_CRS.from_user_input(crs.to_wkt())
    kind = 'a local CRS' if proj.is_engineering else 'the CRS'
    return f'{kind} "{proj.name}"'


def transformable(source: CRS, target: CRS) -> bool:
    """Whether PROJ knows how to transform coordinates of *source* to *target*."""
    if source == target:
        return True
    try:
        Transformer.from_crs(source.to_wkt(), target.to_wkt())
    except ProjError:
        return False  # a local (engineering) CRS, for one
    return True


def untransformable_error(
    files: Sequence[str], target: CRS, advice: str = ''
) -> GlcgeoError:
    """The error naming the first file whose CRS cannot be transformed to *target*.

    Args:
        files: the files read into *target*.
        target: the CRS they were to be read in.
        advice: what to do about it, appended to the message (``': leave out
            --crs'``).

    Returns:
        the error, to raise.
    """
    for path in files:
        crs = read_header(path, crs_given=True).crs
        if crs is not None and not transformable(crs, target):
            return GlcgeoError(
                f'its CRS, {crs_name(crs)}, cannot be transformed to '
                f'{crs_name(target)}{advice}',
                path,
            )
    return GlcgeoError(f'cannot transform the files to {crs_name(target)}', files[0])
