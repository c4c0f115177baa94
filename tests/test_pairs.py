"""Window pairs: union reads, collate_unions, cut_views, and the views they give."""

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from conftest import (
    LANDSAT8,
    OFF_GRID_ORIGIN,
    QUADRANTS,
    S2_TILES,
    RasterWriter,
    direct_read,
)
from rasterio.enums import Resampling
from rasterio.windows import Window
from torch import Tensor
from torch.utils.data import DataLoader

from glcgeo.datamodules import GLCNetDataModule
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.geometry import ground_to_pixel_boxes
from glcgeo.pairs import (
    GeoTiffPairs,
    GeoTiffUnions,
    collate_unions,
    cut_views,
    unpack_unions,
)
from glcgeo.samplers import PairedWindowSampler


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def union_batch(union: Tensor, window1: list[int], window2: list[int]) -> dict:
    """A one-pair batch of the union form."""
    return {
        'union': union[None],
        'window1': torch.tensor([window1]),
        'window2': torch.tensor([window2]),
    }


def smooth(height: int, width: int, bands: int = 3) -> Tensor:
    """Low-frequency test imagery: sums of sinusoids of 40 px and longer periods."""
    rows = torch.arange(height, dtype=torch.float64)[:, None]
    cols = torch.arange(width, dtype=torch.float64)[None]
    bands_ = [
        1000
        + 300 * torch.sin(2 * math.pi * (cols / (40 + 9 * b) + rows / (57 + 5 * b)))
        + 200 * torch.cos(2 * math.pi * rows / (45 + 7 * b))
        for b in range(bands)
    ]
    return torch.stack(bands_).float()


@pytest.mark.parametrize(
    'dtype', [torch.uint8, torch.int16, torch.uint16, torch.float32]
)
def test_scale_one_is_an_exact_crop(dtype: torch.dtype) -> None:
    generator = seeded(0)
    values = torch.randint(0, 250, (4, 90, 120), generator=generator)
    union = values.to(dtype)
    views = cut_views(union_batch(union, [7, 3, 71, 67], [50, 20, 114, 84]), 64)
    assert set(views) == {'image1', 'image2'}
    assert views['image1'].dtype == torch.float32
    assert torch.equal(views['image1'][0], values[:, 3:67, 7:71].float())
    assert torch.equal(views['image2'][0], values[:, 20:84, 50:114].float())


def test_nan_nodata_does_not_spread() -> None:
    values = smooth(90, 120, bands=2)
    values[0, 30:34, 40:45] = torch.nan  # a nodata hole in one band only
    batch = union_batch(values, [7, 3, 71, 67], [10, 10, 110, 90])
    views = cut_views(batch, 64)
    # At scale 1, exactly the source's values; a pixel with a NaN band has no
    # data (the one nodata rule): NaN in every band.
    expected = values[:, 3:67, 7:71].clone()
    expected[:, torch.isnan(expected).any(dim=0)] = torch.nan
    assert torch.equal(torch.isnan(views['image1'][0]), torch.isnan(expected))
    assert torch.equal(views['image1'][0].nan_to_num(-1), expected.nan_to_num(-1))
    # Resized: NaN only where a pixel has no valid sample, in every band alike.
    resized = views['image2'][0]
    assert 0 < torch.isnan(resized[0]).sum() <= 4 * 5
    assert torch.equal(torch.isnan(resized[0]), torch.isnan(resized[1]))
    valid = cut_views(
        union_batch(values.nan_to_num(1000), [10, 10, 110, 90], [10, 10, 110, 90]), 64
    )
    far = ~torch.isnan(resized[0])
    far[10:40, 15:45] = False  # away from the hole, the same as without it
    for band in (0, 1):
        assert torch.allclose(resized[band][far], valid['image1'][0, band][far])


