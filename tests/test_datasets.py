"""GeoTiffMosaic on the committed imagery: values, bands, dtypes, nodata, CRSs."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from conftest import (
    LANDSAT8,
    OFF_GRID_ORIGIN,
    QUADRANTS,
    RGB1_3857,
    RGBN,
    RGBN_DIR,
    S2_TILE_A,
    S2_TILE_B,
    S2_TILES,
    SYNTHETIC_TRANSFORM,
    RasterWriter,
)
from rasterio.transform import from_origin
from rasterio.windows import Window
from torch.utils.data import DataLoader

from glcgeo.datasets import GeoTiffMosaic, expand_paths
from glcgeo.errors import GlcgeoError


def read_slice(mosaic: GeoTiffMosaic, affine: Affine, width: int, height: int):
    """Read a north-up window of *width* x *height* pixels of the affine's size."""
    return mosaic[
        affine.c : affine.c + width * affine.a : affine.a,
        affine.f + height * affine.e : affine.f : -affine.e,
    ]


@pytest.mark.parametrize(
    'path', [S2_TILE_A, QUADRANTS[0], RGB1_3857, LANDSAT8, RGBN], ids=lambda p: p.name
)
def test_slice_is_the_files_pixels_with_float64_georeferencing(path: Path) -> None:
    window = Window(37, 21, 96, 80)
    with rasterio.open(path) as src:
        expected = src.read(window=window)
        affine = src.window_transform(window)
        count, dtype = src.count, src.dtypes[0]
    mosaic = GeoTiffMosaic(path)
    sample = read_slice(mosaic, affine, 96, 80)
    image = sample['image']
    assert image.dtype == torch.float32
    assert image.shape == (count, 80, 96) == expected.shape
    assert mosaic.num_bands == count and mosaic.source_dtype == dtype
    np.testing.assert_array_equal(image.numpy(), expected.astype(np.float32))
    assert sample['transform'].dtype == torch.float64
    assert sample['transform'].tolist() == list(affine[:6])
    assert sample['bounds'].dtype == torch.float64
    assert sample['bounds'].tolist() == [
        affine.c,
        affine.c + 96 * affine.a,
        affine.a,
        affine.f + 80 * affine.e,
        affine.f,
        -affine.e,
    ]


def test_slices_are_the_files_pixels_on_a_non_square_grid(
    quadrant_mosaic: GeoTiffMosaic,
) -> None:
    """300.038 x 300.042 m pixels: TorchGeo's merge (fractional windows, nearest)
    takes a neighbouring pixel in about half of these windows; glcgeo's reads
    at the mosaic's resolution are whole-pixel."""
    rng = np.random.default_rng(0)
    with rasterio.open(QUADRANTS[0]) as src:
        for _ in range(20):
            col, row = (int(v) for v in rng.integers(0, 300, size=2))
            window = Window(col, row, 100, 100)
            sample = read_slice(quadrant_mosaic, src.window_transform(window), 100, 100)
            expected = src.read(window=window).astype(np.float32)
            np.testing.assert_array_equal(sample['image'].numpy(), expected)


def test_overlapping_tiles_form_one_mosaic(s2_mosaic: GeoTiffMosaic) -> None:
    x, y, _ = s2_mosaic.bounds
    # Tile A's top-left corner to tile B's bottom-right corner.
    assert (x.start, x.stop, y.start, y.stop) == (438730, 449130, 4166860, 4176460)
    assert s2_mosaic.grid.x0 == 438730 and s2_mosaic.grid.y0 == 4176460
    # A window straddling both tiles: the left part is tile A's, the right tile B's.
    affine = from_origin(444530.0, 4171060.0, 10.0, 10.0)
    image = read_slice(s2_mosaic, affine, 120, 60)['image'].numpy()
    with rasterio.open(S2_TILE_A) as a, rasterio.open(S2_TILE_B) as b:
        left = a.read(window=Window(580, 540, 60, 60))
        right = b.read(window=Window(240, 220, 60, 60))
    np.testing.assert_array_equal(image[:, :, :60], left)
    np.testing.assert_array_equal(image[:, :, 60:], right)


