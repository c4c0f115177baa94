"""Scenes of one file per band, and STAC items: band stacks read as one raster.

A *band-per-file scene* is named by a path pattern in which ``{band}`` stands for
a band's name (``S2/T33UXP_20240601_{band}_10m.tif``); a ``*`` (or ``?``,
``[...]``) elsewhere in it groups files into scenes by what it matches
(``S2/*_{band}.tif``: a folder of such scenes), as TorchGeo's
``RasterDataset.separate_files`` reads one file per band. A *STAC Item* (a JSON
file or URL), or an ItemCollection of items (a saved search), gives one scene per
item; an item's bands are its assets, chosen by name: asset key first, then
band name (``eo:bands`` or STAC 1.1 ``bands``), then common name
(``--bands blue green red nir`` or ``--bands B02 B03 B04 B08``). Relative asset
hrefs are resolved against the item's self link, else against the JSON's own
location, as STAC says.

:func:`stack_sources` makes each such scene a *band stack*: a GDAL VRT, held in
GDAL's memory (``/vsimem/``: nothing is written to disk, nothing is left
behind), that stacks the bands in the order asked for, each described by the
name asked for (so that ``bands=`` names select them), on the grid of the
finest band over the area every band covers. Each band is resampled from its
own file by the read, as the reader asks: on the stack's grid by nearest
neighbour (each coarse pixel repeated, values never mixed, so quality and class
bands stay valid); at another pixel size (``--res``) or in another CRS by the
reader's own resampling, from the band's own pixels. Every reader (mosaics,
statistics, training, prediction) reads a stack as it reads a multi-band
GeoTIFF. :func:`glcgeo.sources.expand` calls it for every ``{band}`` pattern
and STAC file it is given; the stacks live as long as the process (forked
DataLoader workers inherit them).

Example::

    expand(['S2/*_{band}_10m.tif'], bands=['B02', 'B03', 'B04', 'B08'])
    expand(['search.json'], bands=['blue', 'green', 'red', 'nir'])

.. versionadded:: 0.1
"""

import glob
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from .errors import GlcgeoError, given_name, name_as_given
from .gdal_paths import is_url, to_gdal_path

if TYPE_CHECKING:
    from rasterio.io import MemoryFile

    from .rasters import RasterHeader

__all__ = [
    'BAND',
    'BandFile',
    'BandStack',
    'band_files',
    'is_band_pattern',
    'is_stac',
    'stack_of',
    'stack_sources',
]

#: What stands for a band's name in a band-per-file pattern.
BAND = '{band}'

#: File name endings of STAC JSON documents.
STAC_SUFFIXES = ('.json', '.geojson')

#: numpy dtype names -> GDAL data type names.
GDAL_TYPES = {
    'uint8': 'Byte',
    'int8': 'Int8',
    'uint16': 'UInt16',
    'int16': 'Int16',
    'uint32': 'UInt32',
    'int32': 'Int32',
    'uint64': 'UInt64',
    'int64': 'Int64',
    'float32': 'Float32',
    'float64': 'Float64',
}


@dataclass(frozen=True)
class BandFile:
    """One band of a scene, in its file.

    Attributes:
        band: the band's name, as asked for.
        source: the file: a local path or a URL.
        index: the band of the file (1-based).
    """

    band: str
    source: str
    index: int = 1


@dataclass(frozen=True)
class BandStack:
    """A scene of band files, stacked: what a stack's source stands for.

    Attributes:
        name: the scene's name, which prediction names its map after: the
            pattern's file name with its wildcards filled and ``{band}`` left
            out, or the STAC item's id.
        origin: the scene as the user named it: the pattern with its wildcards
            filled, or the STAC file (``FILE#<item id>`` for an item of an
            ItemCollection).
        item: the STAC item's id, if the scene is one.
        files: its bands, in order.
    """

    name: str
    origin: str
    item: str | None
    files: tuple[BandFile, ...]


#: Each stack of this process: its source (a ``/vsimem/`` VRT) -> the stack and
#: the GDAL memory file that holds it (kept open, so that it stays).
_STACKS: dict[str, tuple[BandStack, 'MemoryFile']] = {}
#: A stack's files (local ones with their size and mtime) -> its source.
_MADE: dict[str, str] = {}