@pytest.mark.parametrize('dtype', [torch.uint8, torch.int16])
def test_integer_nodata_does_not_spread(dtype: torch.dtype) -> None:
    nodata = 0 if dtype == torch.uint8 else -9999
    values = torch.randint(1, 250, (3, 90, 120), generator=seeded(1))
    values[:, 30:34, 40:45] = nodata  # every band: no data
    values[1, 50:52, 60:62] = nodata  # one band only: data
    batch = union_batch(values.to(dtype), [7, 3, 71, 67], [10, 10, 110, 90])
    views = cut_views(batch, 64, nodata=nodata)
    # At scale 1: the nodata pixels become NaN, every other value is kept.
    expected = values[:, 3:67, 7:71].float()
    expected[:, 27:31, 33:38] = torch.nan
    assert torch.equal(views['image1'][0].nan_to_num(-1), expected.nan_to_num(-1))
    # Resized: the fill value of nodata pixels is never averaged into a view.
    values[1, 50:52, 60:62] = 7
    batch = union_batch(values.to(dtype), [7, 3, 71, 67], [10, 10, 110, 90])
    resized = cut_views(batch, 64, nodata=nodata)['image2'][0]
    assert torch.isnan(resized).any()
    assert (resized[~torch.isnan(resized)] >= 1).all()
    # Without the nodata value, the fill value is data.
    assert not torch.isnan(cut_views(batch, 64)['image1']).any()


@pytest.mark.parametrize('side', [257, 300, 420, 160])
def test_resizing_matches_antialiased_interpolation_on_smooth_data(side: int) -> None:
    size, offset = 224, 5
    union = smooth(side + 2 * offset, side + 2 * offset)
    window = [offset, offset, offset + side, offset + side]
    view = cut_views(union_batch(union, window, window), size)['image1'][0]
    crop = union[None, :, offset:-offset, offset:-offset]
    expected = F.interpolate(
        crop, size=(size, size), mode='bilinear', antialias=True, align_corners=False
    )[0]
    # Away from the edges (where F.interpolate clamps to the crop and roi_align
    # reads the union's pixels next to it), the two filters agree to within their
    # difference in shape (triangle vs ceil(scale)^2 bilinear taps): < 1 % of
    # the signal's standard deviation on average.
    inner = (slice(None), slice(3, -3), slice(3, -3))
    error = (view - expected)[inner].abs()
    assert error.max() < 0.05 * union.std() and error.mean() < 0.01 * union.std()


def test_downscaling_is_antialiased() -> None:
    """A pixel-scale checkerboard averages out, as antialiasing must; one bilinear
    sample per output pixel would alias it into stripes."""
    rows, cols = torch.meshgrid(torch.arange(450), torch.arange(450), indexing='ij')
    checker = ((rows + cols) % 2).float()[None] * 100
    view = cut_views(union_batch(checker, [0, 0, 448, 448], [0, 0, 448, 448]), 224)
    inner = view['image1'][0, :, 2:-2, 2:-2]
    assert (inner - 50).abs().max() < 1e-3


def test_padding_never_enters_a_view() -> None:
    """Unions of several sizes collated into one batch: every view is what the
    same union alone gives, even views touching the union's far edges."""
    generator = seeded(1)
    shapes = [(70, 90), (96, 96), (81, 64)]
    samples = []
    for height, width in shapes:
        union = torch.randint(100, 200, (2, height, width), generator=generator)
        samples.append(
            {
                'union': union.to(torch.int16),
                # Views of scale 0.75 and 1.25 at the far corner and the near one.
                'window1': torch.tensor([width - 48, height - 48, width, height]),
                'window2': torch.tensor([0, 0, 60, 60]),
                'valid1': torch.tensor(1.0),
            }
        )
    batch = collate_unions(samples)
    assert batch['union'].shape == (sum(s['union'].numel() for s in samples),)
    assert batch['union'].dtype == torch.int16
    assert batch['union_shape'].tolist() == [[2, h, w] for h, w in shapes]
    assert unpack_unions(batch['union'], batch['union_shape']).shape == (3, 2, 96, 96)
    views = cut_views(batch, 64)
    for i, sample in enumerate(samples):
        alone = cut_views({k: v[None] for k, v in sample.items()}, 64)
        for k in (1, 2):
            torch.testing.assert_close(
                views[f'image{k}'][i], alone[f'image{k}'][0], rtol=0, atol=1e-4
            )
            # Bilinear samples of 100..199 stay in that range: no other value.
            assert views[f'image{k}'][i].min() >= 100
            assert views[f'image{k}'][i].max() <= 199


