"""How GDAL names and opens a source: URLs, their GDAL paths and settings.

A *source* names a raster: a local file, or a URL that GDAL reads by byte ranges
(``http(s)://``, ``s3://``, ``gs://``, or a GDAL virtual file system path such as
``/vsicurl/...``, ``/vsis3/...`` or ``/vsizip/...``). :func:`to_gdal_path` is the
path GDAL opens, :func:`gdal_options` the GDAL settings to open it with,
:func:`gdal_reason` GDAL's reason for a failure in words, :func:`exists` and
:func:`stem` what can be told of a source without opening it. The lowest
layer of glcgeo's raster access: it imports nothing of glcgeo, and nothing heavy.

Example::

    stem('https://host/a/scene.tif?sig=x')  # 'scene'
    to_gdal_path('s3://bucket/scene.tif')  # '/vsis3/bucket/scene.tif'
"""

import os
from urllib.parse import urlsplit

__all__ = [
    'RASTER_SUFFIXES',
    'URL_PREFIXES',
    'exists',
    'gdal_options',
    'gdal_reason',
    'is_url',
    'stem',
    'to_gdal_path',
]

#: File name endings collected from folders (local or remote) by :func:`expand`.
RASTER_SUFFIXES = ('.tif', '.tiff', '.TIF', '.TIFF', '.vrt', '.jp2')

#: URL schemes -> the GDAL virtual file system that reads them (as rasterio maps
#: them); ``http(s)`` URLs are kept whole behind ``/vsicurl/``.
URL_PREFIXES = {
    'http': '/vsicurl/http://',
    'https': '/vsicurl/https://',
    's3': '/vsis3/',
    'gs': '/vsigs/',
}

#: GDAL settings for remote rasters (Cloud Optimized GeoTIFFs): no listing of the
#: remote folder at each open (one request instead of many, side-car files are
#: not looked for), and neighbouring byte ranges fetched in one request.
GDAL_URL_OPTIONS = {
    'GDAL_DISABLE_READDIR_ON_OPEN': 'EMPTY_DIR',
    'GDAL_HTTP_MERGE_CONSECUTIVE_RANGES': 'YES',
}

#: GDAL's network limits for remote rasters, each overridden by the environment
#: variable of its name: a connection is given up after 10 s, a request (a byte
#: range, a header) after 60 s, and a failed request is tried 3 more times, 1 s
#: apart at first (GDAL doubles the delay each time), so a server that accepts
#: and never answers fails the read in minutes, not never.
GDAL_HTTP_LIMITS = {
    'GDAL_HTTP_CONNECTTIMEOUT': '10',
    'GDAL_HTTP_TIMEOUT': '60',
    'GDAL_HTTP_MAX_RETRY': '3',
    'GDAL_HTTP_RETRY_DELAY': '1',
}

#: GDAL settings for local rasters: GDAL lists a file's folder at each open to
#: find side-car files (.ovr, .aux.xml, .msk); in a folder of N files that is N
#: names per open. Looking them up by name instead keeps each open's cost flat.
GDAL_LOCAL_OPTIONS = {'GDAL_DISABLE_READDIR_ON_OPEN': 'TRUE'}


def is_url(source: str | os.PathLike[str]) -> bool:
    """Whether a source is read through GDAL's network or virtual file systems.

    Args:
        source: a local path or a URL.

    Returns:
        True for ``http(s)://``, ``s3://`` and ``gs://`` URLs and ``/vsi...``
        paths.
    """
    text = os.fspath(source)
    return text.startswith('/vsi') or urlsplit(text).scheme in URL_PREFIXES


def to_gdal_path(source: str | os.PathLike[str]) -> str:
    """The GDAL virtual file system path of a source.

    Args:
        source: a local path or a URL.

    Returns:
        ``s3://b/k`` -> ``/vsis3/b/k``, ``gs://b/k`` -> ``/vsigs/b/k``,
        ``https://h/k`` -> ``/vsicurl/https://h/k``; local and ``/vsi...`` paths
        unchanged.
    """
    text = os.fspath(source)
    scheme = urlsplit(text).scheme
    if text.startswith('/vsi') or scheme not in URL_PREFIXES:
        return text
    return URL_PREFIXES[scheme] + text.removeprefix(f'{scheme}://')


def gdal_options(source: str) -> dict[str, str]:
    """GDAL configuration options to open a source with.

    Args:
        source: a local path or a URL.

    Returns:
        for a URL, :data:`GDAL_URL_OPTIONS` and those of :data:`GDAL_HTTP_LIMITS`
        not set in the environment (GDAL reads the environment's itself); else
        :data:`GDAL_LOCAL_OPTIONS`.
    """
    if not is_url(source):
        return GDAL_LOCAL_OPTIONS
    limits = {k: v for k, v in GDAL_HTTP_LIMITS.items() if k not in os.environ}
    return {**GDAL_URL_OPTIONS, **limits}


def gdal_reason(error: BaseException, gdal_path: str = '') -> str:
    """GDAL's first complaint behind a rasterio error, in a few words.

    rasterio chains GDAL's errors, the first cause last: that one says what went
    wrong (e.g. ``TIFFFillTile:Read error at row 384 ...; got 110486 bytes,
    expected 124496`` for a file cut short).

    Args:
        error: the error rasterio raised.
        gdal_path: the GDAL path the message may name, left out (the caller names
            the source as the user gave it).

    Returns:
        the first line of the first cause's message.
    """
    while error.__cause__ is not None:
        error = error.__cause__
    message = str(error)
    if gdal_path:
        message = message.replace(gdal_path, '')
    message = message.strip(' :\'"')
    return message.splitlines()[0] if message else 'unreadable'


def exists(source: str | os.PathLike[str]) -> bool:
    """Whether a source may be opened, as far as can be told without opening it.

    Args:
        source: a local path or a URL.

    Returns:
        for a local path, whether it exists; for a URL, True: only opening it
        tells (its error then names the URL).
    """
    return is_url(source) or os.path.exists(source)


def stem(source: str | os.PathLike[str]) -> str:
    """The name of a source without folder, query or extension.

    Args:
        source: a local path or a URL.

    Returns:
        e.g. ``scene`` for ``/data/scene.tif`` and for
        ``https://host/a/scene.tif?token=x``.
    """
    text = os.fspath(source)
    path = urlsplit(text).path if is_url(text) else text
    name = os.path.basename(path.rstrip('/'))
    return os.path.splitext(name)[0] or name
