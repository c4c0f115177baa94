"""The one normalisation (nodata to 0) and GLCNet's two-view augmentation."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from conftest import LANDSAT8, NC_IMAGE, QUADRANTS, RasterWriter, needs_nc
from torch import Tensor

from glcgeo.datamodules import GLCNetDataModule
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.geometry import transform_pixel_boxes
from glcgeo.stats import compute_band_stats
from glcgeo.transforms import TwoViewAugmentation, normalize_bands

MEAN = [1000.0, 500.0, 20.0]
STD = [300.0, 100.0, 4.0]


def raw(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2000, (batch, 3, size, size), generator=generator).float()


@pytest.mark.parametrize('dtype', [torch.uint16, torch.int16, torch.float32])
def test_normalize_bands_is_mean_and_std_per_band(dtype: torch.dtype) -> None:
    image = raw().to(dtype)
    normalized = normalize_bands(image, MEAN, STD)
    assert normalized.dtype == torch.float32
    mean = torch.tensor(MEAN)[:, None, None]
    std = torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(normalized, (image.float() - mean) / std)
    # One image [C, H, W] as a batch [B, C, H, W].
    torch.testing.assert_close(normalize_bands(image[0], MEAN, STD), normalized[0])


def test_normalize_bands_sets_nodata_and_nan_to_zero() -> None:
    image = raw()
    image[0, :, 2:4, 2:4] = -9999  # a fill value, marked by the valid mask
    image[1, 1, 5, 5] = torch.nan  # NaN, whatever the mask says
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[0, 2:4, 2:4] = False
    normalized = normalize_bands(image, MEAN, STD, valid)
    assert torch.isfinite(normalized).all()
    assert torch.all(normalized[0, :, 2:4, 2:4] == 0)
    assert normalized[1, 1, 5, 5] == 0
    untouched = valid.clone()
    untouched[1, 5, 5] = False
    expected = normalize_bands(raw(), MEAN, STD)
    assert torch.equal(
        normalized.permute(1, 0, 2, 3)[:, untouched],
        expected.permute(1, 0, 2, 3)[:, untouched],
    )


def test_augmented_views_never_hold_nan_and_nodata_is_zero_wherever_it_moves() -> None:
    image = raw(batch=8, size=32, seed=1)
    image[:, :, 5:9, 5:9] = torch.nan
    # Jitter and blur on every view: a pixel holding the band mean would move.
    augment = TwoViewAugmentation(MEAN, STD, jitter_p=1.0, blur_p=1.0, salt=0.01)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(8, 1, 4)
    batch = augment(
        {'image1': image, 'image2': image.clone(), 'boxes1': boxes, 'boxes2': boxes}
    )
    for key in ('image1', 'image2'):
        assert torch.isfinite(batch[key]).all()
    # A nodata pixel is the band mean: 0 once normalised, in both views...
    assert torch.all(batch['image1'][:, :, 5:9, 5:9] == 0)
    hole = torch.tensor([[[5.0, 5.0, 9.0, 9.0]]]).expand(8, 1, 4)
    moved = transform_pixel_boxes(hole, batch['matrix2']).round().long()
    assert len({tuple(m.flatten().tolist()) for m in batch['matrix2']}) > 1
    for view, (x1, y1, x2, y2) in zip(batch['image2'], moved[:, 0], strict=True):
        # ...wherever the flips and rotations of view 2 moved it.
        assert torch.all(view[:, y1:y2, x1:x2] == 0)
        assert (view == 0).all(dim=0).sum() == 16


def pretraining_views(paths: list[Path] | Path, seed: int = 0) -> dict[str, Tensor]:
    """One augmented batch as GLCNet trains on it, read from a mosaic."""
    datamodule = GLCNetDataModule(
        paths, patch_size=48, batch_size=64, length=64, max_nodata=0.3,
        region_size=10, num_workers=0, seed=seed,
    )  # fmt: skip
    datamodule.setup('fit')
    datamodule.trainer = SimpleNamespace(training=True)  # type: ignore[assignment]
    batch = next(iter(datamodule.train_dataloader()))
    return datamodule.on_after_batch_transfer(batch, 0)


def assert_no_raw_nodata(views: dict[str, Tensor], nodata: float, stats: Any) -> None:
    """Nodata is 0 in both views, never its raw value normalised, and marked.

    Without the rule, nodata pixels would hold the normalised nodata value in
    every band (NC's border, a -9999 fill: an easy cue for a contrastive task).
    """
    normalized_nodata = normalize_bands(
        torch.full((len(stats.mean), 1, 1), nodata), stats.mean, stats.std
    ).flatten()
    for k in (1, 2):
        image, valid = views[f'image{k}'], views[f'valid_pixels{k}']
        assert torch.isfinite(image).all()
        assert (~valid).any()  # the nodata is in the views...
        assert torch.all(image.permute(1, 0, 2, 3)[:, ~valid] == 0)  # ...as 0
        # No pixel holds the nodata value (in every band, as the rule says).
        raw_nodata = torch.isclose(image, normalized_nodata[:, None, None], atol=1e-4)
        assert not raw_nodata.all(dim=1).any()


def test_pretraining_views_hold_no_raw_integer_nodata() -> None:
    """The Landsat-7 quadrants: uint8 with a nodata (0) frame."""
    views = pretraining_views(QUADRANTS, seed=1)
    stats = GeoTiffMosaic(QUADRANTS)
    assert_no_raw_nodata(views, 0, compute_band_stats(stats))


def test_pretraining_views_hold_no_raw_minus_9999(make_raster: RasterWriter) -> None:
    with rasterio.open(LANDSAT8) as src:
        image = src.read().astype(np.int16)
    image[:, :, ::5] = -9999
    path = make_raster('striped.tif', image, nodata=-9999)
    assert_no_raw_nodata(
        pretraining_views(path), -9999, compute_band_stats(GeoTiffMosaic(path))
    )


@needs_nc
def test_nc_pretraining_views_hold_no_raw_nodata() -> None:
    """NC's Landsat-7 image: uint8 with a nodata (0) border, ~15 % of the image."""
    views = pretraining_views(NC_IMAGE, seed=2)
    assert_no_raw_nodata(views, 0, compute_band_stats(GeoTiffMosaic(NC_IMAGE)))