def test_band_selection_by_index_or_name_in_any_order(
    s2_mosaic: GeoTiffMosaic,
) -> None:
    affine = from_origin(440000.0, 4175000.0, 10.0, 10.0)
    full = read_slice(s2_mosaic, affine, 32, 32)['image']
    by_index = GeoTiffMosaic(S2_TILES, bands=[4, 3, 1])
    by_name = GeoTiffMosaic(S2_TILES, bands=['B08', 'B04', 'B02'])
    repeated = GeoTiffMosaic(S2_TILES, bands=['2', 2])
    for mosaic in (by_index, by_name):
        assert mosaic.band_indexes_selected == [4, 3, 1] and mosaic.num_bands == 3
        torch.testing.assert_close(
            read_slice(mosaic, affine, 32, 32)['image'], full[[3, 2, 0]]
        )
    torch.testing.assert_close(
        read_slice(repeated, affine, 32, 32)['image'], full[[1, 1]]
    )


@pytest.mark.parametrize('dtype', ['int16', 'float32'])
def test_synthetic_dtypes_keep_raw_values_and_nodata(
    make_raster: RasterWriter, dtype: str
) -> None:
    rng = np.random.default_rng(0)
    array = rng.normal(0, 1000, (2, 40, 50)).astype(dtype)
    if dtype == 'int16':
        nodata: float = -32768
        array[:, :10, :] = nodata
        array[0, 30:, :] = nodata  # one band nodata only: still data
    else:
        nodata = float('nan')
        array[:, :10, :] = np.nan
        array[0, 30:, :5] = np.nan  # NaN in any band: no data
    path = make_raster(f'{dtype}.tif', array, nodata=nodata)
    mosaic = GeoTiffMosaic(path)
    assert mosaic.source_dtype == dtype
    assert mosaic.file_nodata is not None
    image = read_slice(mosaic, SYNTHETIC_TRANSFORM, 50, 40)['image']
    np.testing.assert_array_equal(image.numpy(), array.astype(np.float32))
    valid = mosaic.valid_mask(image).numpy()
    expected = np.ones((40, 50), dtype=bool)
    expected[:10] = False
    if dtype == 'float32':
        expected[30:, :5] = False
    np.testing.assert_array_equal(valid, expected)


def test_nodata_from_the_file_or_overridden(quadrant_mosaic: GeoTiffMosaic) -> None:
    # The quadrants carry nodata=0 around the scene.
    assert quadrant_mosaic.file_nodata == 0
    x, y, _ = quadrant_mosaic.bounds
    res = quadrant_mosaic.res
    corner = quadrant_mosaic[
        x.start : x.start + 40 * res[0] : res[0], y.stop - 40 * res[1] : y.stop : res[1]
    ]['image']
    assert not quadrant_mosaic.valid_mask(corner)[:5, :5].any()
    # rgbn.tif has no nodata tag: every pixel is data unless nodata is given.
    plain = GeoTiffMosaic(RGBN, bands=[1])
    with rasterio.open(RGBN) as src:
        array = src.read(1)[None]
        affine = src.transform
    height, width = array.shape[1:]
    value = int(array[0, 100, 100])
    overridden = GeoTiffMosaic(RGBN, bands=[1], nodata=value)
    assert plain.file_nodata is None and overridden.file_nodata == value
    image = read_slice(plain, affine, width, height)['image']
    np.testing.assert_array_equal(image.numpy(), array)
    assert plain.valid_mask(image).all()
    # The overridden value is nodata, and reads keep the pixels' values.
    image = read_slice(overridden, affine, width, height)['image']
    np.testing.assert_array_equal(image.numpy(), array)
    nodata = overridden.valid_mask(image).numpy() == 0
    assert 0 < nodata.mean() < 0.1
    np.testing.assert_array_equal(nodata, array[0] == value)


