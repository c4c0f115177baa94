"""A mosaic's index and coverage, computed once per run and kept on disk.

Indexing a mosaic opens every file, and its coverage reads every file's mask
that is not known valid everywhere; with thousands of files that is the start's
whole cost. Each process that builds the mosaic (a DDP rank, a resumed run, a
``torchgeo fit`` of the saved config) finds them here instead, in a folder of the
run: :class:`MosaicIndex` (files, footprints, what reading them needs), each
:class:`~glcgeo.coverage.SparseCoverage` and the CRS group of each file of a
collection (:func:`glcgeo.collection.open_mosaic`), as numpy ``.npz`` files
named by a key of what they depend on (:func:`cache_key`): the file list with
each local file's size and modification time, and the settings. A changed, added
or removed file gives another key, so a stale entry is never read. Remote files
(URLs) are keyed by their address only.

DataLoader workers need no cache: they receive the mosaic, index included,
from the process that built it (forked or pickled).
"""

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .coverage import SparseCoverage
from .geometry import PixelGrid
from .outputs import atomic_write

__all__ = [
    'MosaicIndex',
    'cache_key',
    'load_coverage',
    'load_crs_groups',
    'load_index',
    'save_coverage',
    'save_crs_groups',
    'save_index',
]

#: Changes whenever what is stored changes meaning: older entries are not read.
FORMAT = 1


@dataclass(frozen=True)
class MosaicIndex:
    """What a mosaic knows of its files once they are indexed.

    Attributes:
        files: the files, in mosaic order (first on top).
        boxes: [N, 4] float64 each file's (left, bottom, right, top) in the
            mosaic CRS.
        direct: [N] bool, whether a file lies on the mosaic CRS as it is
            (read without a warped VRT).
        all_valid: [N] bool, whether a file holds data everywhere in its
            footprint (no nodata, no mask), so its coverage is its footprint.
        crs: the mosaic CRS, as WKT.
        res: (x, y) pixel size in CRS units.
        descriptions: band names of the first file.
        nodata: the first file's nodata value, if any.
        dtype: the first file's dtype name.

    """

    files: list[str]
    boxes: np.ndarray
    direct: np.ndarray
    all_valid: np.ndarray
    crs: str
    res: tuple[float, float]
    descriptions: list[str]
    nodata: float | None
    dtype: str


def cache_key(files: Sequence[str], settings: dict[str, Any]) -> str:
    """A key of the files (local ones with their size and mtime) and settings.

    Args:
        files: the mosaic's files or URLs, in order.
        settings: anything else the cached value depends on (JSON-able).

    Returns:
        a 24-character hexadecimal key.
    """
    stamps = []
    for path in files:
        try:
            stat = os.stat(path)
            stamps.append([path, stat.st_size, stat.st_mtime_ns])
        except OSError:  # a URL or a GDAL virtual path: its name only
            stamps.append([path])
    text = json.dumps([FORMAT, stamps, settings], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _npz(folder: str, name: str) -> str:
    return os.path.join(folder, f'{name}.npz')


def _save_npz(path: str, **arrays: np.ndarray) -> None:
    """Write arrays to an ``.npz`` file (its folder created), whole or not at all."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as temporary, open(temporary, 'wb') as f:
        np.savez(f, allow_pickle=False, **arrays)


def save_index(folder: str, key: str, index: MosaicIndex) -> None:
    """Write an index into *folder* (created if needed), whole or not at all.

    Args:
        folder: the cache folder.
        key: its key (:func:`cache_key`).
        index: the index.
    """
    meta = {
        'crs': index.crs,
        'res': list(index.res),
        'descriptions': index.descriptions,
        'nodata': index.nodata,
        'dtype': index.dtype,
    }
    _save_npz(
        _npz(folder, f'index-{key}'),
        files=np.array(index.files, dtype=str),
        boxes=index.boxes,
        direct=index.direct,
        all_valid=index.all_valid,
        meta=np.array(json.dumps(meta)),
    )


def load_index(folder: str, key: str) -> MosaicIndex | None:
    """Read the index of *key* from *folder*.

    Args:
        folder: the cache folder.
        key: the key (:func:`cache_key`).

    Returns:
        the index, or None if there is none (or it cannot be read).
    """
    try:
        with np.load(_npz(folder, f'index-{key}')) as data:
            meta = json.loads(str(data['meta']))
            return MosaicIndex(
                files=data['files'].tolist(),
                boxes=data['boxes'],
                direct=data['direct'],
                all_valid=data['all_valid'],
                crs=meta['crs'],
                res=(meta['res'][0], meta['res'][1]),
                descriptions=meta['descriptions'],
                nodata=meta['nodata'],
                dtype=meta['dtype'],
            )
    except (OSError, KeyError, ValueError):
        return None


def save_coverage(folder: str, key: str, coverage: SparseCoverage) -> None:
    """Write a coverage into *folder*, whole or not at all.

    Args:
        folder: the cache folder.
        key: its key (:func:`cache_key`).
        coverage: the coverage.
    """
    grid = coverage.grid
    _save_npz(
        _npz(folder, f'coverage-{key}'),
        keys=coverage.keys,
        fractions=coverage.fractions,
        shape=np.array(coverage.shape),
        grid=np.array([grid.x0, grid.y0, *grid.res]),
    )


def load_coverage(folder: str, key: str) -> SparseCoverage | None:
    """Read the coverage of *key* from *folder*.

    Args:
        folder: the cache folder.
        key: the key (:func:`cache_key`).

    Returns:
        the coverage, or None if there is none (or it cannot be read).
    """
    try:
        with np.load(_npz(folder, f'coverage-{key}')) as data:
            x0, y0, xres, yres = data['grid'].tolist()
            rows, cols = data['shape'].tolist()
            return SparseCoverage(
                PixelGrid(x0, y0, (xres, yres)),
                (rows, cols),
                data['keys'],
                data['fractions'],
            )
    except (OSError, KeyError, ValueError):
        return None


def save_crs_groups(folder: str, key: str, groups: np.ndarray) -> None:
    """Write the CRS group of each file of a collection, whole or not at all.

    Args:
        folder: the cache folder.
        key: its key (:func:`cache_key`).
        groups: [N] int64 each file's group, numbered in order of first file.
    """
    _save_npz(_npz(folder, f'crs-groups-{key}'), groups=groups)


def load_crs_groups(folder: str, key: str) -> np.ndarray | None:
    """Read the CRS groups of *key* from *folder*.

    Args:
        folder: the cache folder.
        key: the key (:func:`cache_key`).

    Returns:
        [N] int64 each file's group, or None if there are none (or they cannot
        be read).
    """
    try:
        with np.load(_npz(folder, f'crs-groups-{key}')) as data:
            return np.asarray(data['groups'], dtype=np.int64)
    except (OSError, KeyError, ValueError):
        return None
