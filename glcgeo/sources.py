"""Where rasters come from: local files, folders and globs, or URLs GDAL reads.

A *source* names a raster: a local file, or a URL that GDAL reads by byte ranges
(``http(s)://``, ``s3://``, ``gs://``, or a GDAL virtual file system path such as
``/vsicurl/...``, ``/vsis3/...`` or ``/vsizip/...``). :func:`expand` turns what a
user gives (files, folders, globs, URLs, folder URLs ending in ``/`` where the
store or web server can list them, and text files listing sources one a line)
into sources; :func:`gdal_options` are
the GDAL settings to open each, :func:`exists` and :func:`stem` what can be told
of one without opening it. This module imports nothing heavy.

Example::

    expand(['tiles/', 'more/*.tif', 's3://bucket/scene.tif'])
    expand(['https://host/cogs/', '@urls.txt'])  # a listed folder URL, a list
    stem('https://host/a/scene.tif?sig=x')  # 'scene'

.. versionadded:: 0.1
"""

import glob
import os
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from .errors import GlcgeoError

__all__ = [
    'RASTER_SUFFIXES',
    'exists',
    'expand',
    'gdal_options',
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


def _from_gdal_path(path: str, like: str) -> str:
    """A listed GDAL path written as the URL it was listed from is (*like*)."""
    scheme = urlsplit(like).scheme
    if scheme in URL_PREFIXES and path.startswith(URL_PREFIXES[scheme]):
        return f'{scheme}://' + path.removeprefix(URL_PREFIXES[scheme])
    return path


def _list_remote_folder(url: str) -> list[str]:
    """The rasters under a folder URL (a web server's index pages, a bucket prefix).

    Args:
        url: a URL or ``/vsi...`` path ending in ``/``.

    Returns:
        the rasters found, written as *url* is.

    Raises:
        GlcgeoError: if the folder cannot be listed or holds no raster.
    """
    import pyogrio  # GDAL's listing of virtual file systems, as TorchGeo uses

    try:
        entries = pyogrio.vsi_listtree(to_gdal_path(url))
    except (OSError, RuntimeError) as error:
        raise GlcgeoError(f'folder URL cannot be listed ({error})', url) from None
    found = [
        _from_gdal_path(e, url)
        for e in entries
        if not e.endswith('/') and e.endswith(RASTER_SUFFIXES)
    ]
    if not found:
        raise GlcgeoError(
            'folder URL lists no GeoTIFF (a web server must serve an index page; '
            'else give the files, or a text file of their URLs)',
            url,
        )
    return found


def _read_list(path: str) -> list[str]:
    """The sources a text file lists, one a line.

    Blank lines and ``#`` comments are skipped; relative local paths are
    relative to the file's folder.
    """
    try:
        with open(path) as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, 'strerror', None) or 'not text'
        raise GlcgeoError(f'cannot read list of sources ({reason})', path) from None
    sources = [line for line in lines if line and not line.startswith('#')]
    if not sources:
        raise GlcgeoError('list of sources is empty', path)
    folder = os.path.dirname(os.path.abspath(path))
    return [s if is_url(s) else os.path.join(folder, s) for s in sources]


def expand(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    bands: Sequence[int | str] | None = None,
) -> list[str]:
    """Expand what a user names into sources.

    Local files, folders (searched recursively for rasters) and glob patterns;
    URLs and ``/vsi...`` paths, kept as given; folder URLs (ending in ``/``),
    listed where the store or server can list them; text files named with an
    ``@`` (``@list.txt``) listing sources one a line (without it, a text file
    is an input like any other, and is refused as not a raster); scenes of one
    file per band (a pattern holding ``{band}``) and STAC Items or
    ItemCollections (``.json``), each scene a band stack of *bands*
    (:func:`glcgeo.bands.stack_sources`).

    Args:
        paths: one or more of the above.
        bands: the band names of ``{band}`` patterns and STAC items, in the
            order their stacks hold them; other sources ignore them.

    Returns:
        the local files (absolute), the URLs and the band stacks, sorted, each
        once: a file reached by several names (links to it or to a folder above
        it) under the first of them.

    Raises:
        GlcgeoError: if a local path does not exist, a folder (local or remote)
            holds no raster, a pattern matches no file, a list cannot be read, a
            band stack cannot be made, or nothing is given.
    """
    # Here, not at the top: glcgeo.bands imports this module.
    from .bands import is_band_pattern, is_stac, stack_sources

    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    sources: set[str] = set()
    lists: set[str] = set()
    pending = [os.fspath(p) for p in paths]
    while pending:
        path = pending.pop()
        if path.startswith('@'):
            listing = os.path.abspath(path.removeprefix('@'))
            if listing not in lists:  # a list naming itself is read once
                lists.add(listing)
                pending.extend(_read_list(listing))
            continue
        if is_band_pattern(path) or is_stac(path):
            found = stack_sources(path, bands)
        elif is_url(path):
            found = _list_remote_folder(path) if path.endswith('/') else [path]
        elif os.path.isdir(path):
            found = _folder_rasters(path)
            if not found:
                raise GlcgeoError('folder holds no GeoTIFF (*.tif, *.tiff)', path)
        elif glob.has_magic(path):
            found = [f for f in glob.glob(path, recursive=True) if os.path.isfile(f)]
            if not found:
                raise GlcgeoError('pattern matches no file', path)
        elif os.path.isfile(path):
            found = [path]
        else:
            raise GlcgeoError('no such file or folder', path)
        sources.update(f if is_url(f) else os.path.abspath(f) for f in found)
    if not sources:
        raise GlcgeoError('no input raster given')
    # A file reached by several names (links, a folder and a file in it) is one
    # file: keep its first name.
    by_file: dict[str, str] = {}
    for source in sorted(sources):
        real = source if is_url(source) else os.path.realpath(source)
        by_file.setdefault(real, source)
    return sorted(by_file.values())


def _folder_rasters(folder: str) -> list[str]:
    """The rasters under a local folder, each folder visited once.

    Links to folders are followed, but a folder reached again (a link to one of
    its parents, two links to one folder) is not read again, so a link loop
    ends. Hidden files and folders (``.name``) are left out, as globs leave them.
    """
    found = []
    visited: set[str] = set()
    for root, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:
            folders.clear()
            continue
        visited.add(real)
        folders[:] = sorted(f for f in folders if not f.startswith('.'))
        for name in sorted(files):
            path = os.path.join(root, name)
            if (
                name.endswith(RASTER_SUFFIXES)
                and not name.startswith('.')
                and os.path.isfile(path)
            ):
                found.append(path)
    return found