def test_any_band_count(shipped_mosaic: GeoTiffMosaic) -> None:
    x, y, _ = shipped_mosaic.bounds
    xres, yres = shipped_mosaic.res
    sample = shipped_mosaic[
        x.start : x.start + 16 * xres : xres, y.stop - 16 * yres : y.stop : yres
    ]
    assert sample['image'].shape == (shipped_mosaic.num_bands, 16, 16)
    assert shipped_mosaic.num_bands == len(shipped_mosaic.all_bands)


def test_mixed_crs_mosaic_is_reprojected_onto_one_grid(
    mixed_crs_quadrants: list[Path],
) -> None:
    """rgb3 warped to EPSG:3857 comes back onto the custom-WKT grid of rgb1/rgb2."""
    with rasterio.open(QUADRANTS[0]) as src:
        wkt_crs = src.crs
        res = src.res
    with rasterio.open(QUADRANTS[2]) as src:
        original = src.read().astype(np.float32)
        affine = src.transform
    mosaic = GeoTiffMosaic(mixed_crs_quadrants, crs=wkt_crs.to_wkt(), res=res)
    assert mosaic.crs == GeoTiffMosaic(QUADRANTS[0]).crs
    assert mosaic.crs.to_epsg() is None  # still the custom WKT
    assert len(mosaic) == 3
    # Inside rgb3: the warped file lands where the original is (a one-pixel shift
    # drops the correlation to ~0.8).
    window = Window(100, 50, 128, 128)
    image = read_slice(mosaic, rasterio.windows.transform(window, affine), 128, 128)
    expected = original[:, 50:178, 100:228]
    assert np.corrcoef(image['image'].numpy().ravel(), expected.ravel())[0, 1] > 0.9
    # Inside rgb1: pixels are the file's own, unresampled.
    with rasterio.open(QUADRANTS[0]) as src:
        window = Window(200, 30, 64, 64)
        rgb1 = src.read(window=window)
        rgb1_affine = src.window_transform(window)
    np.testing.assert_array_equal(
        read_slice(mosaic, rgb1_affine, 64, 64)['image'].numpy(), rgb1
    )


def test_target_crs_and_resolution_are_selectable(
    mixed_crs_quadrants: list[Path],
) -> None:
    mosaic = GeoTiffMosaic(mixed_crs_quadrants, crs='EPSG:32618', res=600.0)
    assert mosaic.crs.to_epsg() == 32618 and mosaic.res == (600.0, 600.0)
    x, y, _ = mosaic.bounds
    xmid, ymid = (x.start + x.stop) / 2, (y.start + y.stop) / 2
    sample = mosaic[xmid : xmid + 600 * 64 : 600, ymid - 600 * 64 : ymid : 600]
    assert sample['image'].shape == (3, 64, 64)
    assert mosaic.valid_mask(sample['image']).any()


def test_coarser_resolution_approximates_block_means(s2_mosaic: GeoTiffMosaic) -> None:
    coarse = GeoTiffMosaic(S2_TILES, res=20.0)
    assert coarse.res == (20.0, 20.0)
    affine = from_origin(440000.0, 4175000.0, 10.0, 10.0)
    fine = read_slice(s2_mosaic, affine, 128, 128)['image']
    image = read_slice(coarse, affine @ Affine.scale(2), 64, 64)['image']
    assert image.shape == (4, 64, 64)
    blocks = fine.reshape(4, 64, 2, 64, 2).mean(dim=(2, 4))
    assert np.corrcoef(image.ravel(), blocks.ravel())[0, 1] > 0.98