@pytest.mark.parametrize('dtype', ['uint8', 'int16', 'uint16', 'float32'])
def test_collate_packs_and_unpacking_pads_by_repeating_edges(dtype: str) -> None:
    small = torch.from_numpy(np.arange(24).reshape(2, 3, 4).astype(dtype))
    large = torch.from_numpy(np.full((2, 5, 6), 7).astype(dtype))
    geometry = {'window1': torch.tensor([0, 0, 2, 2]), 'valid1': torch.tensor(0.5)}
    batch = collate_unions([{'union': small, **geometry}, {'union': large, **geometry}])
    # Shipped packed, in the samples' dtype: no padding in the batch.
    assert batch['union'].dtype == small.dtype
    assert torch.equal(batch['union'], torch.cat([small.ravel(), large.ravel()]))
    assert batch['union_shape'].tolist() == [[2, 3, 4], [2, 5, 6]]
    assert torch.equal(batch['window1'], torch.tensor([[0, 0, 2, 2]] * 2))
    assert batch['valid1'].shape == (2,)
    unions = unpack_unions(batch['union'], batch['union_shape'])
    assert unions.dtype == torch.float32
    assert unions.shape == (2, 2, 5, 6)
    padded = unions[0].numpy()
    expected = small.float().numpy()
    np.testing.assert_array_equal(padded[:, :3, :4], expected)
    np.testing.assert_array_equal(
        padded[:, 3:, :4], np.repeat(expected[:, -1:], 2, axis=1)
    )
    np.testing.assert_array_equal(
        padded[:, :, 4:], np.repeat(padded[:, :, 3:4], 2, axis=2)
    )
    assert torch.equal(unions[1], large.float())


def test_collated_unions_cut_the_views_of_read_pair(s2_pairs: GeoTiffPairs) -> None:
    """The data module's path (union form, workers, collate_unions, cut_views)
    gives the views and geometry of pairs[pair], for unions of mixed sizes."""
    size = 48

    def pairs() -> PairedWindowSampler:
        return PairedWindowSampler(
            s2_pairs, size=size, length=12, scale=(0.6, 1.6), generator=seeded(3)
        )

    unions = GeoTiffUnions(s2_pairs.files)
    loader = DataLoader(
        unions, batch_size=6, sampler=pairs(), num_workers=2, collate_fn=collate_unions
    )
    batches = list(loader)
    assert all(b['union'].dtype == torch.uint16 for b in batches)
    assert all(b['union_shape'].unique(dim=0).shape[0] > 1 for b in batches)
    expected = [s2_pairs[pair] for pair in pairs()]
    shapes = {
        tuple(u.shape) for u in (s2_pairs.read_union(p)['union'] for p in pairs())
    }
    assert len(shapes) > 1  # mixed union sizes, padded in each batch
    for b, batch in enumerate(batches):
        views = cut_views(batch, size)
        for i in range(6):
            sample = expected[6 * b + i]
            assert views.keys() == sample.keys()
            for key, value in sample.items():
                torch.testing.assert_close(views[key][i], value, rtol=0, atol=1e-3)


def test_union_form_overlap_identical_through_the_data_module_path(
    shipped_pairs: GeoTiffPairs,
) -> None:
    """At scale 1, each view cut on device holds the overlap's very pixels, and
    its valid fraction (computed on raw values in the worker) is the view's."""
    size = 64
    sampler = PairedWindowSampler(
        shipped_pairs, size=size, length=8, scale=(1.0, 1.0), generator=seeded(5)
    )
    pairs = list(sampler)
    batch = collate_unions([shipped_pairs.read_union(pair) for pair in pairs])
    views = cut_views(batch, size)
    for i, pair in enumerate(pairs):
        x1, y1, x2, y2 = pair.overlap
        cut = []
        for k, window in ((1, pair.view1), (2, pair.view2)):
            col, row = int(window.col_off), int(window.row_off)
            image = views[f'image{k}'][i]
            cut.append(image[:, y1 - row : y2 - row, x1 - col : x2 - col])
            valid = shipped_pairs.valid_mask(image).float().mean()
            assert views[f'valid{k}'][i] == pytest.approx(valid.item(), abs=1e-6)
        assert cut[0].numel() > 0
        assert torch.equal(cut[0], cut[1])