def is_band_pattern(path: str) -> bool:
    """Whether a path names a band-per-file scene (it holds ``{band}``)."""
    return BAND in path


def is_stac(path: str) -> bool:
    """Whether a path or URL names a STAC JSON document (``.json``, ``.geojson``)."""
    name = urlsplit(path).path if is_url(path) else path
    return name.lower().endswith(STAC_SUFFIXES)


def stack_of(source: str) -> BandStack | None:
    """The band stack a source stands for, or None for any other source."""
    made = _STACKS.get(source)
    return None if made is None else made[0]


def band_files(sources: Sequence[str]) -> list[str]:
    """The files sources read: each stack's band files, other sources as they are.

    Args:
        sources: sources as :func:`glcgeo.sources.expand` gives them.

    Returns:
        the files, in order.
    """
    files: list[str] = []
    for source in sources:
        stack = stack_of(source)
        files.extend([source] if stack is None else [f.source for f in stack.files])
    return files


def stack_sources(path: str, bands: Sequence[int | str] | None) -> list[str]:
    """The band stacks of a ``{band}`` pattern or a STAC file, as sources.

    Args:
        path: a band-per-file pattern (:func:`is_band_pattern`) or a STAC Item or
            ItemCollection (:func:`is_stac`), a local path or a URL.
        bands: the bands' names, in the order the stacks hold them.

    Returns:
        one source per scene (a GDAL VRT in memory), named ``<scene name>.vrt``.

    Raises:
        GlcgeoError: naming the pattern, item or file: without *bands*, for a
            band name that is a number, a band missing from a scene (no file,
            no asset), a file GDAL cannot read, or files of one scene that
            cannot be stacked on one grid (another CRS, no common area, a
            rotated grid).
    """
    what = 'a {band} pattern' if is_band_pattern(path) else 'a STAC item'
    if not bands:
        choose = (
            'the band names that {band} stands for'
            if is_band_pattern(path)
            else 'the assets to read (asset keys, band names or common names)'
        )
        raise GlcgeoError(f'{what} needs --bands: {choose}', path)
    names = [str(band) for band in bands]
    for name in names:
        if name.isdigit():
            raise GlcgeoError(
                f'{what} takes band names, not numbers (got {name}: numbers are '
                "band indexes of a file's bands)",
                path,
            )
    stacks = _pattern_stacks(path, names) if is_band_pattern(path) else None
    if stacks is None:
        stacks = _stac_stacks(path, names)
    return [_make(stack) for stack in stacks]


def _scene_name(filled: str) -> str:
    """A scene's name: its filled pattern's file name without ``{band}``.

    ``T33UXP_20240601_{band}_10m.tif`` gives ``T33UXP_20240601_10m``; a file
    name that is the band alone (``SCENE/{band}.tif``) gives its folder's name.
    """
    head, tail = os.path.split(urlsplit(filled).path if is_url(filled) else filled)
    tail = re.sub(r'[_\-]?\{band\}|\{band\}[_\-]?', '', tail, count=1)
    name = os.path.splitext(tail)[0].strip('_-. ')
    return name or os.path.basename(head) or 'scene'


def _wildcard_regex(pattern: str) -> str:
    """A regular expression of a glob pattern, one group per wildcard.

    ``*`` matches within a path component, as :func:`glob.glob` does.
    """
    parts = []
    position = 0
    for match in re.finditer(r'\*+|\?|\[!?\]?[^\]]*\]', pattern):
        parts.append(re.escape(pattern[position : match.start()]))
        token = match.group()
        if token.startswith('*'):
            parts.append('([^/]*)')
        elif token == '?':
            parts.append('([^/])')
        else:
            parts.append('([' + token[1:-1].replace('!', '^', 1) + '])')
        position = match.end()
    parts.append(re.escape(pattern[position:]))
    return ''.join(parts)


def _fill(pattern: str, parts: tuple[str, ...]) -> str:
    """A pattern with its wildcards replaced by what they matched."""
    found = iter(parts)
    return re.sub(r'\*+|\?|\[!?\]?[^\]]*\]', lambda _: next(found), pattern)


