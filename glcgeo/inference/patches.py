"""A TorchGeo dataset's patches for prediction, placed on their scene and batched.

:func:`dataset_patch` places a patch on its scene, with its nodata mask
(:func:`~glcgeo.rasters.valid_pixels`, the one nodata rule), and
:func:`batch_patches` stacks such patches for the model, as
:func:`~glcgeo.inference.predict_dataset` reads them.
"""

from collections.abc import Generator, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..rasters import valid_pixels
from .reading import Placement, place_tile

__all__ = ['Patch', 'PatchBatch', 'batch_patches', 'dataset_patch']


@dataclass
class Patch:
    """A patch of raw values waiting for prediction.

    Attributes:
        data: [C, H, W] raw values of the patch (the dataset's fill outside it).
        holds_data: [H, W] True where *data* holds data.
        placement: where its prediction goes.

    """

    data: np.ndarray
    holds_data: np.ndarray
    placement: Placement


def dataset_patch(
    data: np.ndarray,
    nodata: float | None,
    row: int,
    col: int,
    scene_height: int,
    scene_width: int,
) -> Patch | None:
    """Cut a patch at (row, col) to the scene; None if it holds no data there.

    Args:
        data: [C, H, W] raw values of the patch.
        nodata: nodata value of *data*.
        row: scene row of the patch's top (may be negative).
        col: scene column of the patch's left (may be negative).
        scene_height: scene height in pixels.
        scene_width: scene width in pixels.

    Returns:
        the patch to predict, or None.

    """
    _, height, width = data.shape
    edges = (
        row <= 0,
        row + height >= scene_height,
        col <= 0,
        col + width >= scene_width,
    )
    placement = place_tile(
        row, col, (height, width), (scene_height, scene_width), edges
    )
    if placement is None:
        return None
    # Whatever lies outside the scene is fill, not data.
    valid = np.zeros((height, width), dtype=bool)
    rows, cols = placement.crop
    valid[rows, cols] = valid_pixels(torch.from_numpy(data[:, rows, cols]), nodata)
    if not valid.any():
        return None
    return Patch(data=data, holds_data=valid, placement=placement)


@dataclass
class PatchBatch:
    """Patches stacked for one forward pass.

    Attributes:
        patches: the patches, in reading order.
        data: [B, C, H, W] their raw values (in pinned memory when asked), or
            None when *patches* is empty.
        holds_data: [B, H, W] True where *data* holds data, or None.
        items: patches read for this batch, those without data included.

    """

    patches: list[Patch]
    data: Tensor | None
    holds_data: Tensor | None
    items: int


def _stack(patches: list[Patch], items: int, pin_memory: bool) -> PatchBatch:
    """Stack patches into a :class:`PatchBatch`."""
    if not patches:
        return PatchBatch(patches, None, None, items)
    data = torch.from_numpy(np.stack([patch.data for patch in patches]))
    holds = torch.from_numpy(np.stack([patch.holds_data for patch in patches]))
    if pin_memory:
        data, holds = data.pin_memory(), holds.pin_memory()
    return PatchBatch(patches, data, holds, items)


def batch_patches(
    patches: Iterable[Patch | None],
    batch_size: int,
    pin_memory: bool = False,
) -> Generator[PatchBatch]:
    """Group patches into batches.

    Args:
        patches: in order; None for a patch without data.
        batch_size: patches per batch.
        pin_memory: put batches in page-locked memory, for fast copies to CUDA.

    Yields:
        the batches: *batch_size* patches each, or fewer at the end and where
        a patch without data follows a finished batch.

    """
    pending: list[Patch] = []
    items = 0
    for patch in patches:
        items += 1
        if patch is not None:
            pending.append(patch)
        # A patch without data and nothing pending ends a batch too, so that
        # the caller hears of progress while a stretch without data is read.
        if len(pending) == batch_size or not pending:
            yield _stack(pending, items, pin_memory)
            pending, items = [], 0
    if items:
        yield _stack(pending, items, pin_memory)
