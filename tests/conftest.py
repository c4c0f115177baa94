"""Shared fixtures: the committed CC0 imagery of tests/data and small rasters in tmp."""

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import rasterio
import torch
import yaml
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window
from torch import nn
from torch.utils.data import DataLoader
from torchgeo.tasks import SemanticSegmentation

from glcgeo.datasets import GeoTiffMosaic
from glcgeo.pairs import GeoTiffPairs

DATA = Path(__file__).parent / 'data'
S2_TILES = DATA / 'sentinel2_10m_tiles'
S2_TILE_A = S2_TILES / 'S2_L1C_18SUH_tileA_B02-B03-B04-B08.tif'
S2_TILE_B = S2_TILES / 'S2_L1C_18SUH_tileB_B02-B03-B04-B08.tif'
QUADRANT_DIR = DATA / 'landsat7_rgb_quadrants'
QUADRANTS = [QUADRANT_DIR / f'rgb{i}.tif' for i in range(1, 5)]
RGB1_3857 = QUADRANT_DIR / 'rgb1_fake_nir_epsg3857.tif'
LANDSAT8 = DATA / 'landsat8_7band' / 'l8_B1-B7_crop256.tif'
RGBN_DIR = DATA / 'rgbn_5m_overlap'
RGBN = RGBN_DIR / 'rgbn.tif'
RGBN_SUBTILES = [RGBN_DIR / 'rgbn_suba.tif', RGBN_DIR / 'rgbn_subb.tif']

#: Top-left corner of the off_grid_s2_tile fixture (m, EPSG:32618): off the metre
#: grid, so float32 (0.25 m steps at this northing) is 0.12 m off.
OFF_GRID_ORIGIN = (438730.37, 4176460.37)

#: NC land cover in ../shared/data (GPL-3 packaging: used from there, never
#: committed); tests that need it are skipped where it is absent.
NC_DIR = (
    Path(__file__).parents[2] / 'shared' / 'data' / 'labeled' / 'nc_landsat7_landcover'
)
NC_IMAGE = NC_DIR / 'lsat7_2000_6band.tif'
NC_LABELS = NC_DIR / 'landclass_7class.tif'
needs_nc = pytest.mark.skipif(
    not NC_DIR.is_dir(), reason='../shared/data (NC land cover) is absent'
)

#: Every shipped mosaic: name -> the paths given to GeoTiffMosaic.
SHIPPED_MOSAICS: dict[str, list[Path]] = {
    'sentinel2_tiles_utm': [S2_TILES],
    'landsat7_quadrants_custom_wkt': QUADRANTS,
    'landsat7_epsg3857': [RGB1_3857],
    'rgbn_5m_subtiles_nodata': RGBN_SUBTILES,
    'landsat8_7band': [LANDSAT8],
}

#: Georeferencing of synthetic rasters: 10 m pixels at a UTM 18N northing.
SYNTHETIC_TRANSFORM = from_origin(500_000.0, 4_170_000.0, 10.0, 10.0)

#: Writes a raster: (file name, [C, H, W] array, keyword overrides) -> its path.
RasterWriter = Callable[..., Path]


@pytest.fixture(scope='session', params=sorted(SHIPPED_MOSAICS))
def shipped_mosaic(request: pytest.FixtureRequest) -> GeoTiffMosaic:
    """Each shipped mosaic in its own CRS and resolution (one per test parameter)."""
    return GeoTiffMosaic(SHIPPED_MOSAICS[request.param])


@pytest.fixture(scope='session', params=sorted(SHIPPED_MOSAICS))
def shipped_pairs(request: pytest.FixtureRequest) -> GeoTiffPairs:
    """Each shipped mosaic read by window pairs (one per test parameter)."""
    return GeoTiffPairs(SHIPPED_MOSAICS[request.param])


@pytest.fixture(scope='session')
def s2_mosaic() -> GeoTiffMosaic:
    """The two overlapping Sentinel-2 tiles, EPSG:32618 at 10 m, northing ~4.17e6."""
    return GeoTiffMosaic(S2_TILES)


@pytest.fixture(scope='session')
def s2_pairs() -> GeoTiffPairs:
    """The Sentinel-2 tiles read by window pairs."""
    return GeoTiffPairs(S2_TILES)


