"""PairedWindowSampler + GeoTiffMosaic.read_pair on the committed mosaics."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from conftest import (
    OFF_GRID_ORIGIN,
    QUADRANTS,
    RGBN_SUBTILES,
    S2_TILE_A,
    S2_TILE_B,
    RasterWriter,
)
from rasterio.enums import Resampling
from rasterio.windows import Window
from torch import Tensor
from torch.utils.data import DataLoader

from glcgeo.datasets import GeoTiffMosaic
from glcgeo.errors import GlcgeoError
from glcgeo.geometry import ground_to_pixel_boxes
from glcgeo.samplers import PairedWindowSampler, WindowPair


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair_key(pair: WindowPair) -> tuple:
    """A pair as plain numbers, for comparing streams of pairs."""
    windows = tuple(
        (int(w.col_off), int(w.row_off), int(w.width), int(w.height))
        for w in (pair.view1, pair.view2, pair.union)
    )
    return windows, pair.overlap, pair.regions


def view_slice(window: Window, box: tuple[int, int, int, int]) -> tuple:
    """Index of a mosaic pixel box inside an un-resized view of *window*."""
    col, row = int(window.col_off), int(window.row_off)
    return (
        slice(None),
        slice(box[1] - row, box[3] - row),
        slice(box[0] - col, box[2] - col),
    )


def direct_read(mosaic: GeoTiffMosaic, transform: Tensor, size: int) -> Tensor:
    """An independent TorchGeo read of a view's ground window at its resolution."""
    a, _, c, _, e, f = transform.tolist()
    return mosaic[c : c + a * size : a, f + e * size : f : -e]['image']


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


def assert_overlap_identical(mosaic: GeoTiffMosaic, seed: int) -> None:
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
        assert torch.equal(first, second)
        assert mosaic.valid_mask(first).float().mean() > 0.8
        for k in (1, 2):
            view = sample[f'image{k}']
            direct = direct_read(mosaic, sample[f'transform{k}'], size)
            if aligned:
                # rasterio.merge resamples by (bilinear) windows whose float
                # offsets differ by ~1e-9 px between reads: rare 1-DN flips.
                assert (view == direct).float().mean() > 0.99
            else:
                # Files off the grid are placed by rasterio.merge with a
                # read-dependent sub-pixel shift (up to half a pixel).
                assert np.corrcoef(view.ravel(), direct.ravel())[0, 1] > 0.97


def test_overlap_pixels_identical_in_both_views(shipped_mosaic: GeoTiffMosaic) -> None:
    assert_overlap_identical(shipped_mosaic, seed=1)


def test_overlap_pixels_identical_in_a_mixed_crs_mosaic(
    mixed_crs_quadrants: list[Path],
) -> None:
    with rasterio.open(QUADRANTS[0]) as src:
        crs, res = src.crs.to_wkt(), src.res
    mosaic = GeoTiffMosaic(mixed_crs_quadrants, crs=crs, res=res)
    assert_overlap_identical(mosaic, seed=2)


def test_overlap_fraction_and_scale_of_each_view_within_range(
    s2_mosaic: GeoTiffMosaic,
) -> None:
    size, overlap, scale = 64, (0.4, 0.7), (0.8, 1.25)
    sampler = PairedWindowSampler(
        s2_mosaic, size=size, length=200, overlap=overlap, scale=scale
    )
    fractions, scales = [], []
    for pair in sampler:
        views = (pair.view1, pair.view2)
        area = (pair.overlap[2] - pair.overlap[0]) * (pair.overlap[3] - pair.overlap[1])
        fractions += [area / (v.width * v.height) for v in views]
        scales += [v.width / size for v in views]
        assert all(v.width == v.height for v in views)
    assert overlap[0] <= min(fractions) and max(fractions) <= overlap[1]
    # Views are whole pixels: their scale is size * scale rounded.
    assert round(size * scale[0]) / size <= min(scales)
    assert max(scales) <= round(size * scale[1]) / size
    # The whole ranges are used, each view drawing its own scale.
    assert min(fractions) < 0.45 and max(fractions) > 0.65
    assert min(scales) < 0.85 and max(scales) > 1.2
    assert np.mean(np.not_equal(scales[0::2], scales[1::2])) > 0.8


