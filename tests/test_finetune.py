"""Fine-tuning: spatial splits, label budgets, start weights, finetune + predict."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import (
    LANDSAT8,
    NC_IMAGE,
    NC_LABELS,
    S2_TILE_A,
    RasterWriter,
    TorchGeoFit,
    needs_nc,
    read_crop,
    save_ssl_checkpoint,
    save_task_checkpoint,
    write_raster,
)
from rasterio.windows import Window
from torchgeo.tasks import SimCLR

from glcgeo.cli import main
from glcgeo.datamodules import MaskEncoder, SegmentationDataModule
from glcgeo.datasets import GeoTiffMask, GeoTiffMosaic
from glcgeo.errors import GlcgeoError
from glcgeo.finetune import finetune
from glcgeo.stats import BandStats, compute_band_stats
from glcgeo.tasks import GLCNetTask

DATA = os.path.join(os.path.dirname(__file__), 'data')
S2 = os.path.join(DATA, 'sentinel2_10m_tiles')
LABELS = os.path.join(DATA, 'demo_labels', 's2_pseudo_labels.tif')
CONFIG = os.path.join(
    os.path.dirname(__file__), '..', 'experiments', 'configs',
    'finetune_sentinel2_demo.yaml',
)  # fmt: skip
NAMES = ['water', 'vegetation', 'other land']
#: A budget small enough to fine-tune in seconds on 2 CPU cores.
TINY_DATA = {
    'images': S2,
    'masks': LABELS,
    'class_names': NAMES,
    'patch_size': 32,
    'block_size': 4,
    'batch_size': 4,
    'eval_batch_size': 16,
    'length': 8,
}
TINY_MODEL = {'backbone': 'resnet18', 'lr': 1e-3}
TINY_TRAINER = {
    'max_epochs': 2,
    'limit_val_batches': 1,
    'limit_test_batches': 1,
    'accelerator': 'cpu',
}


@pytest.fixture(scope='module')
def demo_data() -> SegmentationDataModule:
    datamodule = SegmentationDataModule(**TINY_DATA, label_fraction=0.05, seed=3)
    datamodule.setup('fit')
    return datamodule


def test_training_batches_hold_labelled_tiles_with_ignored_nodata(
    demo_data: SegmentationDataModule,
) -> None:
    batch = next(iter(demo_data.train_dataloader()))
    assert batch['image'].shape == (4, 4, 32, 32)
    assert batch['mask'].shape == (4, 32, 32)
    values = set(batch['mask'].unique().tolist())
    assert values <= {0, 1, 2, 255}
    # Masks read through the data module equal the file, encoded (255 stays).
    query = demo_data.tile_split.query(demo_data.label_tiles[0])  # type: ignore[union-attr]
    sample = demo_data.dataset[query]  # type: ignore[index]
    with rasterio.open(LABELS) as src:
        window = rasterio.windows.from_bounds(
            query[0].start, query[1].start, query[0].stop, query[1].stop,
            src.transform,
        )  # fmt: skip
        raw = src.read(1, window=window)
    assert np.array_equal(sample['mask'].numpy(), raw.astype(np.int64))


@pytest.mark.parametrize('dtype', ['float32', 'int16'])
def test_batches_are_normalised_with_nodata_set_to_zero(
    make_raster: RasterWriter, dtype: str
) -> None:
    """Images with -9999 (and NaN) nodata: normalised on transfer, nodata is 0."""
    rng = np.random.default_rng(0)
    image = rng.uniform(100, 200, (4, 64, 64)).astype(dtype)
    # Nodata in every tile: a -9999 square and, in floats, a NaN in one band.
    image[:, 3:64:16, 3:64:16] = -9999
    image[:, 4:64:16, 3:64:16] = -9999
    if dtype == 'float32':
        image[2, 10:64:16, 10:64:16] = np.nan
    images = make_raster('image.tif', image, nodata=-9999)
    masks = make_raster('mask.tif', rng.integers(1, 3, (1, 64, 64), dtype='uint8'))
    stats = BandStats(mean=[150.0] * 4, std=[30.0] * 4, bands=[1, 2, 3, 4])
    datamodule = SegmentationDataModule(
        str(images), str(masks), patch_size=16, block_size=1, stats=stats,
        split=(0.5, 0.25, 0.25), eval_batch_size=64,
    )  # fmt: skip
    datamodule.setup('fit')
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        batch = next(iter(loader))
        raw, valid = batch['image'].clone(), batch['valid'].clone()
        assert (~valid).any() and valid.any()
        batch = datamodule.on_after_batch_transfer(batch, 0)
        assert 'valid' not in batch and torch.isfinite(batch['image']).all()
        expected = (raw - 150) / 30
        assert torch.all(batch['image'].permute(1, 0, 2, 3)[:, ~valid] == 0)
        torch.testing.assert_close(
            batch['image'].permute(1, 0, 2, 3)[:, valid],
            expected.permute(1, 0, 2, 3)[:, valid],
        )
        assert torch.all(batch['mask'][~valid] == 255)


def test_mask_encoder_ignores_other_values_and_pixels_without_image() -> None:
    encoder = MaskEncoder([1, 5, 7], ignore_index=255)
    raw = torch.tensor([[1, 5, 7], [0, 3, 5]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    sample = encoder({'mask': raw, 'valid': valid})
    assert sample['mask'].tolist() == [[0, 1, 255], [255, 255, 1]]
    assert sample['valid'] is valid  # kept for normalisation
    with pytest.raises(GlcgeoError, match='also a class id'):
        MaskEncoder([0, 1], ignore_index=1)


def test_finetune_then_predict_on_real_imagery(tmp_path: str) -> None:
    from glcgeo.inference import load_segmentation_checkpoint, predict_raster

    out = os.path.join(tmp_path, 'ft')
    result = finetune(
        {**TINY_DATA, 'num_label_patches': 6},
        {**TINY_MODEL, 'class_colors': [[0, 0, 255], [0, 255, 0], [200, 150, 100]]},
        TINY_TRAINER,
        out,
        quiet=True,
    )
    assert result.label_tiles == 6
    for key in ('test_OA', 'test_Kappa', 'test_mIoU', 'test_F1_water'):
        assert 0 <= result.test[key] <= 1 or key == 'test_Kappa'
    with open(os.path.join(out, 'metrics.json')) as f:
        written = json.load(f)
    assert written['test']['test_Kappa'] == pytest.approx(result.test['test_Kappa'])
    assert sum(written['tiles'].values()) > 0
    assert os.path.exists(os.path.join(out, 'split.geojson'))

    model, metadata = load_segmentation_checkpoint(result.checkpoint)
    assert metadata.class_names == tuple(NAMES)
    # Trained on every band (no bands given): a scene is read whole, and
    # another band count is refused (before: bands 1-4 of 7 were mapped).
    assert metadata.bands is None and metadata.num_classes == 3
    with pytest.raises(GlcgeoError, match='has 7 bands'):
        predict_raster(model, metadata, LANDSAT8, os.path.join(tmp_path, 'l8.tif'))
    assert not os.path.exists(os.path.join(tmp_path, 'l8.tif'))
    assert metadata.class_colors[0] == (0, 0, 255)
    scene = os.path.join(S2, 'S2_L1C_18SUH_tileA_B02-B03-B04-B08.tif')
    landcover = os.path.join(tmp_path, 'landcover.tif')
    predict_raster(
        model, metadata, scene, landcover, tile_size=128, overlap=32, progress=False
    )
    with rasterio.open(landcover) as dst, rasterio.open(scene) as src:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert set(np.unique(dst.read(1)).tolist()) <= {0, 1, 2}

    # The same folder again: refused without --overwrite, nothing touched.
    before = os.path.getmtime(result.checkpoint)
    with pytest.raises(GlcgeoError, match='already holds'):
        finetune(TINY_DATA, TINY_MODEL, TINY_TRAINER, out, quiet=True)
    assert os.path.getmtime(result.checkpoint) == before


def test_cli_reports_bad_input_in_one_line_and_writes_nothing(
    tmp_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = os.path.join(tmp_path, 'ft')
    base = ['finetune', '--images', S2, '--out', out, '--patch-size', '32', '--quiet']
    assert main([*base, '--masks', os.path.join(tmp_path, 'none.tif')]) == 2
    assert main(base) == 2
    assert main([*base, '--masks', LABELS, '--label-fraction', '0']) == 2
    assert main([*base, '--masks', LABELS, '--split', '0.5', '0.5', '0.5']) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith('glcgeo') for line in lines)
    assert 'no such file' in lines[0] and 'no masks' in lines[1]
    assert 'argument --label-fraction: must be a fraction in (0, 1]' in lines[2]
    assert 'sum to 1' in lines[3]
    assert not os.path.exists(out)


def test_cli_finetunes_from_a_simclr_checkpoint_with_the_demo_config(
    tmp_path: str,
) -> None:
    ssl = SimCLR(model='resnet18', in_channels=4, size=32, memory_bank_size=0)
    weights = save_ssl_checkpoint(ssl, os.path.join(tmp_path, 'simclr.ckpt'))
    out = os.path.join(tmp_path, 'ft')
    args = [
        'finetune', '--config', CONFIG, '--out', out, '--weights', weights,
        '--transfer', 'encoder', '--patch-size', '32', '--split', '0.9', '0.05',
        '0.05', '--batch-size', '4', '--length', '4', '--num-label-patches', '4',
        '--epochs', '1',
        '--accelerator', 'cpu', '--quiet',
    ]  # fmt: skip
    assert main(args) == 0
    checkpoint = torch.load(os.path.join(out, 'model.ckpt'), weights_only=True)
    hparams = checkpoint['hyper_parameters']
    assert hparams['class_names'] == NAMES and hparams['backbone'] == 'resnet18'
    assert len(hparams['band_mean']) == 4
    assert main(args) == 2  # the run exists
    assert main([*args, '--overwrite']) == 0


def test_weights_of_other_data_need_bands_and_then_use_the_images_statistics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GLCNet weights of a 3-band uint8 pretraining, 4-band uint16 images.
    task = GLCNetTask(
        backbone='resnet18', in_channels=3, bands=[1, 2, 3], band_mean=[50.0] * 3,
        band_std=[30.0] * 3, band_dtype='uint8',
    )  # fmt: skip
    weights = save_task_checkpoint(task, tmp_path / 'landsat7.ckpt')
    out = tmp_path / 'ft'
    argv = [
        'finetune', '--images', S2, '--masks', LABELS, '--out', out,
        '--weights', weights, '--backbone', 'resnet18', '--patch-size', '32',
        '--batch-size', '2', '--num-workers', '0', '--accelerator', 'cpu',
        '--num-label-patches', '2', '--max-steps', '1', '--quiet',
    ]  # fmt: skip
    assert main([str(a) for a in argv]) == 2
    assert 'the weights take 3 bands' in capsys.readouterr().err
    assert not out.exists()
    # The same band indexes of other data: the images' own statistics.
    with pytest.warns(UserWarning, match='normalised with their own statistics'):
        finetune(
            {**TINY_DATA, 'bands': [1, 2, 3], 'num_label_patches': 2},
            {**TINY_MODEL, 'weights': str(weights)},
            {**TINY_TRAINER, 'max_steps': 1},
            str(out),
            quiet=True,
        )
    hparams = torch.load(out / 'model.ckpt', weights_only=True)['hyper_parameters']
    images = compute_band_stats(GeoTiffMosaic(S2, bands=[1, 2, 3]))
    assert hparams['band_mean'] == pytest.approx(images.mean)
    assert hparams['bands'] == [1, 2, 3] and hparams['band_dtype'] == 'uint16'


def test_float_masks_of_whole_numbers_with_nan_nodata_read_as_classes(
    make_raster: RasterWriter,
) -> None:
    with rasterio.open(LABELS) as src:
        labels, transform = src.read(1), src.transform
    floats = np.where(labels == 255, np.nan, labels).astype('float32')
    mask = make_raster('float.tif', floats[None], transform=transform, nodata=np.nan)
    datamodule = SegmentationDataModule(**{**TINY_DATA, 'masks': str(mask)})
    datamodule.setup('fit')
    assert datamodule.tile_split is not None
    assert datamodule.tile_split.class_values == [0, 1, 2]
    sample = datamodule.dataset[datamodule.tile_split.query(datamodule.label_tiles[0])]  # type: ignore[index]
    assert set(sample['mask'].unique().tolist()) <= {0, 1, 2, 255}


def test_a_mask_of_one_class_trains_with_the_class_values_given(
    tmp_path: Path, make_raster: RasterWriter
) -> None:
    with rasterio.open(LABELS) as src:
        labels, transform = src.read(1), src.transform
    land = np.where(labels == 255, 255, 1).astype('uint8')
    mask = make_raster('land.tif', land[None], transform=transform, nodata=255)
    # Water (0) and land (1): a binary task whose masks hold land only.
    data = {**TINY_DATA, 'masks': str(mask), 'class_values': [0, 1],
            'class_names': ['water', 'land'], 'num_label_patches': 2}  # fmt: skip
    result = finetune(
        data, TINY_MODEL, {**TINY_TRAINER, 'max_steps': 1}, str(tmp_path / 'ft'),
        quiet=True,
    )  # fmt: skip
    assert result.test['test_OA'] >= 0 and 'test_F1_land' in result.test


#: A local (engineering) CRS, as FLAIR-2's masks have beside EPSG:2154 images.
LOCAL_CRS = (
    'LOCAL_CS["RGF93 v1 / Lambert-93",UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
    'AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
)


@pytest.mark.parametrize(
    ('local', 'crs'),
    [('masks', None), ('masks', 'EPSG:32618'), ('images', None)],
    ids=['local masks', 'local masks, --crs', 'local images'],
)
def test_a_local_crs_on_the_grid_of_its_image_is_read_as_the_image_crs(
    tmp_path: Path, local: str, crs: str | None
) -> None:
    window = Window(0, 0, 128, 128)  # tile A and the labels share this grid
    files = {}
    for name, source in (('images', S2_TILE_A), ('masks', LABELS)):
        data, transform, file_crs = read_crop(source, window)
        with rasterio.open(source) as src:
            nodata = src.nodata
        files[name] = write_raster(
            tmp_path / f'{name}.tif', data, transform=transform, nodata=nodata,
            crs=LOCAL_CRS if name == local else file_crs,
        )  # fmt: skip
    datamodule = SegmentationDataModule(
        str(files['images']), str(files['masks']), crs=crs, patch_size=32,
        block_size=1,
    )  # fmt: skip
    with pytest.warns(UserWarning, match='lies on the exact grid of .*images.tif'):
        datamodule.setup('fit')
    masks = datamodule.dataset.datasets[1]  # type: ignore[union-attr]
    x, y, _ = masks.bounds
    read = masks[x.start : x.stop : 10.0, y.start : y.stop : 10.0]['mask']
    assert np.array_equal(read.numpy(), read_crop(LABELS, window)[0][0])


def test_demo_config_runs_under_torchgeo_fit(torchgeo_fit: TorchGeoFit) -> None:
    torchgeo_fit(
        CONFIG, {'images': S2, 'masks': LABELS}, {'max_steps': 2, 'max_epochs': 1}
    )


@needs_nc
def test_masks_in_another_crs_are_warped_onto_the_image_grid() -> None:
    image = str(NC_IMAGE)
    labels = str(NC_LABELS)
    with rasterio.open(image) as src, rasterio.open(labels) as lab:
        # EPSG:32119 images, EPSG:3358 labels (rasterio calls them equivalent).
        assert src.crs.to_wkt() != lab.crs.to_wkt()
        raw = lab.read(1)
        bounds = src.bounds
        res = src.res[0]
    masks = GeoTiffMask(labels, crs=rasterio.open(image).crs, res=res)
    mask = masks[bounds.left : bounds.right : res, bounds.bottom : bounds.top : res]
    assert np.array_equal(mask['mask'].numpy(), raw.astype(np.int64))


@needs_nc
def test_nc_batches_hold_no_raw_border_nodata() -> None:
    """NC's integer border nodata (0 in every band) is 0 once normalised, unscored."""
    datamodule = SegmentationDataModule(
        str(NC_IMAGE), str(NC_LABELS), patch_size=64, block_size=1,
        stats=compute_band_stats(GeoTiffMosaic(str(NC_IMAGE))), mask_nodata=0,
        eval_batch_size=64,
    )  # fmt: skip
    datamodule.setup('fit')
    batch = next(iter(datamodule.test_dataloader()))
    border = (batch['image'] == 0).all(1)
    assert border.any()  # the test split reaches the image's border
    batch = datamodule.on_after_batch_transfer(batch, 0)
    assert torch.all(batch['image'].permute(1, 0, 2, 3)[:, border] == 0)
    assert torch.all(batch['mask'][border] == 255)


@needs_nc
def test_finetune_on_nc_land_cover(tmp_path: str) -> None:
    result = finetune(
        {
            'images': str(NC_IMAGE),
            'masks': str(NC_LABELS),
            'patch_size': 32,
            'block_size': 2,
            'batch_size': 8,
            'length': 16,
            'label_fraction': 0.05,
        },
        TINY_MODEL,
        {**TINY_TRAINER, 'limit_val_batches': 2, 'limit_test_batches': 2},
        os.path.join(tmp_path, 'nc'),
        quiet=True,
    )
    assert result.tiles['train'] > result.tiles['test'] > 0
    assert result.test['test_OA'] > 0.2