@pytest.fixture(scope='session')
def quadrant_mosaic() -> GeoTiffMosaic:
    """The four Landsat-7 quadrants: custom WKT CRS, 3 x uint8, nodata=0 frame."""
    return GeoTiffMosaic(QUADRANTS)


@pytest.fixture(scope='session')
def quadrant_pairs() -> GeoTiffPairs:
    """The Landsat-7 quadrants read by window pairs."""
    return GeoTiffPairs(QUADRANTS)


def direct_read(
    mosaic: GeoTiffMosaic, transform: torch.Tensor, size: int
) -> torch.Tensor:
    """An independent TorchGeo read of a view's ground window at its resolution."""
    a, _, c, _, e, f = transform.tolist()
    return mosaic[c : c + a * size : a, f + e * size : f : -e]['image']


def write_raster(
    path: Path,
    array: np.ndarray,
    crs: str | None = 'EPSG:32618',
    transform: Affine = SYNTHETIC_TRANSFORM,
    nodata: float | None = None,
    **options: object,
) -> Path:
    """Write a [C, H, W] array as a GeoTIFF.

    Args:
        path: the file to write.
        array: pixel values; their dtype is the file's.
        crs: the file's CRS, or None for a file without one.
        transform: pixel -> map transform.
        nodata: the file's nodata tag.
        options: GeoTIFF creation options (tiled, compress, ...).

    Returns:
        *path*.
    """
    profile = {
        **options,
        'driver': 'GTiff',
        'count': array.shape[0],
        'height': array.shape[1],
        'width': array.shape[2],
        'dtype': array.dtype,
        'crs': crs,
        'transform': transform,
        'nodata': nodata,
    }
    with rasterio.open(path, 'w', **profile) as dst:
        dst.write(array)
    return path


def read_crop(source: Path, window: Window) -> tuple[np.ndarray, Affine, CRS]:
    """A window of a raster: its [C, H, W] values, transform and CRS."""
    with rasterio.open(source) as src:
        return src.read(window=window), src.window_transform(window), src.crs


@pytest.fixture
def make_raster(tmp_path: Path) -> RasterWriter:
    """Write small synthetic rasters into tmp_path, for cases real files lack."""

    def make(name: str, array: np.ndarray, **kwargs: object) -> Path:
        return write_raster(tmp_path / name, array, **kwargs)  # type: ignore[arg-type]

    return make