@pytest.mark.parametrize('files', [QUADRANTS, RGBN_SUBTILES], ids=['quad', 'rgbn'])
def test_nodata_dominated_windows_are_never_emitted(files: list[Path]) -> None:
    mosaic = GeoTiffMosaic(files)
    size = 64
    # Windows drawn uniformly over the bounds are often mostly nodata here...
    rng = np.random.default_rng(0)
    grid = mosaic.grid
    x, y, _ = mosaic.bounds
    width = int((x.stop - x.start) / grid.res[0]) - size
    height = int((y.stop - y.start) / grid.res[1]) - size
    uniform = []
    for _ in range(40):
        col, row = int(rng.integers(0, width)), int(rng.integers(0, height))
        affine = grid.window_transform(Window(col, row, size, size), size)
        image = direct_read(mosaic, torch.tensor(affine[:6]), size)
        uniform.append(mosaic.valid_mask(image).float().mean().item())
    assert np.mean(np.less(uniform, 0.85)) > 0.15 and min(uniform) < 0.5
    # ...but not the sampler's: at most ~max_nodata, none with max_nodata=0.
    for max_nodata, least in ((0.1, 0.85), (0.0, 1.0)):
        sampler = PairedWindowSampler(
            mosaic, size=size, length=40, max_nodata=max_nodata, generator=seeded(4)
        )
        for pair in sampler:
            sample = mosaic[pair]
            assert sample['valid1'] >= least and sample['valid2'] >= least
            # The overlap too, read directly at the mosaic's resolution.
            xmin, ymax = grid.to_map(*pair.overlap[:2])
            xmax, ymin = grid.to_map(*pair.overlap[2:])
            overlap = mosaic.read_window(xmin, ymin, xmax, ymax)
            assert mosaic.valid_mask(overlap).float().mean() >= least


def test_all_nodata_input_is_a_clear_error(make_raster: RasterWriter) -> None:
    path = make_raster('empty.tif', np.zeros((3, 100, 100), 'uint8'), nodata=0)
    with pytest.raises(GlcgeoError, match='nodata') as info:
        PairedWindowSampler(GeoTiffMosaic(path), size=32)
    assert info.value.path == str(path) and '\n' not in str(info.value)


def test_too_little_valid_data_for_a_view_is_a_clear_error(
    make_raster: RasterWriter,
) -> None:
    # A 20 x 20 patch of data: valid cells exist, but no 64-pixel view fits on it.
    array = np.zeros((1, 200, 200), 'uint16')
    array[:, 90:110, 90:110] = 7
    path = make_raster('speck.tif', array, nodata=0)
    sampler = PairedWindowSampler(GeoTiffMosaic(path), size=64, max_tries=200)
    with pytest.raises(GlcgeoError, match='no window pair') as info:
        next(iter(sampler))
    assert info.value.path == str(path) and '\n' not in str(info.value)


def test_view_larger_than_the_mosaic_and_bad_ranges(s2_mosaic: GeoTiffMosaic) -> None:
    with pytest.raises(GlcgeoError, match='needs 1150 x 1150 px'):
        PairedWindowSampler(s2_mosaic, size=1000, scale=(1.0, 1.15))
    for kwargs in (
        {'overlap': (0.0, 1.0)},
        {'overlap': (0.8, 0.5)},
        {'scale': (0.0, 1.0)},
        {'max_nodata': 1.0},
        {'size': 0},
    ):
        with pytest.raises(ValueError):
            PairedWindowSampler(s2_mosaic, **kwargs)  # type: ignore[arg-type]


def _file_of(mosaic: GeoTiffMosaic, pair: WindowPair, bounds: list) -> int:
    """Index of the only file holding the first view's centre, -1 if several."""
    view = pair.view1
    x, y = mosaic.grid.to_map(
        view.col_off + view.width / 2, view.row_off + view.height / 2
    )
    inside = [
        i
        for i, b in enumerate(bounds)
        if b.left <= x < b.right and b.bottom <= y < b.top
    ]
    return inside[0] if len(inside) == 1 else -1


def test_pairs_spread_over_files_in_proportion_to_their_data(
    quadrant_mosaic: GeoTiffMosaic,
) -> None:
    bounds, areas = [], []
    for path in QUADRANTS:
        with rasterio.open(path) as src:
            bounds.append(src.bounds)
            areas.append((src.dataset_mask() > 0).sum())
    sampler = PairedWindowSampler(quadrant_mosaic, size=64, length=400)
    files = [_file_of(quadrant_mosaic, pair, bounds) for pair in sampler]
    shares = np.bincount(np.array(files) + 1, minlength=5)[1:] / len(files)
    np.testing.assert_allclose(shares, np.array(areas) / sum(areas), atol=0.06)
    # Every batch of 16 consecutive pairs mixes quadrants (no one-tile batches).
    assert min(len(set(files[i : i + 16])) for i in range(0, 400, 16)) >= 3


def test_pairs_come_from_both_sentinel2_tiles(s2_mosaic: GeoTiffMosaic) -> None:
    bounds = []
    for path in (S2_TILE_A, S2_TILE_B):
        with rasterio.open(path) as src:
            bounds.append(src.bounds)
    sampler = PairedWindowSampler(s2_mosaic, size=64, length=300)
    files = np.array([_file_of(s2_mosaic, pair, bounds) for pair in sampler])
    only_a, only_b = (files == 0).sum(), (files == 1).sum()
    # The tiles have equal areas; about a tenth of centres fall in both.
    assert 0.4 < only_a / (only_a + only_b) < 0.6
    assert (files == -1).mean() < 0.25


