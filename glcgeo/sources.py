"""Where rasters come from: local files, folders and globs, or URLs GDAL reads.

A *source* names a raster: a local file, or a URL that GDAL reads by byte ranges
(``http(s)://``, ``s3://``, ``gs://``, or a GDAL virtual file system path such as
``/vsicurl/...``, ``/vsis3/...`` or ``/vsizip/...``). :func:`expand` turns what a
user gives (files, folders, globs, URLs, folder URLs ending in ``/`` where the
store or web server can list them, and text files listing sources one a line)
into sources (how GDAL opens each: :mod:`glcgeo.gdal_paths`). This module
imports nothing heavy.

Example::

    expand(['tiles/', 'more/*.tif', 's3://bucket/scene.tif'])
    expand(['https://host/cogs/', '@urls.txt'])  # a listed folder URL, a list

.. versionadded:: 0.1
"""

import glob
import os
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from .errors import GlcgeoError
from .gdal_paths import RASTER_SUFFIXES, URL_PREFIXES, is_url, to_gdal_path

__all__ = ['expand']


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