def _pattern_stacks(pattern: str, names: list[str]) -> list[BandStack]:
    """The scenes of a band-per-file pattern, each with a file per band.

    Raises:
        GlcgeoError: if the pattern matches no file, or a scene lacks a band's
            file (naming the file expected).
    """
    if is_url(pattern):
        if glob.has_magic(pattern):
            raise GlcgeoError(
                'a {band} pattern of URLs cannot hold wildcards (*, ?, [...]): '
                'give each scene',
                pattern,
            )
        files = tuple(BandFile(n, pattern.replace(BAND, n)) for n in names)
        return [BandStack(_scene_name(pattern), pattern, None, files)]
    pattern = os.path.abspath(pattern)
    if not glob.has_magic(pattern):
        scenes: dict[tuple[str, ...], dict[str, str]] = {(): {}}
        for name in names:
            scenes[()][name] = pattern.replace(BAND, name)
    else:
        scenes = {}
        for name in names:
            concrete = pattern.replace(BAND, glob.escape(name))
            regex = re.compile(_wildcard_regex(pattern.replace(BAND, name)))
            for found in sorted(glob.glob(concrete)):
                match = regex.fullmatch(found)
                if match is not None and os.path.isfile(found):
                    scenes.setdefault(match.groups(), {})[name] = found
        if not scenes:
            raise GlcgeoError(
                f'pattern matches no file of any band ({", ".join(names)})', pattern
            )
    stacks = []
    for parts, by_band in sorted(scenes.items()):
        filled = _fill(pattern, parts)
        for name in names:
            expected = by_band.get(name, filled.replace(BAND, name))
            if not os.path.isfile(expected):
                raise GlcgeoError(
                    f'no such file: band {name} of the scene {filled} is missing',
                    expected,
                )
        files = tuple(
            BandFile(n, by_band.get(n, filled.replace(BAND, n))) for n in names
        )
        stacks.append(BandStack(_scene_name(filled), filled, None, files))
    return stacks


def _read_json(href: str) -> dict[str, Any]:
    """A JSON document, local or by URL (as pystac reads one).

    Raises:
        GlcgeoError: naming *href*, if it cannot be read or is no JSON object.
    """
    import pystac

    if not is_url(href) and not os.path.isfile(href):
        raise GlcgeoError('no such file', href)
    try:
        document = pystac.StacIO.default().read_json(href)
    except json.JSONDecodeError as error:
        raise GlcgeoError(f'not a STAC JSON document ({error.msg})', href) from None
    except Exception as error:  # urllib's, pystac's: one line whatever they are
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GlcgeoError(f'cannot read the STAC file ({reason})', href) from None
    if not isinstance(document, dict):
        raise GlcgeoError('not a STAC Item or ItemCollection', href)
    return document


def _asset_bands(asset: Any) -> list[dict[str, Any]]:
    """An asset's bands as dictionaries (``eo:bands``, or STAC 1.1 ``bands``)."""
    listed = asset.extra_fields.get('eo:bands') or asset.extra_fields.get('bands')
    if not isinstance(listed, list):
        return []
    return [band for band in listed if isinstance(band, dict)]


def _choose_asset(item: Any, name: str, href: str) -> tuple[str, Any, int]:
    """The asset of an item holding a band, and the band's index in its file.

    Asset keys first, then band names, then common names; among several assets
    at one level (a COG and a JPEG 2000 copy), a GeoTIFF first, then the first.

    Returns:
        (asset key, asset, 1-based band of its file).

    Raises:
        GlcgeoError: naming the STAC file and the item, if no asset holds it.
    """
    assets = item.assets
    if name in assets:
        listed = _asset_bands(assets[name])
        if len(listed) > 1:
            named = ', '.join(str(b.get('name')) for b in listed)
            raise GlcgeoError(
                f'item {item.id}: asset {name!r} holds {len(listed)} bands: ask for '
                f'one of them by name ({named})',
                href,
            )
        return name, assets[name], 1
    for fields in (('name',), ('common_name', 'eo:common_name')):
        found = [
            (key, asset, position + 1)
            for key, asset in assets.items()
            for position, band in enumerate(_asset_bands(asset))
            if any(band.get(field) == name for field in fields)
        ]
        if found:
            tiff = [f for f in found if 'tiff' in (f[1].media_type or '').lower()]
            return (tiff or found)[0]
    raise GlcgeoError(
        f'item {item.id} has no asset or band named {name!r} (assets: '
        f'{", ".join(assets) or "none"})',
        href,
    )