def test_transforms_stay_float64_at_utm_northings(off_grid_s2_tile: Path) -> None:
    """A grid off the metre grid at northing ~4.17e6: float32 (TorchGeo's
    transform) loses decimetres; glcgeo's float64 transform is exact."""
    x0, y0 = OFF_GRID_ORIGIN
    mosaic = GeoTiffMosaic(off_grid_s2_tile)
    affine = from_origin(x0, y0, 10, 10) @ Affine.translation(17, 33)
    sample = read_slice(mosaic, affine, 64, 64)
    transform = sample['transform']
    expected = [10.0, 0.0, x0 + 17 * 10.0, 0.0, -10.0, y0 - 33 * 10.0]
    assert np.abs(transform.numpy() - expected).max() < 1e-6
    assert np.abs(transform.float().double().numpy() - expected).max() > 0.1
    with rasterio.open(S2_TILE_A) as src:
        expected_image = src.read(window=Window(17, 33, 64, 64))
    np.testing.assert_array_equal(sample['image'].numpy(), expected_image)
    # The DataLoader's collation keeps float64.
    batch = next(iter(DataLoader([sample, sample], batch_size=2)))
    assert batch['transform'].dtype == torch.float64
    assert batch['bounds'].dtype == torch.float64


def test_expand_paths_takes_files_folders_and_globs(tmp_path: Path) -> None:
    files = expand_paths([S2_TILES, str(QUADRANTS[0].parent / 'rgb[12].tif'), RGBN])
    assert files == sorted(
        [
            str(S2_TILE_A),
            str(S2_TILE_B),
            str(QUADRANTS[0]),
            str(QUADRANTS[1]),
            str(RGBN),
        ]
    )
    nested = tmp_path / 'a' / 'b'
    nested.mkdir(parents=True)
    shutil.copy(RGBN, nested / 'x.tif')
    (tmp_path / 'notes.txt').write_text('not collected')
    assert expand_paths(tmp_path) == [str(nested / 'x.tif')]
    assert expand_paths([RGBN, str(RGBN_DIR / 'rgbn.tif')]) == [str(RGBN)]


def _bad_inputs(tmp_path: Path, make_raster: RasterWriter) -> dict[str, tuple]:
    """(paths, GeoTiffMosaic keyword arguments, the file the error must name)."""
    text = tmp_path / 'notes.tif'
    text.write_text('not a raster')
    empty = tmp_path / 'empty'
    empty.mkdir()
    values = np.ones((2, 8, 8), dtype='uint8')
    no_crs = make_raster('no_crs.tif', values, crs=None)
    no_transform = make_raster(
        'no_transform.tif', values, crs='EPSG:32618', transform=Affine.identity()
    )
    missing = tmp_path / 'missing.tif'
    return {
        'missing file': ([missing], {}, missing),
        'not a raster': ([text], {}, text),
        'no CRS': ([no_crs], {}, no_crs),
        'no geotransform': ([no_transform], {}, no_transform),
        'band index too high': ([LANDSAT8], {'bands': [1, 8]}, LANDSAT8),
        'band index zero': ([LANDSAT8], {'bands': [0]}, LANDSAT8),
        'unknown band name': ([LANDSAT8], {'bands': ['B9']}, LANDSAT8),
        'empty folder': ([empty], {}, empty),
        'glob matches nothing': ([tmp_path / '*.jp2'], {}, tmp_path / '*.jp2'),
        'different band counts': ([LANDSAT8, RGB1_3857], {}, RGB1_3857),
    }


BAD_INPUTS = [
    'missing file',
    'not a raster',
    'no CRS',
    'no geotransform',
    'band index too high',
    'band index zero',
    'unknown band name',
    'empty folder',
    'glob matches nothing',
    'different band counts',
]


@pytest.mark.parametrize('case', BAD_INPUTS)
def test_bad_input_is_one_clear_line_naming_the_file(
    tmp_path: Path, make_raster: RasterWriter, case: str
) -> None:
    paths, kwargs, culprit = _bad_inputs(tmp_path, make_raster)[case]
    with pytest.raises(GlcgeoError) as info:
        GeoTiffMosaic(paths, **kwargs)
    message = str(info.value)
    assert '\n' not in message
    assert info.value.path == str(culprit)
    assert message.startswith(f'{culprit}: ')


def test_a_file_without_crs_is_usable_when_one_is_given(
    make_raster: RasterWriter,
) -> None:
    values = np.arange(2 * 8 * 8, dtype='uint16').reshape(2, 8, 8)
    mosaic = GeoTiffMosaic(
        make_raster('no_crs.tif', values, crs=None), crs='EPSG:32618'
    )
    assert mosaic.crs.to_epsg() == 32618
    image = read_slice(mosaic, SYNTHETIC_TRANSFORM, 8, 8)['image']
    np.testing.assert_array_equal(image.numpy(), values)


