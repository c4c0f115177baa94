"""Per-band statistics by sampling: values, nodata, band selection, JSON round trip."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import QUADRANTS, S2_TILE_A, S2_TILE_B, S2_TILES, RasterWriter

from glcgeo.datasets import GeoTiffMosaic
from glcgeo.errors import GlcgeoError
from glcgeo.stats import BandStats, compute_band_stats


def exact_stats(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every pixel with data of the files, read whole."""
    pixels = []
    for path in paths:
        with rasterio.open(path) as src:
            values = src.read().reshape(src.count, -1).astype(np.float64)
            if src.nodata is not None:
                values = values[:, (values != src.nodata).any(axis=0)]
            pixels.append(values)
    data = np.concatenate(pixels, axis=1)
    return data.mean(axis=1), data.std(axis=1)


@pytest.mark.parametrize(
    ('paths', 'dtype'),
    [([S2_TILE_A, S2_TILE_B], 'uint16'), (QUADRANTS, 'uint8')],
    ids=['s2', 'quad'],
)
def test_sampled_statistics_match_the_files(paths: list[Path], dtype: str) -> None:
    """Sensible for uint8 and uint16: nodata frames and the gaps between tiles
    (zeros in files without nodata) stay out of the statistics."""
    mosaic = GeoTiffMosaic(paths)
    assert mosaic.source_dtype == dtype
    stats = compute_band_stats(mosaic)
    mean, std = exact_stats(paths)
    np.testing.assert_allclose(stats.mean, mean, rtol=0.06)
    np.testing.assert_allclose(stats.std, std, rtol=0.1)
    assert stats.bands == list(range(1, mosaic.num_bands + 1))
    assert stats.nodata == mosaic.file_nodata
    assert 0.5 * 64 * 128 * 128 < stats.pixels < 64 * 128 * 128
    assert stats.files == mosaic.files


def test_band_selection_and_seed(s2_mosaic: GeoTiffMosaic) -> None:
    def stats(mosaic: GeoTiffMosaic, seed: int) -> BandStats:
        return compute_band_stats(
            mosaic,
            windows=6,
            window_size=64,
            generator=torch.Generator().manual_seed(seed),
        )

    full = stats(s2_mosaic, 1)
    assert stats(s2_mosaic, 1) == full
    assert stats(s2_mosaic, 2).mean != full.mean
    # The same windows, bands picked and reordered.
    picked = stats(GeoTiffMosaic(S2_TILES, bands=['B08', 'B02']), 1)
    assert picked.bands == [4, 1]
    assert picked.mean == [full.mean[3], full.mean[0]]
    assert picked.std == [full.std[3], full.std[0]]


def test_json_round_trip_and_normalisation(
    s2_mosaic: GeoTiffMosaic, tmp_path: Path
) -> None:
    stats = compute_band_stats(s2_mosaic, windows=16, window_size=96)
    path = tmp_path / 'stats.json'
    stats.save(path)
    assert json.loads(path.read_text())['bands'] == [1, 2, 3, 4]
    assert BandStats.load(path) == stats
    assert os.listdir(tmp_path) == ['stats.json']  # nothing left beside it
    with rasterio.open(S2_TILE_A) as src:
        image = torch.from_numpy(src.read().astype(np.float32))
    normalised = BandStats.load(path).normalize(image)
    assert normalised.dtype == torch.float32
    mean = torch.tensor(stats.mean)[:, None, None]
    std = torch.tensor(stats.std)[:, None, None]
    torch.testing.assert_close(normalised, (image - mean) / std)


@pytest.mark.parametrize('dtype', ['int16', 'float32'])
def test_synthetic_dtypes_exclude_nodata(make_raster: RasterWriter, dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = rng.normal(-200, 50, (2, 100, 100)).astype(dtype)
    nodata = float('nan') if dtype == 'float32' else -32768
    array[:, :, :30] = nodata
    path = make_raster(f'{dtype}.tif', array, nodata=nodata)
    stats = compute_band_stats(GeoTiffMosaic(path), windows=8, window_size=48)
    assert np.isfinite(stats.mean).all()
    np.testing.assert_allclose(stats.mean, [-200, -200], atol=5)
    np.testing.assert_allclose(stats.std, [50, 50], rtol=0.1)


def test_constant_band_keeps_unit_std(make_raster: RasterWriter) -> None:
    array = np.full((2, 64, 64), 7, dtype='uint8')
    array[1] = np.arange(64, dtype='uint8')
    stats = compute_band_stats(GeoTiffMosaic(make_raster('flat.tif', array)), windows=2)
    assert stats.mean[0] == 7 and stats.std[0] == 1.0
    assert stats.std[1] > 10


def test_all_nodata_mosaic_is_a_clear_error(make_raster: RasterWriter) -> None:
    path = make_raster('empty.tif', np.zeros((1, 64, 64), 'uint16'), nodata=0)
    with pytest.raises(GlcgeoError, match='nodata') as info:
        compute_band_stats(GeoTiffMosaic(path))
    assert info.value.path == str(path)


def test_loading_bad_statistics_files(tmp_path: Path) -> None:
    with pytest.raises(GlcgeoError, match='no such statistics file'):
        BandStats.load(tmp_path / 'missing.json')
    for name, text in (('broken.json', '{"mean": [1'), ('other.json', '{"a": 1}')):
        (tmp_path / name).write_text(text)
        with pytest.raises(GlcgeoError, match='not glcgeo band statistics') as info:
            BandStats.load(tmp_path / name)
        assert info.value.path == str(tmp_path / name)
        assert '\n' not in str(info.value)


def test_window_larger_than_a_mosaic_of_partial_pixels(
    make_raster: RasterWriter,
) -> None:
    # 100 pixels of 10 m read at 15 m: 66.7 pixels wide, so 66 whole ones.
    array = np.arange(100 * 100, dtype='uint16').reshape(1, 100, 100)
    mosaic = GeoTiffMosaic(make_raster('small.tif', array), res=15.0)
    stats = compute_band_stats(mosaic, windows=2, window_size=128)
    assert stats.pixels == 2 * 66 * 66