def warp_raster(path: Path, out: Path, crs: str) -> Path:
    """Write *path* reprojected to *crs* (nearest neighbour, GDAL's default grid).

    Returns:
        *out*.
    """
    with rasterio.open(path) as src:
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds
        )
        profile = src.profile | {
            'crs': crs,
            'transform': transform,
            'width': width,
            'height': height,
        }
        with rasterio.open(out, 'w', **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(
                    rasterio.band(src, band),
                    rasterio.band(dst, band),
                    resampling=Resampling.nearest,
                )
    return out


@pytest.fixture(scope='session')
def mixed_crs_quadrants(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """rgb1 and rgb2 in their custom WKT beside rgb3 warped to EPSG:3857.

    Returns:
        [rgb1.tif, rgb2.tif, rgb3_epsg3857.tif].
    """
    out = tmp_path_factory.mktemp('mixed_crs') / 'rgb3_epsg3857.tif'
    warp_raster(QUADRANTS[2], out, 'EPSG:3857')
    return [QUADRANTS[0], QUADRANTS[1], out]


@pytest.fixture(scope='session')
def off_grid_s2_tile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sentinel-2 tile A (10 m) moved to the corner OFF_GRID_ORIGIN."""
    path = tmp_path_factory.mktemp('off_grid') / 'tileA_off_grid.tif'
    with rasterio.open(S2_TILE_A) as src:
        profile = src.profile | {'transform': from_origin(*OFF_GRID_ORIGIN, 10, 10)}
        with rasterio.open(path, 'w', **profile) as dst:
            dst.write(src.read())
    return path


#: Runs ``torchgeo fit`` on a shipped YAML config with some values replaced.
TorchGeoFit = Callable[[str, dict[str, Any], dict[str, Any]], None]


@pytest.fixture
def torchgeo_fit(tmp_path: Path) -> TorchGeoFit:
    """Run TorchGeo's own command on a config, in a subprocess, as a user would.

    The callable takes the config file, the ``data.init_args`` and the ``trainer``
    values to replace; it runs in the config's folder, and checks that the run
    succeeds and writes a checkpoint under ``tmp_path``.
    """

    def run(config_file: str, data: dict[str, Any], trainer: dict[str, Any]) -> None:
        with open(config_file) as f:
            config = yaml.safe_load(f)
        config['data']['init_args'].update(data)
        # Lightning's implicit default logger ends the process with stray
        # 'Error in sys.excepthook' lines: name one.
        logger = {
            'class_path': 'lightning.pytorch.loggers.CSVLogger',
            'init_args': {'save_dir': str(tmp_path / 'logs'), 'name': 'csv'},
        }
        config['trainer'].update(
            default_root_dir=str(tmp_path),
            enable_progress_bar=False,
            logger=[logger],
            **trainer,
        )
        path = tmp_path / 'config.yaml'
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run(
            [sys.executable, '-m', 'torchgeo', 'fit', '--config', str(path)],
            # TorchGeo reads the config's relative paths from the working folder.
            cwd=Path(config_file).parent,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert list(tmp_path.glob('**/*.ckpt'))
        assert list(tmp_path.glob('logs/csv/*/metrics.csv'))
        assert 'Error in sys.excepthook' not in result.stderr

    return run


def save_ssl_checkpoint(task: pl.LightningModule, path: str) -> str:
    """Train a TorchGeo SSL task (SimCLR, MoCo) one step and save its checkpoint.

    Returns:
        *path*.
    """
    images = [{'image': torch.rand(4, 32, 32)} for _ in range(4)]
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        accelerator='cpu',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, DataLoader(images, batch_size=4))
    trainer.save_checkpoint(path)
    return path


def save_task_checkpoint(task: pl.LightningModule, path: Path) -> Path:
    """Save a task's real Lightning checkpoint, as a Trainer does, untrained.

    Returns:
        *path*.
    """
    trainer = pl.Trainer(
        accelerator='cpu',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


def fcn_task(in_channels: int, num_classes: int) -> SemanticSegmentation:
    """A fully convolutional TorchGeo model whose random map is not constant.

    TorchGeo's default init shrinks activations layer by layer, so a random FCN
    predicts one class everywhere; He init keeps the map input-dependent.
    """
    torch.manual_seed(0)
    task = SemanticSegmentation(
        model='fcn',
        in_channels=in_channels,
        num_classes=num_classes,
        num_filters=16,
        weights=None,
    )
    for module in task.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity='leaky_relu')
            nn.init.zeros_(module.bias)
    return task


@pytest.fixture(scope='session')
def fcn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-band, 6-class FCN checkpoint with band statistics, as finetune saves one."""
    task = fcn_task(4, 6)
    task.hparams.update({'band_mean': [1000.0] * 4, 'band_std': [500.0] * 4})
    return save_task_checkpoint(task, tmp_path_factory.mktemp('model') / 'fcn.ckpt')


@pytest.fixture(scope='module')
def reproducible_creation_time() -> Iterator[None]:
    """Outputs made at different moments compare byte for byte (their provenance)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('SOURCE_DATE_EPOCH', '1796256000')
        yield


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder where no file can be created (sysfs when running as root)."""
    folder = tmp_path / 'read-only'
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / 'probe').touch()
    except PermissionError:
        yield folder
        folder.chmod(0o755)
        return
    # Root ignores permissions; sysfs refuses new files even to root.
    (folder / 'probe').unlink()
    folder.chmod(0o755)
    try:
        (Path('/sys') / 'glcgeo-probe').touch()
    except OSError:
        yield Path('/sys')
        return
    pytest.skip('no folder here refuses new files')


@pytest.fixture(autouse=True)
def _allocator_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run in this process leave its allocator alone.

    ``glcgeo predict`` tells glibc to keep freed memory (glcgeo.allocator): the
    test process is not the command's, and would keep its peak to the end. The
    user's own opt-out covers every caller, and the processes tests start.
    """
    monkeypatch.setenv('GLCGEO_KEEP_FREED_MEMORY', '0')
