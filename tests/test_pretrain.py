"""End-to-end GLCNet pretraining: the task, the command line, resume, configs."""

import csv
import glob
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from conftest import RasterWriter, TorchGeoFit

from glcgeo.cli import main
from glcgeo.datamodules import GLCNetDataModule
from glcgeo.errors import GlcgeoError
from glcgeo.pairs import cut_views
from glcgeo.tasks import GLCNetTask

DATA = os.path.join(os.path.dirname(__file__), 'data')
S2 = os.path.join(DATA, 'sentinel2_10m_tiles')
L8 = os.path.join(DATA, 'landsat8_7band', 'l8_B1-B7_crop256.tif')
QUADRANTS = os.path.join(DATA, 'landsat7_rgb_quadrants', 'rgb?.tif')

#: Small settings that run a step in about a second on 2 CPU cores.
TINY = [
    '--backbone', 'resnet18', '--patch-size', '64', '--batch-size', '4',
    '--length', '16', '--num-workers', '0', '--quiet',
]  # fmt: skip


def _losses(out: str) -> list[float]:
    (metrics,) = glob.glob(os.path.join(out, 'logs', 'csv', '*', 'metrics.csv'))
    with open(metrics) as f:
        return [
            float(row['train_loss'])
            for row in csv.DictReader(f)
            if row.get('train_loss')
        ]


def test_pretrain_cli_writes_checkpoint_logs_and_resumes(tmp_path: str) -> None:
    out = os.path.join(tmp_path, 'run')
    assert (
        main(['pretrain', '--data', S2, '--out', out, '--max-steps', '3', *TINY]) == 0
    )
    last = os.path.join(out, 'checkpoints', 'last.ckpt')
    checkpoint = torch.load(last, map_location='cpu', weights_only=False)
    assert checkpoint['global_step'] == 3
    hparams = checkpoint['hyper_parameters']
    assert hparams['in_channels'] == 4 and len(hparams['band_mean']) == 4
    assert hparams['band_dtype'] == 'uint16'  # what fine-tuning checks its data by
    assert all(math.isfinite(loss) for loss in _losses(out))
    assert os.path.exists(os.path.join(out, 'stats.json'))
    assert glob.glob(os.path.join(out, 'logs', 'tensorboard', '*', 'events.*'))

    # A second run into the same folder must not silently restart it.
    assert (
        main(['pretrain', '--data', S2, '--out', out, '--max-steps', '5', *TINY]) == 2
    )

    # Resuming needs only the folder: the run's settings are in its config.yaml.
    assert main(['pretrain', '--out', out, '--resume', '--max-steps', '5']) == 0
    resumed = torch.load(last, map_location='cpu', weights_only=False)
    assert resumed['global_step'] == 5


def test_pretrains_on_float_mosaic_with_nan_nodata(
    tmp_path: Path, make_raster: RasterWriter
) -> None:
    """float32 reflectance with NaN holes: the network never sees a NaN."""
    with rasterio.open(L8) as src:
        reflectance = src.read().astype(np.float32) / 10000
        crs, transform = src.crs, src.transform
    reflectance[:, 100:150, 40:220] = np.nan
    path = make_raster(
        'l8_float.tif', reflectance, crs=crs, transform=transform, nodata=np.nan
    )
    out = str(tmp_path / 'run')
    flags = ['--max-steps', '3', '--max-nodata', '0.3', '--no-spectral-augmentation']
    assert main(['pretrain', '--data', str(path), '--out', out, *flags, *TINY]) == 0
    losses = _losses(out)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    with open(os.path.join(out, 'config.yaml')) as f:
        data = yaml.safe_load(f)['data']['init_args']
    assert data['spectral_augmentation'] is False
    # The run's own cache, not a setting: a rerun into another folder keeps its own.
    assert 'index_cache' not in data and os.path.isdir(os.path.join(out, 'index'))


def test_spectral_augmentation_can_be_left_out() -> None:
    def photometric(spectral: bool) -> torch.nn.Module:
        datamodule = GLCNetDataModule(
            S2, patch_size=64, length=8, num_workers=0, spectral_augmentation=spectral
        )
        datamodule.setup('fit')
        return datamodule.train_aug.photometric

    jitter, band_to_all, blur, salt = photometric(spectral=False)
    assert jitter.p == 0 and band_to_all.p == 0  # no spectral op...
    assert blur.p == 0.5 and salt.amount > 0  # ...the spatial ones stay
    jitter, band_to_all, _, _ = photometric(spectral=True)
    assert jitter.p == 0.8 and band_to_all.p == 0.1  # the authors'


def test_loss_decreases_on_repeated_data() -> None:
    torch.manual_seed(0)
    datamodule = GLCNetDataModule(
        S2, patch_size=64, batch_size=8, length=8, region_size=16, num_workers=0
    )
    datamodule.setup('fit')
    batch = next(iter(datamodule.train_dataloader()))
    batch = datamodule.train_aug(cut_views(batch, 64))
    task = GLCNetTask(backbone='resnet18', in_channels=4, gather_distributed=False)
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = task.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize(
    ('flags', 'message'),
    [
        (['--data', S2, '--config', 'BANDS'], 'has 4 bands, but in_channels is 3'),
        (['--data', S2, '--patch-size', '2000'], 'but the mosaic is'),
        (['--data', 'missing_folder'], 'no such file or folder'),
    ],
)
def test_bad_settings_fail_before_training(
    tmp_path: str, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    config = os.path.join(tmp_path, 'bands.yaml')
    with open(config, 'w') as f:
        yaml.safe_dump({'model': {'init_args': {'in_channels': 3}}}, f)
    flags = [config if flag == 'BANDS' else flag for flag in flags]
    out = os.path.join(tmp_path, 'run')
    argv = ['pretrain', *TINY, '--max-steps', '1', '--out', out, *flags]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and error.count('\n') == 0
    assert not os.path.exists(out)


def test_unknown_ablation_is_a_clear_error() -> None:
    with pytest.raises(GlcgeoError, match='unknown ablation'):
        GLCNetTask(backbone='resnet18', ablation='bogus')


def test_runs_under_torchgeo_fit(torchgeo_fit: TorchGeoFit) -> None:
    torchgeo_fit(
        'experiments/configs/glcnet_sentinel2.yaml',
        {'paths': S2, 'patch_size': 64, 'batch_size': 4, 'length': 8, 'num_workers': 0},
        {'max_steps': 2},
    )


def test_pretrain_on_two_processes(tmp_path: str) -> None:
    """Lightning DDP on CPU (gloo): each rank draws its own share of pairs."""
    out = os.path.join(tmp_path, 'ddp')
    command = [sys.executable, '-m', 'glcgeo', 'pretrain', '--data', S2, '--out', out]
    # Not --quiet: Lightning's line for each rank shows that both ran.
    tiny = [a for a in TINY if a != '--quiet']
    command += [*tiny, '--max-steps', '2', '--devices', '2', '--accelerator', 'cpu']
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'GLOBAL_RANK: 1, MEMBER: 2/2' in result.stderr + result.stdout
    checkpoint = torch.load(
        os.path.join(out, 'checkpoints', 'last.ckpt'),
        map_location='cpu',
        weights_only=False,
    )
    assert checkpoint['global_step'] == 2
    assert all(math.isfinite(loss) for loss in _losses(out))
