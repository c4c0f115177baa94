"""Fine-tuning: spatial splits, label budgets, start weights, finetune + predict."""

import json
import os

import numpy as np
import pytest
import rasterio
import torch
from conftest import (
    NC_IMAGE,
    NC_LABELS,
    RasterWriter,
    TorchGeoFit,
    needs_nc,
    save_ssl_checkpoint,
)
from torchgeo.tasks import SimCLR

from glcgeo.cli import main
from glcgeo.datamodules import MaskEncoder, SegmentationDataModule
from glcgeo.datasets import GeoTiffMask, GeoTiffMosaic
from glcgeo.errors import GlcgeoError
from glcgeo.finetune import finetune
from glcgeo.stats import BandStats, compute_band_stats

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
    assert metadata.bands == (1, 2, 3, 4) and metadata.num_classes == 3
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
