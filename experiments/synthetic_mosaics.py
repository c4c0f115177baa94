"""Generated mosaics for the benchmarks: many files, files far apart, a cut scene.

Each mosaic is written once into a folder (a ``.complete`` file marks it done,
so an interrupted run writes it anew) and reused by later runs. The pixels are
real texture: crops of the shipped Sentinel-2 tile (4 x uint16 bands), placed on
a grid of files in EPSG:32618 at the asked pixel size (:func:`write_mosaic`), or
one scene of that texture cut into touching tiles (:func:`write_cut_scene`).
"""

import json
import os
import shutil
from collections.abc import Sequence

import numpy as np
import rasterio
from rasterio.transform import from_origin

S2_TILE = os.path.join(
    os.path.dirname(__file__),
    '..',
    'tests',
    'data',
    'sentinel2_10m_tiles',
    'S2_L1C_18SUH_tileA_B02-B03-B04-B08.tif',
)

#: Top-left corner of the first file of every generated mosaic (EPSG:32618).
ORIGIN = (300_000.0, 4_500_000.0)


def default_folder(name: str) -> str:
    """A folder for a generated mosaic under the system's temporary folder."""
    root = os.environ.get('GLCGEO_BENCH_DATA') or os.path.join(
        os.environ.get('TMPDIR', '/tmp'), 'glcgeo-bench'
    )
    return os.path.join(root, name)


def _written(folder: str, settings: dict[str, object]) -> bool:
    """Whether *folder* holds a complete mosaic written with *settings*."""
    marker = os.path.join(folder, '.complete')
    if os.path.exists(marker):
        with open(marker) as f:
            return bool(json.load(f) == settings)
    return False


def _fresh_folder(folder: str) -> np.ndarray:
    """Empty *folder* (created if needed); the texture to write into it."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    with rasterio.open(S2_TILE) as src:
        return src.read()


def _mark_written(folder: str, settings: dict[str, object]) -> None:
    """Mark *folder* complete, written with *settings* (see :func:`_written`)."""
    with open(os.path.join(folder, '.complete'), 'w') as f:
        json.dump(settings, f)


def _profile(texture: np.ndarray, side: int, tiled: bool, nodata: float | None) -> dict:
    """The GeoTIFF profile of a generated file of *side* x *side* pixels."""
    profile = {
        'driver': 'GTiff',
        'count': texture.shape[0],
        'width': side,
        'height': side,
        'dtype': texture.dtype,
        'crs': 'EPSG:32618',
        'compress': 'deflate',
        'nodata': nodata,
    }
    if tiled:
        profile |= {'tiled': True, 'blockxsize': 256, 'blockysize': 256}
    return profile


def write_mosaic(
    folder: str,
    corners: Sequence[tuple[float, float]],
    side: int,
    res: float,
    nodata: float | None = None,
    tiled: bool = True,
    seed: int = 0,
) -> list[str]:
    """Write one side x side file per corner (once), deflate-compressed.

    Args:
        folder: where the files go; reused as it is when complete with the same
            settings.
        corners: each file's top-left corner (x, y) in EPSG:32618 metres.
        side: width and height of each file, in pixels.
        res: pixel size in metres.
        nodata: the files' nodata tag (the texture holds no such value, but
            the files' masks must be read to know it).
        tiled: 256 x 256 blocks (else strips).
        seed: where each file's crop of the texture is taken.

    Returns:
        the files, in the order of *corners*.
    """
    settings = {
        'corners': [list(c) for c in corners],
        'side': side,
        'res': res,
        'nodata': nodata,
        'tiled': tiled,
        'seed': seed,
    }
    paths = [os.path.join(folder, f'tile_{i:05d}.tif') for i in range(len(corners))]
    if _written(folder, settings):
        return paths
    texture = _fresh_folder(folder)
    rng = np.random.default_rng(seed)
    profile = _profile(texture, side, tiled, nodata)
    for path, (x, y) in zip(paths, corners, strict=True):
        # A crop of the texture, mirrored to the side asked when it is larger.
        row, col = rng.integers(0, texture.shape[1] // 2, 2)
        crop = np.pad(
            texture[:, row:, col:], ((0, 0), (0, side), (0, side)), mode='reflect'
        )[:, :side, :side]
        with rasterio.open(
            path, 'w', transform=from_origin(x, y, res, res), **profile
        ) as dst:
            dst.write(crop)
    _mark_written(folder, settings)
    return paths


def write_cut_scene(
    folder: str, scene: int = 4096, tile: int = 512, res: float = 10.0
) -> list[str]:
    """Cut one *scene* x *scene* px scene into touching *tile* x *tile* px files.

    The scene is the shipped tile's texture mirrored to its size; the files
    (tiled, deflate) share its grid, so that a window across their edges reads
    the scene's own pixels, as a scene delivered in tiles does.

    Args:
        folder: where the files go; reused as it is when complete with the same
            settings.
        scene: side of the scene, in pixels (a multiple of *tile*).
        tile: side of each file, in pixels.
        res: pixel size in metres.

    Returns:
        the files, row by row from the scene's top-left.
    """
    settings = {'scene': scene, 'tile': tile, 'res': res}
    per_side = scene // tile
    paths = [os.path.join(folder, f'cut_{i:03d}.tif') for i in range(per_side**2)]
    if _written(folder, settings):
        return paths
    texture = _fresh_folder(folder)
    pixels = np.pad(texture, ((0, 0), (0, scene), (0, scene)), mode='symmetric')
    pixels = pixels[:, :scene, :scene]
    profile = _profile(texture, tile, tiled=True, nodata=None)
    for i, path in enumerate(paths):
        row, col = divmod(i, per_side)
        x, y = ORIGIN[0] + col * tile * res, ORIGIN[1] - row * tile * res
        with rasterio.open(
            path, 'w', transform=from_origin(x, y, res, res), **profile
        ) as dst:
            dst.write(
                pixels[:, row * tile : (row + 1) * tile, col * tile : (col + 1) * tile]
            )
    _mark_written(folder, settings)
    return paths


def grid_corners(count: int, spacing: float) -> list[tuple[float, float]]:
    """Top-left corners of *count* files on a square layout, *spacing* m apart."""
    per_row = int(np.ceil(np.sqrt(count)))
    return [
        (ORIGIN[0] + (i % per_row) * spacing, ORIGIN[1] - (i // per_row) * spacing)
        for i in range(count)
    ]


def clustered_corners(
    count: int, tile: float, cluster: int = 10, spacing: float = 10_000.0
) -> list[tuple[float, float]]:
    """Corners of touching files in square clusters, the clusters far apart.

    As regional collections come: blocks of adjacent tiles (e.g. quarter-quads)
    scattered over a region.

    Args:
        count: number of files.
        tile: side of a file on the ground, in metres.
        cluster: files along a side of a cluster (cluster x cluster files each).
        spacing: distance between the clusters' corners, in metres.

    Returns:
        each file's top-left corner, cluster by cluster.
    """
    per_cluster = cluster * cluster
    clusters = grid_corners(-(-count // per_cluster), spacing)
    return [
        (
            clusters[i // per_cluster][0] + (i % cluster) * tile,
            clusters[i // per_cluster][1] - (i % per_cluster // cluster) * tile,
        )
        for i in range(count)
    ]