def test_data_module_yields_unions_and_cuts_them_after_transfer() -> None:
    datamodule = GLCNetDataModule(
        str(S2_TILES),
        patch_size=32,
        batch_size=4,
        length=4,
        num_workers=0,
    )
    datamodule.setup('fit')
    batch = next(iter(datamodule.train_dataloader()))
    assert 'image1' not in batch and batch['union'].dtype == torch.uint16
    views = datamodule.on_after_batch_transfer(batch, 0)
    assert 'union' not in views
    assert views['image1'].shape == views['image2'].shape == (4, 4, 32, 32)
    assert views['boxes1'].shape == (4, 4, 4)


def test_batched_union_geometry_is_each_pairs_own(s2_mosaic: GeoTiffMosaic) -> None:
    """The geometry computed for a batch of pairs at once (what a DataLoader's
    __getitems__ reads) is, to the bit, what each pair's own affine gives."""
    mosaic = GeoTiffUnions(s2_mosaic.files)
    sampler = PairedWindowSampler(
        mosaic, size=48, length=16, scale=(0.6, 1.6), generator=seeded(4)
    )
    pairs = list(sampler)
    samples = mosaic.__getitems__(pairs)
    grid = mosaic.grid
    for pair, sample in zip(pairs, samples, strict=True):
        alone = mosaic.read_union(pair)
        assert sample.keys() == alone.keys()
        for key, value in alone.items():
            assert value.dtype == sample[key].dtype and torch.equal(value, sample[key])
        regions = grid.boxes_to_map(pair.regions)
        assert torch.equal(sample['regions'], torch.from_numpy(regions))
        for k, window in ((1, pair.view1), (2, pair.view2)):
            affine = grid.window_transform(window, pair.size)
            assert sample[f'transform{k}'].tolist() == list(affine[:6])
            boxes = ground_to_pixel_boxes(regions, affine).astype(np.float32)
            assert torch.equal(sample[f'boxes{k}'], torch.from_numpy(boxes))
            x1, y1 = (
                window.col_off - pair.union.col_off,
                window.row_off - pair.union.row_off,
            )
            assert sample[f'window{k}'].tolist() == [
                x1,
                y1,
                x1 + window.width,
                y1 + window.height,
            ]


# Views read pair by pair (GeoTiffPairs) against direct reads of their ground.


def view_slice(window: Window, box: tuple[int, int, int, int]) -> tuple:
    """Index of a mosaic pixel box inside an un-resized view of *window*."""
    col, row = int(window.col_off), int(window.row_off)
    return (
        slice(None),
        slice(box[1] - row, box[3] - row),
        slice(box[0] - col, box[2] - col),
    )


def on_the_mosaic_grid(mosaic: GeoTiffMosaic) -> bool:
    """Whether every file lies on the mosaic's pixel grid (whole-pixel offsets)."""
    grid = mosaic.grid
    for path in mosaic.files:
        with rasterio.open(path) as src:
            if src.crs != mosaic.crs or src.res != pytest.approx(grid.res, rel=1e-9):
                return False
            col = (src.bounds.left - grid.x0) / grid.res[0]
            row = (grid.y0 - src.bounds.top) / grid.res[1]
            if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
                return False
    return True