def test_read_window_composites_files_first_on_top(
    quadrant_mosaic: GeoTiffMosaic, s2_mosaic: GeoTiffMosaic
) -> None:
    """Across rgb1 | rgb2 (one shared column), pixels are the files' own, the
    first file's where it has data; on the Sentinel-2 tiles, the TorchGeo read's."""
    grid = quadrant_mosaic.grid
    xmin, ymax = grid.to_map(380, 100)
    xmax, ymin = grid.to_map(420, 140)
    image = quadrant_mosaic.read_window(xmin, ymin, xmax, ymax).numpy()
    with rasterio.open(QUADRANTS[0]) as one, rasterio.open(QUADRANTS[1]) as two:
        expected = np.zeros((3, 40, 40), dtype='uint8')
        expected[:, :, :20] = one.read(window=Window(380, 100, 20, 40))
        second = two.read(window=Window(0, 100, 21, 40))
        expected[:, :, 19:] = np.where(
            expected[:, :, 19:] == 0, second, expected[:, :, 19:]
        )
    np.testing.assert_array_equal(image, expected)
    x, y, _ = s2_mosaic.bounds
    box = (x.start + 3000, y.start + 2000, x.start + 6000, y.start + 4500)
    torchgeo = s2_mosaic[box[0] : box[2] : 10.0, box[1] : box[3] : 10.0]['image']
    assert torch.equal(s2_mosaic.read_window(*box), torchgeo)


def test_touching_tiles_read_as_the_scene_they_were_cut_from(tmp_path: Path) -> None:
    """A Sentinel-2 tile cut into four touching files: windows across their
    edges read the tile's own pixels."""
    with rasterio.open(S2_TILE_A) as src:
        scene, profile = src.read(), src.profile
    for row, col in ((0, 0), (0, 1), (1, 0), (1, 1)):
        window = Window(col * 320, row * 320, 320, 320)
        with rasterio.open(
            tmp_path / f'cut_{row}{col}.tif',
            'w',
            **{
                **profile,
                'width': 320,
                'height': 320,
                'transform': rasterio.windows.transform(window, profile['transform']),
            },
        ) as dst:
            dst.write(
                scene[:, row * 320 : row * 320 + 320, col * 320 : col * 320 + 320]
            )
    mosaic = GeoTiffMosaic(tmp_path)
    for window in (Window(250, 270, 150, 120), Window(300, 0, 40, 640)):
        raw = mosaic.read_raw(*mosaic.grid.window_bounds(window))
        assert raw.dtype == torch.uint16
        np.testing.assert_array_equal(
            raw.numpy(),
            scene[:, window.row_off : window.row_off + window.height][
                :, :, window.col_off : window.col_off + window.width
            ],
        )


def test_read_window_is_the_torchgeo_read_across_file_edges(
    s2_mosaic: GeoTiffMosaic,
) -> None:
    """Boxes that the first file covering them only partly covers: composited
    as TorchGeo's read."""
    mosaic = s2_mosaic
    x, y, _ = mosaic.bounds
    res = mosaic.res[0]
    rng = np.random.default_rng(0)
    read = 0
    while read < 6:
        width, height = (int(v) for v in rng.integers(40, 200, size=2))
        col = int(rng.integers(0, (x.stop - x.start) / res - width))
        row = int(rng.integers(0, (y.stop - y.start) / res - height))
        xmin, ymax = mosaic.grid.to_map(col, row)
        xmax, ymin = mosaic.grid.to_map(col + width, row + height)
        try:
            torchgeo = mosaic[xmin:xmax:res, ymin:ymax:res]['image']
        except IndexError:  # between the files
            continue
        assert torch.equal(mosaic.read_window(xmin, ymin, xmax, ymax), torchgeo)
        read += 1