def test_same_seed_same_pairs_other_seed_other_pairs(
    quadrant_mosaic: GeoTiffMosaic,
) -> None:
    def epochs(seed: int) -> list[list[tuple]]:
        sampler = PairedWindowSampler(
            quadrant_mosaic, size=64, length=10, generator=seeded(seed)
        )
        return [[pair_key(p) for p in sampler] for _ in range(2)]

    first, again, other = epochs(5), epochs(5), epochs(6)
    assert first == again
    assert first[0] != first[1]  # each epoch draws new pairs
    assert not set(first[0]) & set(other[0])


def test_ranks_draw_disjoint_shares_of_the_one_process_stream(
    quadrant_mosaic: GeoTiffMosaic,
) -> None:
    def stream(**ranks: int) -> list[tuple]:
        sampler = PairedWindowSampler(
            quadrant_mosaic, size=64, length=25, generator=seeded(7), **ranks
        )
        pairs = [pair_key(p) for p in sampler]
        assert len(pairs) == len(sampler)
        return pairs

    single = stream()
    rank0 = stream(num_replicas=2, rank=0)
    rank1 = stream(num_replicas=2, rank=1)
    assert len(single) == 25 and len(rank0) == len(rank1) == 12
    assert not set(rank0) & set(rank1)
    interleaved = [p for both in zip(rank0, rank1, strict=True) for p in both]
    assert interleaved == single[:24]


def test_view_transforms_are_float64_exact_at_utm_northings(
    off_grid_s2_tile: Path,
) -> None:
    """Each view's transform, through DataLoader workers and collation, is the
    grid arithmetic in float64 (float32 would be decimetres off here)."""
    x0, y0 = OFF_GRID_ORIGIN
    mosaic = GeoTiffMosaic(off_grid_s2_tile)
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
    s2_mosaic: GeoTiffMosaic,
) -> None:
    def batches(workers: int) -> list[dict[str, Tensor]]:
        sampler = PairedWindowSampler(s2_mosaic, size=48, length=8, generator=seeded(9))
        loader = DataLoader(
            s2_mosaic, batch_size=4, sampler=sampler, num_workers=workers
        )
        return list(loader)

    for main, worker in zip(batches(0), batches(2), strict=True):
        assert main.keys() == worker.keys()
        for key in main:
            assert main[key].dtype == worker[key].dtype
            assert torch.equal(main[key], worker[key])


def test_regions_cover_the_same_ground_in_both_views(
    quadrant_mosaic: GeoTiffMosaic,
) -> None:
    size = 64
    same_scale = PairedWindowSampler(
        quadrant_mosaic, size=size, length=10, scale=(1.0, 1.0), region_size=12
    )
    for pair in same_scale:
        sample = quadrant_mosaic[pair]
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
    scaled = PairedWindowSampler(
        quadrant_mosaic, size=size, length=20, scale=(0.6, 1.6)
    )
    for pair in scaled:
        sample = quadrant_mosaic[pair]
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
    shipped_mosaic: GeoTiffMosaic,
) -> None:
    size = 64
    sampler = PairedWindowSampler(
        shipped_mosaic, size=size, length=8, scale=(0.6, 1.6), generator=seeded(8)
    )
    # Files off the mosaic grid are placed with up to half a pixel of shift by
    # rasterio.merge (see assert_overlap_identical): a looser match.
    least_correlation, most_error = (
        (0.98, 0.05) if on_the_mosaic_grid(shipped_mosaic) else (0.97, 0.15)
    )
    compared = 0
    for pair in sampler:
        sample = shipped_mosaic[pair]
        for k, window in ((1, pair.view1), (2, pair.view2)):
            direct = file_read(shipped_mosaic, sample[f'transform{k}'], size)
            if window.width == size or direct is None:
                continue
            compared += 1
            view = sample[f'image{k}']
            interior = _interior(shipped_mosaic, direct)
            assert interior.mean() > 0.5
            a, b = view[:, interior].numpy(), direct[:, interior].numpy()
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
    mosaic = GeoTiffMosaic(path)

    def pairs() -> PairedWindowSampler:
        return PairedWindowSampler(mosaic, size=128, length=160, generator=seeded(0))

    mosaic[next(iter(pairs()))]  # opens the file in this process
    batches = list(DataLoader(mosaic, batch_size=8, sampler=pairs(), num_workers=2))
    for i, pair in enumerate(pairs()):
        expected = mosaic[pair]
        assert torch.equal(batches[i // 8]['image1'][i % 8], expected['image1'])
        assert torch.equal(batches[i // 8]['image2'][i % 8], expected['image2'])