def assert_overlap_identical(mosaic: GeoTiffPairs, seed: int) -> None:
    """Both views at scale 1: the overlap's pixels are the same in both, and each
    view is what a direct read of its georeferenced window gives."""
    size = 64
    sampler = PairedWindowSampler(
        mosaic, size=size, length=8, scale=(1.0, 1.0), generator=seeded(seed)
    )
    aligned = on_the_mosaic_grid(mosaic)
    for pair in sampler:
        sample = mosaic[pair]
        first = sample['image1'][view_slice(pair.view1, pair.overlap)]
        second = sample['image2'][view_slice(pair.view2, pair.overlap)]
        assert first.numel() > 0
        assert torch.equal(first.nan_to_num(-1), second.nan_to_num(-1))
        assert mosaic.valid_mask(first).float().mean() > 0.8
        for k in (1, 2):
            view = sample[f'image{k}']
            direct = direct_read(mosaic, sample[f'transform{k}'], size)
            # The files' nodata pixels are NaN in the views, in every band.
            holds = mosaic.valid_mask(direct)
            has_data = ~torch.isnan(view).any(dim=0)
            if aligned:
                # rasterio.merge resamples by (bilinear) windows whose float
                # offsets differ by ~1e-9 px between reads: rare 1-DN flips.
                assert torch.equal(has_data, holds)
                same = (view == direct.float()).all(dim=0)
                assert same[holds].float().mean() > 0.99
            else:
                # Files off the grid are placed by rasterio.merge with a
                # read-dependent sub-pixel shift (up to half a pixel).
                both = holds & has_data
                correlation = np.corrcoef(
                    view[:, both].ravel(), direct[:, both].ravel()
                )
                assert correlation[0, 1] > 0.97


def test_overlap_pixels_identical_in_both_views(shipped_pairs: GeoTiffPairs) -> None:
    assert_overlap_identical(shipped_pairs, seed=1)


def test_overlap_pixels_identical_in_a_mixed_crs_mosaic(
    mixed_crs_quadrants: list[Path],
) -> None:
    with rasterio.open(QUADRANTS[0]) as src:
        crs, res = src.crs.to_wkt(), src.res
    mosaic = GeoTiffPairs(mixed_crs_quadrants, crs=crs, res=res)
    assert_overlap_identical(mosaic, seed=2)


