"""PairedWindowSampler: where pairs are drawn, on the committed mosaics."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from conftest import (
    QUADRANTS,
    RGBN_SUBTILES,
    S2_TILE_A,
    S2_TILE_B,
    RasterWriter,
    direct_read,
)
from rasterio.windows import Window

from glcgeo.datasets import GeoTiffMosaic
from glcgeo.errors import GlcgeoError
from glcgeo.pairs import GeoTiffPairs, WindowPair
from glcgeo.samplers import PairedWindowSampler, TileSampler


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair_key(pair: WindowPair) -> tuple:
    """A pair as plain numbers, for comparing streams of pairs."""
    windows = tuple(
        (int(w.col_off), int(w.row_off), int(w.width), int(w.height))
        for w in (pair.view1, pair.view2, pair.union)
    )
    return windows, pair.overlap, pair.regions


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
    mosaic = GeoTiffPairs(files)
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
        {'regions': 0},  # GLCNet's local matching needs regions
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


def test_non_square_pixels_place_windows_on_their_own_rows(
    make_raster: RasterWriter,
) -> None:
    """10 m columns, 40 m rows, data in the top half only: the sampler finds the
    rows of its coverage cells with the y resolution, the columns with the x one."""
    array = np.zeros((1, 100, 200), 'uint16')
    array[:, :50] = 7
    path = make_raster(
        'non_square.tif',
        array,
        transform=Affine(10.0, 0.0, 500_000.0, 0.0, -40.0, 4_170_000.0),
        nodata=0,
    )
    mosaic = GeoTiffPairs(path)
    assert mosaic.res == (10.0, 40.0)
    sampler = PairedWindowSampler(
        mosaic, size=16, length=40, scale=(1.0, 1.0), generator=seeded(0)
    )
    assert sampler.valid_fraction((0, 10, 16, 26)) == 1.0
    assert sampler.valid_fraction((0, 60, 16, 76)) == 0.0
    assert sampler.valid_fraction((100, 42, 116, 58)) == 0.5
    for pair in sampler:
        sample = mosaic.read_union(pair)
        assert sample['valid1'] >= 0.9 and sample['valid2'] >= 0.9


@pytest.mark.parametrize('scale', [(1.0, 1.0), (0.7, 1.15)])
def test_pairs_stay_inside_a_region_of_interest(
    quadrant_mosaic: GeoTiffMosaic, scale: tuple[float, float]
) -> None:
    x, y, _ = quadrant_mosaic.bounds
    width, height = x.stop - x.start, y.stop - y.start
    # An L-shaped region in the middle of the mosaic, in its CRS.
    roi = shapely.union(
        shapely.box(
            x.start + 0.2 * width, y.start + 0.2 * height,
            x.start + 0.5 * width, y.start + 0.8 * height,
        ),
        shapely.box(
            x.start + 0.2 * width, y.start + 0.2 * height,
            x.start + 0.8 * width, y.start + 0.5 * height,
        ),
    )  # fmt: skip
    sampler = PairedWindowSampler(
        quadrant_mosaic, size=32, length=100, scale=scale, roi=roi
    )
    grid = quadrant_mosaic.grid
    for pair in sampler:
        for view in (pair.view1, pair.view2):
            assert roi.covers(shapely.box(*grid.window_bounds(view)))
    outside = shapely.box(x.start, y.start, x.start + 10, y.start + 10)
    with pytest.raises(GlcgeoError, match='region of interest is nodata'):
        PairedWindowSampler(quadrant_mosaic, size=32, roi=outside)


def _tile_queries(mosaic: GeoTiffMosaic, size: int = 32) -> list[tuple[slice, slice]]:
    """The queries of the mosaic's whole size-pixel tiles, row by row."""
    grid = mosaic.grid
    x, y, _ = mosaic.bounds
    columns = int((x.stop - x.start) / grid.res[0]) // size
    rows = int((y.stop - y.start) / grid.res[1]) // size
    queries = []
    for row in range(rows):
        for col in range(columns):
            xmin, ymin, xmax, ymax = grid.window_bounds(
                Window(col * size, row * size, size, size)
            )
            queries.append(
                (slice(xmin, xmax, grid.res[0]), slice(ymin, ymax, grid.res[1]))
            )
    return queries


def test_tile_sampler_shows_every_tile_equally_often(s2_mosaic: GeoTiffMosaic) -> None:
    queries = _tile_queries(s2_mosaic)[:3]
    drawn = list(TileSampler(s2_mosaic, queries, length=7, generator=seeded(0)))
    assert len(drawn) == 7
    assert set(drawn[:3]) == set(drawn[3:6]) == set(queries)
    assert list(TileSampler(s2_mosaic, queries)) == queries
    assert TileSampler(s2_mosaic, queries).strategy == 'sequential'


def test_tiles_stay_inside_a_region_of_interest(s2_mosaic: GeoTiffMosaic) -> None:
    queries = _tile_queries(s2_mosaic)
    x, y, _ = s2_mosaic.bounds
    roi = shapely.box(x.start + 1000, y.start + 2000, x.start + 3500, y.start + 4100)
    sampler = TileSampler(s2_mosaic, queries, roi=roi)
    inside = list(sampler)
    assert 0 < len(inside) == len(sampler) < len(queries)
    for xs, ys in inside:
        assert roi.covers(shapely.box(xs.start, ys.start, xs.stop, ys.stop))
    # Every tile inside the region is kept.
    assert len(inside) == sum(
        roi.covers(shapely.box(q[0].start, q[1].start, q[0].stop, q[1].stop))
        for q in queries
    )
    drawn = list(TileSampler(s2_mosaic, queries, length=50, roi=roi))
    assert len(drawn) == 50 and set(drawn) <= set(inside)
