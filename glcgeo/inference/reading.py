"""Reading scenes for prediction: tiles of raw values made into model inputs.

:class:`TileReader` reads the tiles of a :func:`prediction_grid` from a raster,
mirrored beyond the scene's edges; :func:`dataset_patch` places a TorchGeo
dataset's patch on its scene. Both normalise with the model's statistics
(:func:`~glcgeo.transforms.normalize_bands`, nodata to 0) and pad to the
encoders' stride (:func:`prepare_input`).
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import torch
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from ..checkpoints import CheckpointMetadata
from ..datasets import valid_pixels
from ..errors import GlcgeoError
from ..transforms import normalize_bands
from .tiling import Tile, TileGrid

__all__ = [
    'PAD_MULTIPLE',
    'SCENE_MARGIN',
    'Patch',
    'TileReader',
    'dataset_patch',
    'input_bands',
    'open_source',
    'prediction_grid',
    'prepare_input',
]

#: Tile sides are rounded up to (and scenes smaller than a tile padded by reflection
#: to) a multiple of the encoders' output stride.
PAD_MULTIPLE = 32
#: Context mirrored around the scene, in pixels: tiles on the scene's edge see
#: reflected pixels there rather than the model's zero padding, as a whole scene
#: padded for the model would, so tiled and whole-scene predictions agree.
SCENE_MARGIN = 32


def prediction_grid(
    height: int, width: int, tile_size: int = 512, overlap: int = 128
) -> TileGrid:
    """Build the tile grid :func:`~glcgeo.inference.predict_raster` uses over a scene.

    The grid covers the scene grown by :data:`SCENE_MARGIN` mirrored pixels on
    every side (tile windows are in pixels of that grown scene), with tile sides
    rounded up to a multiple of :data:`PAD_MULTIPLE`.

    Args:
        height: scene height in pixels.
        width: scene width in pixels.
        tile_size: tile side in pixels.
        overlap: pixels shared by neighbouring tiles.

    Returns:
        the grid.

    """
    margin = 2 * SCENE_MARGIN
    return TileGrid(height + margin, width + margin, tile_size, overlap, PAD_MULTIPLE)


def prepare_input(
    data: np.ndarray, valid: np.ndarray, metadata: CheckpointMetadata
) -> np.ndarray:
    """Normalise raw values and pad by reflection to a multiple of the stride.

    Args:
        data: [C, H, W] raw values.
        valid: [H, W] True where there is data.
        metadata: band mean and std (raw units), if any.

    Returns:
        [C, H', W'] float32, H' and W' multiples of :data:`PAD_MULTIPLE`.

    """
    mean: Sequence[float] = metadata.band_mean or [0.0] * len(data)
    std: Sequence[float] = metadata.band_std or [1.0] * len(data)
    # A model without statistics takes raw values, whose band means are unknown:
    # there nodata keeps its value, and only NaN (never an input) becomes 0.
    holds_data = torch.from_numpy(valid) if metadata.band_mean is not None else None
    image = normalize_bands(torch.from_numpy(data), mean, std, holds_data).numpy()
    height, width = valid.shape
    pad_rows = -height % PAD_MULTIPLE
    pad_cols = -width % PAD_MULTIPLE
    return np.pad(image, ((0, 0), (0, pad_rows), (0, pad_cols)), mode='reflect')


def open_source(path: str | os.PathLike[str]) -> rasterio.DatasetReader:
    """Open the input raster, or explain in one line why it cannot be."""
    if not os.path.exists(path):
        raise GlcgeoError('no such input file', path)
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        reason = str(error).split(':')[-1].strip() or 'unreadable'
        raise GlcgeoError(f'not a readable raster ({reason})', path) from None


def input_bands(
    src: rasterio.DatasetReader, metadata: CheckpointMetadata, path: str
) -> list[int]:
    """Choose the 1-based bands to read, checked against the file and the model."""
    bands = list(metadata.bands or range(1, src.count + 1))
    if len(bands) != metadata.in_channels:
        raise GlcgeoError(
            f'the input has {src.count} bands, the model takes {metadata.in_channels} '
            '(choose them with --bands)',
            path,
        )
    if not all(1 <= b <= src.count for b in bands):
        raise GlcgeoError(f'bands {bands} out of range 1..{src.count}', path)
    return bands


@dataclass
class Patch:
    """A tile waiting for prediction.

    Attributes:
        image: [C, H', W'] model input from :func:`prepare_input`.
        tile_shape: (rows, columns) of the tile, before padding to the stride.
        edges: whether the tile touches the (top, bottom, left, right) edge of
            the area tiled; those sides get full weight.
        window: the part of the tile inside the scene, in scene pixels.
        crop: that part, in tile pixels.
        valid: True where that part has data.

    """

    image: np.ndarray
    tile_shape: tuple[int, int]
    edges: tuple[bool, bool, bool, bool]
    window: Window
    crop: tuple[slice, slice]
    valid: np.ndarray


class TileReader:
    """Reads tiles of a raster, mirrored beyond its edges, as model inputs."""

    def __init__(
        self,
        src: rasterio.DatasetReader,
        bands: list[int],
        metadata: CheckpointMetadata,
        nodata: float | None,
    ) -> None:
        self.src = src
        self.bands = bands
        self.metadata = metadata
        self.nodata = src.nodata if nodata is None else nodata
        flags = [src.mask_flag_enums[b - 1] for b in bands]
        # An internal mask or alpha band is authoritative unless nodata is forced.
        self.use_dataset_mask = nodata is None and any(
            MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags
        )

    def read(self, tile: Tile) -> Patch | None:
        """Read one tile of the grid over the scene plus :data:`SCENE_MARGIN`.

        Args:
            tile: a tile whose window is in pixels of the scene grown by the margin
                on every side.

        Returns:
            the tile to predict, or None where its part in the scene has no data.

        """
        window = tile.window
        row_off = int(window.row_off) - SCENE_MARGIN
        col_off = int(window.col_off) - SCENE_MARGIN
        height, width = int(window.height), int(window.width)
        top, left = max(0, -row_off), max(0, -col_off)
        bottom = max(0, row_off + height - self.src.height)
        right = max(0, col_off + width - self.src.width)
        inside = Window(
            col_off + left, row_off + top, width - left - right, height - top - bottom
        )
        if inside.width <= 0 or inside.height <= 0:
            return None  # a tile of the margin only
        data = self.src.read(self.bands, window=inside)
        valid = valid_pixels(torch.from_numpy(data), self.nodata).numpy()
        if self.use_dataset_mask:
            valid &= self.src.dataset_mask(window=inside) > 0
        if not valid.any():
            return None
        margins = ((top, bottom), (left, right))
        return Patch(
            image=prepare_input(
                np.pad(data, ((0, 0), *margins), mode='reflect'),
                np.pad(valid, margins, mode='reflect'),
                self.metadata,
            ),
            tile_shape=(height, width),
            edges=tile.edges,
            window=inside,
            crop=(slice(top, top + inside.height), slice(left, left + inside.width)),
            valid=valid,
        )


def dataset_patch(
    data: np.ndarray,
    nodata: float | None,
    metadata: CheckpointMetadata,
    row: int,
    col: int,
    scene_height: int,
    scene_width: int,
) -> Patch | None:
    """Cut a patch at (row, col) to the scene; None if it holds no data there.

    Args:
        data: [C, H, W] raw values of the patch.
        nodata: nodata value of *data*.
        metadata: normalisation.
        row: scene row of the patch's top (may be negative).
        col: scene column of the patch's left (may be negative).
        scene_height: scene height in pixels.
        scene_width: scene width in pixels.

    Returns:
        the patch to predict, or None.

    """
    _, height, width = data.shape
    top, left = max(row, 0), max(col, 0)
    bottom = min(row + height, scene_height)
    right = min(col + width, scene_width)
    crop = (slice(top - row, bottom - row), slice(left - col, right - col))
    # Whatever lies outside the scene is fill, not data.
    valid = np.zeros((height, width), dtype=bool)
    inside = torch.from_numpy(data[:, crop[0], crop[1]])
    valid[crop] = valid_pixels(inside, nodata).numpy()
    if not valid.any():
        return None
    return Patch(
        image=prepare_input(data, valid, metadata),
        tile_shape=(height, width),
        edges=(row <= 0, bottom == scene_height, col <= 0, right == scene_width),
        window=Window(left, top, right - left, bottom - top),
        crop=crop,
        valid=valid[crop],
    )