def test_view_transforms_are_float64_exact_at_utm_northings(
    off_grid_s2_tile: Path,
) -> None:
    """Each view's transform, through DataLoader workers and collation, is the
    grid arithmetic in float64 (float32 would be decimetres off here)."""
    x0, y0 = OFF_GRID_ORIGIN
    mosaic = GeoTiffPairs(off_grid_s2_tile)
    size = 96
    sampler = PairedWindowSampler(mosaic, size=size, length=30)
    loader = DataLoader(mosaic, batch_size=10, sampler=sampler, num_workers=2)
    batches = list(loader)
    # The same seed again gives the pairs the loader read.
    pairs = list(PairedWindowSampler(mosaic, size=size, length=30))
    errors, far_errors = [], []
    for i, pair in enumerate(pairs):
        batch = batches[i // 10]
        for k, window in ((1, pair.view1), (2, pair.view2)):
            got = batch[f'transform{k}'][i % 10]
            assert got.dtype == torch.float64
            pixel = 10.0 * window.width / size
            left, top = x0 + 10.0 * window.col_off, y0 - 10.0 * window.row_off
            expected = [pixel, 0.0, left, 0.0, -pixel, top]
            errors.append(np.abs(got.numpy() - expected).max())
            # The view's far corner is the window's far corner.
            right, bottom = Affine(*got.tolist()) @ (size, size)
            far_errors.append(
                max(
                    abs(right - (x0 + 10.0 * (window.col_off + window.width))),
                    abs(bottom - (y0 - 10.0 * (window.row_off + window.height))),
                )
            )
    assert max(errors) < 1e-3 and max(far_errors) < 1e-3
    assert min(t[5] for b in batches for t in b['transform1'].tolist()) > 4.17e6


def test_workers_give_the_same_batches_as_the_main_process(
    s2_pairs: GeoTiffPairs,
) -> None:
    def batches(workers: int) -> list[dict[str, Tensor]]:
        sampler = PairedWindowSampler(s2_pairs, size=48, length=8, generator=seeded(9))
        loader = DataLoader(
            s2_pairs, batch_size=4, sampler=sampler, num_workers=workers
        )
        return list(loader)

    for main, worker in zip(batches(0), batches(2), strict=True):
        assert main.keys() == worker.keys()
        for key in main:
            assert main[key].dtype == worker[key].dtype
            assert torch.equal(main[key], worker[key])


def test_regions_cover_the_same_ground_in_both_views(
    quadrant_pairs: GeoTiffPairs,
) -> None:
    size = 64
    same_scale = PairedWindowSampler(
        quadrant_pairs, size=size, length=10, scale=(1.0, 1.0), region_size=12
    )
    for pair in same_scale:
        sample = quadrant_pairs[pair]
        overlap = sample['overlap'].numpy()
        regions = sample['regions'].numpy()
        assert regions.shape == (4, 4) and sample['regions'].dtype == torch.float64
        assert (regions[:, :2] >= overlap[:2] - 1e-6).all()
        assert (regions[:, 2:] <= overlap[2:] + 1e-6).all()
        for box1, box2 in zip(sample['boxes1'], sample['boxes2'], strict=True):
            c1, r1, c2, r2 = box1.round().long().tolist()
            d1, s1, d2, s2 = box2.round().long().tolist()
            assert (c2 - c1, r2 - r1) == (12, 12) == (d2 - d1, s2 - s1)
            assert torch.equal(
                sample['image1'][:, r1:r2, c1:c2], sample['image2'][:, s1:s2, d1:d2]
            )
    scaled = PairedWindowSampler(quadrant_pairs, size=size, length=20, scale=(0.6, 1.6))
    for pair in scaled:
        sample = quadrant_pairs[pair]
        regions = sample['regions'].numpy()
        for k in (1, 2):
            affine = Affine(*sample[f'transform{k}'].tolist())
            exact = ground_to_pixel_boxes(regions, affine)
            # Back to the ground through the view's affine: the region, to < 1 um.
            x1, y1 = affine @ (exact[:, 0], exact[:, 1])
            x2, y2 = affine @ (exact[:, 2], exact[:, 3])
            ground = np.stack([x1, y2, x2, y1], axis=1)
            assert np.abs(ground - regions).max() < 1e-6
            # The float32 boxes fed to RoI-align are these, to 1e-4 pixel.
            np.testing.assert_allclose(sample[f'boxes{k}'].numpy(), exact, atol=1e-4)
            inside = (exact >= -1e-6) & (exact <= size + 1e-6)
            assert inside.all()


def _interior(mosaic: GeoTiffMosaic, image: Tensor) -> np.ndarray:
    """Pixels 3 or more pixels away from nodata (resizing blends neighbours)."""
    invalid = (~mosaic.valid_mask(image)).float()[None, None]
    near_nodata = F.max_pool2d(invalid, kernel_size=7, stride=1, padding=3)[0, 0]
    return (near_nodata == 0).numpy()


def file_read(mosaic: GeoTiffMosaic, transform: Tensor, size: int) -> Tensor | None:
    """Read a view's ground window at its resolution straight from the one file
    that holds it (rasterio, bilinear), or None if no single file does.

    Reads of a mosaic at another resolution than its files' place each file with
    a rounded offset (rasterio.merge), so the reference comes from one file.
    """
    affine = Affine(*transform.tolist())
    left, top = affine.c, affine.f
    right, bottom = affine @ (size, size)
    for path in mosaic.files:
        with rasterio.open(path) as src:
            b = src.bounds
            if src.crs != mosaic.crs or not (
                b.left <= left
                and right <= b.right
                and b.bottom <= bottom
                and top <= b.top
            ):
                continue
            window = rasterio.windows.from_bounds(
                left, bottom, right, top, src.transform
            )
            image = src.read(
                mosaic.band_indexes_selected,
                window=window,
                out_shape=(mosaic.num_bands, size, size),
                resampling=Resampling.bilinear,
            )
            return torch.from_numpy(image.astype(np.float32))
    return None


def test_resized_views_approximate_a_direct_read_at_their_resolution(
    shipped_pairs: GeoTiffPairs,
) -> None:
    size = 64
    sampler = PairedWindowSampler(
        shipped_pairs, size=size, length=8, scale=(0.6, 1.6), generator=seeded(8)
    )
    # Files off the mosaic grid are placed with up to half a pixel of shift by
    # rasterio.merge (see assert_overlap_identical): a looser match.
    least_correlation, most_error = (
        (0.98, 0.05) if on_the_mosaic_grid(shipped_pairs) else (0.97, 0.15)
    )
    compared = 0
    for pair in sampler:
        sample = shipped_pairs[pair]
        for k, window in ((1, pair.view1), (2, pair.view2)):
            direct = file_read(shipped_pairs, sample[f'transform{k}'], size)
            if window.width == size or direct is None:
                continue
            view = sample[f'image{k}']
            interior = _interior(shipped_pairs, direct)
            assert interior.mean() > 0.5
            a, b = view[:, interior].numpy(), direct[:, interior].numpy()
            if b.std() < 2:
                # A flat patch (a few uint8 levels): its correlation measures
                # rounding, not resampling.
                continue
            compared += 1
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > least_correlation
            assert np.abs(a - b).mean() < most_error * b.std()
    assert compared >= 5


def test_workers_do_not_share_file_handles_opened_before_they_start(
    make_raster: RasterWriter,
) -> None:
    """Reads in the main process (statistics, a first pair) open the files before
    the DataLoader forks its workers: a handle shared by the workers corrupts
    their reads (interleaved seeks), so each process must open its own."""
    # Noise compresses badly: tiles GDAL must really read in the workers.
    noise = np.random.default_rng(0).integers(0, 10_000, (2, 2048, 2048), 'uint16')
    path = make_raster(
        'noise.tif',
        noise,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress='deflate',
    )
    mosaic = GeoTiffPairs(path)

    def pairs() -> PairedWindowSampler:
        return PairedWindowSampler(mosaic, size=128, length=160, generator=seeded(0))

    mosaic[next(iter(pairs()))]  # opens the file in this process
    batches = list(DataLoader(mosaic, batch_size=8, sampler=pairs(), num_workers=2))
    for i, pair in enumerate(pairs()):
        expected = mosaic[pair]
        assert torch.equal(batches[i // 8]['image1'][i % 8], expected['image1'])
        assert torch.equal(batches[i // 8]['image2'][i % 8], expected['image2'])


def test_regions_are_never_centred_on_nodata(make_raster: RasterWriter) -> None:
    """Real imagery with nodata (-9999) stripes: a fifth of every view, so the
    sampler's regions often fall on them; the reader moves those onto data."""
    with rasterio.open(LANDSAT8) as src:
        image = src.read().astype(np.int16)
    image[:, :, ::5] = -9999
    unions = GeoTiffUnions(make_raster('striped.tif', image, nodata=-9999))
    sampler = PairedWindowSampler(
        unions, size=48, length=32, max_nodata=0.3, generator=seeded(3)
    )
    pairs = list(sampler)
    moved = 0
    for pair, sample in zip(pairs, unions.read_unions(pairs), strict=True):
        valid = unions.valid_mask(sample['union'])
        c0, r0 = pair.union.col_off, pair.union.row_off
        for drawn, region in zip(pair.regions, sample['regions'], strict=True):
            # The region read, in pixels of the mosaic grid.
            box = ground_to_pixel_boxes(region[None].numpy(), unions.grid.affine)[0]
            x1, y1, x2, y2 = (round(v) for v in box)
            assert valid[(y1 + y2) // 2 - r0, (x1 + x2) // 2 - c0]
            # Moved, and shrunk only where the overlap left no other way.
            assert 0 < x2 - x1 <= drawn[2] - drawn[0]
            assert 0 < y2 - y1 <= drawn[3] - drawn[1]
            ox1, oy1, ox2, oy2 = pair.overlap
            assert ox1 <= x1 and x2 <= ox2 and oy1 <= y1 and y2 <= oy2
            moved += (x1, y1) != drawn[:2]
    assert moved > 10  # the stripes were hit, and handled
