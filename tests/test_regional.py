"""Regional mosaics: cost that grows with the data, never with the bounding box.

Far-apart files and many small files, generated small. Nothing here is timed:
the tests count what would grow with the empty extent (cells stored, areas
mask samples read, files opened) and check that it grows with the data only.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from conftest import write_raster
from rasterio.merge import merge
from rasterio.transform import from_origin
from rasterio.windows import Window

from glcgeo.coverage import CellBlock, SparseCoverage
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.geometry import PixelGrid
from glcgeo.pairs import GeoTiffPairs
from glcgeo.samplers import PairedWindowSampler
from glcgeo.stats import compute_band_stats

#: Top-left corner of the first generated file (m, EPSG:32618, 1 m pixels).
ORIGIN = (500_000.0, 4_200_000.0)


def textured(side: int, seed: int, nodata_frame: int = 0) -> np.ndarray:
    """A [3, side, side] uint16 image, 0 (nodata) in a frame of *nodata_frame* px."""
    rng = np.random.default_rng(seed)
    image = rng.integers(100, 4000, (3, side, side), dtype=np.uint16)
    if nodata_frame:
        image[:, :nodata_frame] = 0
        image[:, :, :nodata_frame] = 0
    return image


def far_apart(tmp: Path, distance: float, side: int = 64, frame: int = 0) -> list[Path]:
    """Two side x side files at 1 m, the second *distance* m east and south."""
    tmp.mkdir(exist_ok=True)
    paths = []
    for i in range(2):
        transform = from_origin(
            ORIGIN[0] + i * distance, ORIGIN[1] - i * distance, 1, 1
        )
        paths.append(
            write_raster(
                tmp / f'far{i}.tif',
                textured(side, i, frame),
                transform=transform,
                nodata=0 if frame else None,
            )
        )
    return paths


def tiles(tmp: Path, count: int, side: int, spacing: float) -> list[Path]:
    """*count* files of side x side at 1 m on a square layout, *spacing* m apart."""
    per_row = int(np.ceil(np.sqrt(count)))
    paths = []
    for i in range(count):
        row, col = divmod(i, per_row)
        transform = from_origin(
            ORIGIN[0] + col * spacing, ORIGIN[1] - row * spacing, 1, 1
        )
        paths.append(
            write_raster(tmp / f't{i:04d}.tif', textured(side, i), transform=transform)
        )
    return paths


class Opens:
    """Records the files rasterio opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = rasterio.open

        def counting(path: str, *args: object, **kwargs: object):
            self.paths.append(str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(rasterio, 'open', counting)


class MaskReads:
    """Counts the mask samples coverage reads from files."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cells = 0
        real = GeoTiffMosaic._file_mask

        def counting(mosaic: GeoTiffMosaic, handle: object, shape: tuple[int, int]):
            self.cells += shape[0] * shape[1]
            return real(mosaic, handle, shape)

        monkeypatch.setattr(GeoTiffMosaic, '_file_mask', counting)


@pytest.mark.parametrize('frame', [0, 8], ids=['all_valid', 'nodata_frame'])
def test_far_apart_files_cost_what_one_file_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frame: int
) -> None:
    near = far_apart(tmp_path / 'near', 0, frame=frame)[:1]
    far = far_apart(tmp_path / 'far', 50_000, frame=frame)
    counts = []
    for paths in (near, far):
        read = MaskReads(monkeypatch)
        mosaic = GeoTiffPairs(paths)
        sampler = PairedWindowSampler(mosaic, size=32, length=8)
        list(sampler)
        counts.append((len(sampler.coverage.keys), read.cells))
    (one_cells, one_read), (two_cells, two_read) = counts
    # The second mosaic's bounding box is ~600,000 times the first's; its
    # coverage holds the cells of two files (each file's cells differ by a row
    # and a column with how it falls on the cell grid), and reads two files'
    # masks.
    rows, cols = sampler.coverage.shape
    assert rows * cols > 100_000 * one_cells
    assert one_cells < two_cells <= 2.3 * one_cells
    assert sampler.coverage.nbytes <= 20 * two_cells + 8
    assert two_read == 2 * one_read
    if not frame:
        assert two_read == 0  # files valid everywhere are not even read


def test_pairs_and_statistics_of_far_apart_files_come_from_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = far_apart(tmp_path, 50_000, frame=4)
    mosaic = GeoTiffPairs(paths)
    sampler = PairedWindowSampler(mosaic, size=24, length=60, max_nodata=0.0)
    east = []
    for pair in sampler:
        sample = mosaic[pair]
        assert sample['valid1'] == sample['valid2'] == 1.0
        east.append(pair.view1.col_off > 25_000)
    assert 0.3 < np.mean(east) < 0.7
    read = MaskReads(monkeypatch)
    stats = compute_band_stats(mosaic, windows=8, window_size=16)
    # The two files' masks (at full resolution for cells of 2 px), not the
    # extent's.
    assert read.cells == 2 * 64 * 64
    # The statistics are those of the two files' valid pixels.
    values = np.concatenate(
        [rasterio.open(p).read().reshape(3, -1) for p in paths], axis=1
    ).astype(np.float64)
    values = values[:, (values > 0).all(axis=0)]
    np.testing.assert_allclose(stats.mean, values.mean(axis=1), rtol=0.05)


def test_many_files_index_opens_each_file_once_and_coverage_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = tiles(tmp_path, 200, side=16, spacing=100)
    opened = Opens(monkeypatch)
    mosaic = GeoTiffMosaic(tmp_path)
    assert sorted(opened.paths) == sorted(str(p) for p in paths)
    opened.paths.clear()
    coverage = mosaic.coverage(4.0)
    assert (
        not opened.paths
    )  # files valid everywhere: their footprints are their coverage
    # 200 files of 4 x 4 cells: the coverage holds 3,200 cells of the ~10^4 x 10^4
    # cell bounding box.
    assert len(coverage.keys) == 200 * 16
    assert np.all(coverage.fractions == 1.0)


def test_coverage_and_reads_share_one_nodata_rule(tmp_path: Path) -> None:
    """A pixel with one NaN band is nodata for the coverage as for a read."""
    image = np.ones((2, 16, 16), dtype=np.float32)
    image[0, :, :8] = np.nan  # the left half: NaN in the first band only
    image[:, :4, 8:] = -1.0  # a quarter of the right half: nodata in both bands
    mosaic = GeoTiffMosaic(write_raster(tmp_path / 'nan.tif', image, nodata=-1.0))
    valid = mosaic.valid_mask(
        mosaic.read_raw(*mosaic.grid.window_bounds(Window(0, 0, 16, 16)))
    )
    assert valid.float().mean() == 0.375
    coverage = mosaic.coverage(160.0)  # one cell
    assert coverage.fractions.tolist() == [0.375]


def test_views_cross_the_edges_of_touching_files(tmp_path: Path) -> None:
    """Nine touching 40-px files whose edges split coverage cells: the split cells
    are whole, so windows across file edges are drawn, even with no nodata
    allowed, and read as the files' pixels."""
    paths = tiles(tmp_path, 9, side=40, spacing=40)
    mosaic = GeoTiffPairs(paths)
    sampler = PairedWindowSampler(
        mosaic, size=30, length=40, scale=(0.9, 1.1), max_nodata=0.0
    )
    # Cells split by the files' edges (every 40 px, i.e. 11.85 cells) are
    # whole: only the mosaic's last row and column of cells are partly outside.
    rows, cols = sampler.coverage.cells()
    inner = (rows < rows.max()) & (cols < cols.max())
    assert np.all(sampler.coverage.fractions[inner] == 1.0)
    crossing = 0
    for pair in sampler:
        sample = mosaic.read_union(pair)
        assert sample['valid1'] == sample['valid2'] == 1.0
        window = pair.union
        crossing += (
            window.col_off // 40 != (window.col_off + window.width - 1) // 40
        ) or (window.row_off // 40 != (window.row_off + window.height - 1) // 40)
    assert crossing > 30


def test_sparse_box_means_equal_a_dense_integral_image() -> None:
    rng = np.random.default_rng(0)
    shape = (37, 53)
    dense = np.zeros(shape, np.float32)
    blocks = []
    for _ in range(12):
        rows, cols = rng.integers(1, 9, 2)
        row, col = rng.integers(0, shape[0] - rows), rng.integers(0, shape[1] - cols)
        fractions = rng.choice([0.0, 0.25, 0.5, 1.0], (rows, cols)).astype(np.float32)
        blocks.append(CellBlock(int(row), int(col), fractions))
        dense[row : row + rows, col : col + cols] += fractions
    dense = np.minimum(dense, 1.0)
    coverage = SparseCoverage.from_blocks(
        PixelGrid(0.0, 0.0, (1.0, 1.0)), shape, blocks
    )
    assert len(coverage.keys) == np.count_nonzero(dense)
    boxes = []
    for _ in range(200):
        c1, c2 = sorted(rng.choice(shape[1] + 1, 2, replace=False))
        r1, r2 = sorted(rng.choice(shape[0] + 1, 2, replace=False))
        boxes.append((c1, r1, c2, r2))
    expected = [dense[r1:r2, c1:c2].mean() for c1, r1, c2, r2 in boxes]
    np.testing.assert_allclose(coverage.box_means(np.array(boxes)), expected, rtol=1e-6)


def test_partial_cells_count_the_area_holding_data(tmp_path: Path) -> None:
    """A file covering half of its edge cells gives them 0.5, not 1: views there
    would be half outside the file."""
    path = write_raster(
        tmp_path / 'half.tif',
        textured(30, 0),
        transform=Affine(1.0, 0.0, ORIGIN[0], 0.0, -1.0, ORIGIN[1]),
    )
    far = write_raster(
        tmp_path / 'far.tif',
        textured(40, 1),
        transform=from_origin(ORIGIN[0] + 1000, ORIGIN[1] - 1000, 1, 1),
    )
    coverage = GeoTiffMosaic([path, far]).coverage(4.0)
    rows, cols = coverage.cells()
    first = (rows < 8) & (cols < 8)
    dense = np.zeros((8, 8), np.float32)
    dense[rows[first], cols[first]] = coverage.fractions[first]
    # 30 px = 7 whole cells of 4 px and half of the eighth.
    np.testing.assert_array_equal(dense[:7, :7], 1.0)
    np.testing.assert_array_equal(dense[7, :7], 0.5)
    np.testing.assert_array_equal(dense[:7, 7], 0.5)
    assert dense[7, 7] == 0.25


def test_first_batch_of_a_far_apart_mosaic_reads_only_files(tmp_path: Path) -> None:
    paths = far_apart(tmp_path, 50_000)
    mosaic = GeoTiffPairs(paths)
    pair = next(iter(PairedWindowSampler(mosaic, size=32, length=1)))
    assert mosaic[pair]['image1'].shape == (3, 32, 32)
    # A read far from both files is an error, not a huge array of nodata.
    with pytest.raises(IndexError):
        mosaic.read_raw(*mosaic.grid.window_bounds(Window(20_000, 20_000, 8, 8)))
    torch.testing.assert_close(
        mosaic.read_raw(*mosaic.grid.window_bounds(Window(0, 0, 64, 64))),
        torch.from_numpy(rasterio.open(paths[0]).read()),
    )


@pytest.mark.parametrize('frame', [0, 3], ids=['all_valid', 'nodata_frame'])
def test_reads_across_touching_files_are_rasterio_merges(
    tmp_path: Path, frame: int
) -> None:
    """Windows over the corners of four touching files (each read plainly into
    its part of the window) are what rasterio.merge composites."""
    paths = []
    for i, (dx, dy) in enumerate(((0, 0), (40, 0), (0, 40), (40, 40))):
        transform = from_origin(ORIGIN[0] + dx, ORIGIN[1] - dy, 1, 1)
        image = textured(40, i, frame)
        nodata = 0 if frame else None
        paths.append(
            write_raster(
                tmp_path / f'q{i}.tif', image, transform=transform, nodata=nodata
            )
        )
    mosaic = GeoTiffMosaic(paths)
    rng = np.random.default_rng(0)
    for _ in range(10):
        col, row = (int(v) for v in rng.integers(10, 40, 2))
        width, height = (int(v) for v in rng.integers(5, 40, 2))
        box = mosaic.grid.window_bounds(Window(col, row, width, height))
        expected, _ = merge([str(p) for p in paths], bounds=box, res=(1.0, 1.0))
        np.testing.assert_array_equal(mosaic.read_raw(*box).numpy(), expected)


def test_index_and_coverage_are_built_once_per_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second process of the run (a DDP rank, a resumed run) reads the index
    and coverage from the run's cache instead of opening every file; a changed
    file is indexed anew."""
    folder = tmp_path / 'tiles'
    folder.mkdir()
    paths = far_apart(folder, 1000, frame=2)
    cache = tmp_path / 'run' / 'index'
    first = GeoTiffPairs(folder, index_cache=cache)
    sampler = PairedWindowSampler(first, size=16, length=4)
    assert len(list(cache.iterdir())) == 2  # the index and one coverage

    opened = Opens(monkeypatch)
    second = GeoTiffPairs(folder, index_cache=cache)
    again = PairedWindowSampler(second, size=16, length=4)
    assert not opened.paths
    np.testing.assert_array_equal(again.coverage.keys, sampler.coverage.keys)
    np.testing.assert_array_equal(again.coverage.fractions, sampler.coverage.fractions)
    assert second.index.geometry.equals(first.index.geometry)
    for pair in again:
        assert second.read_union(pair)['union'].shape[0] == 3

    # Rewriting a file (another size or time) makes another key.
    write_raster(paths[1], textured(32, 5), transform=from_origin(*ORIGIN, 1, 1))
    opened.paths.clear()
    third = GeoTiffPairs(folder, index_cache=cache)
    assert sorted(opened.paths) == sorted(str(p) for p in paths)
    assert third.bounds != second.bounds


def test_workers_receive_the_index_without_coverages_or_handles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mosaic = GeoTiffPairs(far_apart(tmp_path, 1000, frame=2))
    pair = next(iter(PairedWindowSampler(mosaic, size=16, length=1)))
    mosaic.read_union(pair)
    assert mosaic._coverages and len(mosaic._handles) == 1
    monkeypatch.setattr(rasterio, 'open', None)  # unpickling opens nothing
    copy = pickle.loads(pickle.dumps(mosaic))
    assert not copy._coverages and len(copy._handles) == 0
    assert copy.files == mosaic.files and copy.res == mosaic.res