def _stac_stacks(href: str, names: list[str]) -> list[BandStack]:
    """The scenes of a STAC Item or ItemCollection: one per item.

    Raises:
        GlcgeoError: naming the STAC file, if it is no Item or ItemCollection,
            or an item lacks a band.
    """
    import pystac
    from pystac.utils import make_absolute_href

    if not is_url(href):
        href = os.path.abspath(href)
    document = _read_json(href)
    kind = document.get('type')
    try:
        if kind == 'Feature':
            items = [pystac.Item.from_dict(document, preserve_dict=False)]
        elif kind == 'FeatureCollection':
            items = list(pystac.ItemCollection.from_dict(document).items)
        else:
            raise GlcgeoError(f'not a STAC Item or ItemCollection (type: {kind})', href)
    except (pystac.STACError, KeyError, TypeError, ValueError) as error:
        if isinstance(error, GlcgeoError):
            raise
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GlcgeoError(f'not a valid STAC item ({reason})', href) from None
    if not items:
        raise GlcgeoError('the ItemCollection holds no item', href)
    stacks = []
    for item in items:
        self_href = item.get_self_href()
        base = self_href if self_href and _is_absolute(self_href) else href
        files = []
        for name in names:
            _, asset, index = _choose_asset(item, name, href)
            source = make_absolute_href(asset.href, base)
            if not is_url(source) and urlsplit(source).scheme == 'file':
                source = urlsplit(source).path
            files.append(BandFile(name, source, index))
        scene = item.id.replace('/', '_') or 'item'
        origin = href if kind == 'Feature' else f'{href}#{item.id}'
        stacks.append(BandStack(scene, origin, item.id, tuple(files)))
    return stacks


def _is_absolute(href: str) -> bool:
    """Whether an href is a URL or an absolute local path."""
    return is_url(href) or bool(urlsplit(href).scheme) or os.path.isabs(href)


def _stamps(stack: BandStack) -> str:
    """A stack's files, bands and names, local files with their size and mtime.

    Raises:
        GlcgeoError: naming a local band file that does not exist.
    """
    stamps: list[Any] = [stack.name, stack.origin, stack.item]
    for file in stack.files:
        stamp: list[Any] = [file.band, file.source, file.index]
        if not is_url(file.source):
            try:
                stat = os.stat(file.source)
            except OSError as error:
                scene = stack.origin if stack.item is None else f'item {stack.item}'
                raise GlcgeoError(
                    f'{(error.strerror or "cannot read it").lower()} '
                    f'(band {file.band} of {scene})',
                    file.source,
                ) from None
            stamp += [stat.st_size, stat.st_mtime_ns]
        stamps.append(stamp)
    return json.dumps(stamps)


def _make(stack: BandStack) -> str:
    """The source of a stack: its VRT, made in GDAL's memory once per process."""
    stamps = _stamps(stack)
    made = _MADE.get(stamps)
    if made is not None:
        return made
    from rasterio.io import MemoryFile

    xml = _vrt(stack)
    key = hashlib.sha256((stamps + xml).encode()).hexdigest()[:16]
    memory = MemoryFile(
        xml.encode(), dirname=f'glcgeo/{stack.name}.{key}', filename=f'{stack.name}.vrt'
    )
    source = memory.name
    _STACKS[source] = (stack, memory)
    _MADE[stamps] = source
    name_as_given(source, stack.origin)
    return source


def _headers(stack: BandStack) -> list['RasterHeader']:
    """Each band file's header (one open each), checked for a band of the file."""
    from .rasters import read_headers

    headers = read_headers([f.source for f in stack.files], crs_given=False)
    for file, header in zip(stack.files, headers, strict=True):
        if not 1 <= file.index <= header.count:
            raise GlcgeoError(
                f'band {file.band} is band {file.index} of the file, which has '
                f'{header.count}',
                file.source,
            )
        affine = header.transform
        if not (affine.b == affine.d == 0 and affine.a > 0 and affine.e < 0):
            raise GlcgeoError(
                'a band file on a rotated grid cannot be stacked: warp it north '
                'up first (gdalwarp IN.tif OUT.tif)',
                file.source,
            )
    return headers


def _vrt(stack: BandStack) -> str:
    """The VRT stacking a scene's band files on the finest band's grid.

    The grid: the finest band's pixels (the smallest pixel area; the first of
    equals), over the area every band file covers.

    Raises:
        GlcgeoError: naming a band file, if it is in another CRS than the
            first, covers no area in common with the others, or is unreadable.
    """
    import numpy as np

    from .crs import crs_name

    headers = _headers(stack)
    first, first_header = stack.files[0], headers[0]
    left, bottom, right, top = -math.inf, -math.inf, math.inf, math.inf
    for file, header in zip(stack.files, headers, strict=True):
        if header.crs != first_header.crs:
            raise GlcgeoError(
                f'band {file.band} is in {crs_name(header.crs)}, band {first.band} '
                f'({given_name(first.source)}) in {crs_name(first_header.crs)}: the '
                'files of a scene must share one CRS',
                file.source,
            )
        a, e, c, f = (
            header.transform.a,
            header.transform.e,
            header.transform.c,
            (header.transform.f),
        )
        box = (c, f + e * header.height, c + a * header.width, f)
        left, bottom = max(left, box[0]), max(bottom, box[1])
        right, top = min(right, box[2]), min(top, box[3])
        if not (left < right and bottom < top):
            raise GlcgeoError(
                f'band {file.band} does not overlap the bands before it: the files '
                'of a scene must cover a common area',
                file.source,
            )
    finest = min(headers, key=lambda h: abs(h.transform.a * h.transform.e))
    xres, yres = finest.transform.a, -finest.transform.e
    x0, y0 = finest.transform.c, finest.transform.f
    # The finest grid's pixels inside the common area (a pixel cut by its edge
    # by less than a millionth is whole).
    col0 = math.ceil((left - x0) / xres - 1e-6)
    col1 = math.floor((right - x0) / xres + 1e-6)
    row0 = math.ceil((y0 - top) / yres - 1e-6)
    row1 = math.floor((y0 - bottom) / yres + 1e-6)
    width, height = col1 - col0, row1 - row0
    if width < 1 or height < 1:
        raise GlcgeoError(
            'the band files share less than a pixel of ground', stack.files[-1].source
        )
    gx, gy = x0 + col0 * xres, y0 - row0 * yres
    dtype = str(np.result_type(*[h.dtype for h in headers]))
    nodata = next((h.nodata for h in headers if h.nodata is not None), None)
    bands = []
    for position, (file, header) in enumerate(
        zip(stack.files, headers, strict=True), start=1
    ):
        affine = header.transform
        # The stack's area in the file's pixels (fractions where grids differ).
        src = (
            (gx - affine.c) / affine.a,
            (affine.f - gy) / -affine.e,
            width * xres / affine.a,
            height * yres / -affine.e,
        )
        kind = 'SimpleSource'
        extra = ''
        if header.nodata is not None and not _same(header.nodata, nodata):
            # Another nodata value than the stack's: its pixels become the stack's.
            kind, extra = 'ComplexSource', f'<NODATA>{header.nodata!r}</NODATA>'
        band_nodata = '' if nodata is None else f'<NoDataValue>{nodata!r}</NoDataValue>'
        bands.append(
            f'<VRTRasterBand dataType="{GDAL_TYPES[dtype]}" band="{position}">'
            f'<Description>{escape(file.band)}</Description>{band_nodata}'
            f'<{kind}>'
            f'<SourceFilename relativeToVRT="0">'
            f'{escape(to_gdal_path(file.source))}</SourceFilename>'
            f'<SourceBand>{file.index}</SourceBand>'
            f'<SrcRect xOff="{src[0]!r}" yOff="{src[1]!r}" xSize="{src[2]!r}" '
            f'ySize="{src[3]!r}"/>'
            f'<DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
            f'{extra}</{kind}></VRTRasterBand>'
        )
    assert first_header.crs is not None  # read_headers refuses files without
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f'<SRS>{escape(first_header.crs.to_wkt())}</SRS>'
        f'<GeoTransform>{gx!r}, {xres!r}, 0.0, {gy!r}, 0.0, {-yres!r}</GeoTransform>'
        + ''.join(bands)
        + '</VRTDataset>'
    )


def _same(a: float, b: float | None) -> bool:
    """Whether two nodata values are the same (NaN is NaN)."""
    return b is not None and (a == b or (math.isnan(a) and math.isnan(b)))
