"""Checkpoints: the metadata schema, every layout, and each as a fine-tuning start."""

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import save_ssl_checkpoint
from torchgeo.tasks import MoCo, SemanticSegmentation, SimCLR

from glcgeo.checkpoints import (
    BandMetadata,
    CheckpointMetadata,
    build_segmentation_model,
    checkpoint_kind,
    load_pretrained,
    read_checkpoint,
    read_weights,
    write_model_checkpoint,
)
from glcgeo.errors import GlcgeoError
from glcgeo.export import export_weights
from glcgeo.finetune import pretrained_band_stats
from glcgeo.tasks import FinetuneTask, GLCNetTask

STATS = {'band_mean': [1.0, 2, 3, 4], 'band_std': [5.0, 6, 7, 8], 'bands': [4, 3, 2, 1]}


def save_task(task: pl.LightningModule, path: Path) -> Path:
    """Save an untrained task as Lightning writes its checkpoints."""
    trainer = pl.Trainer(max_steps=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope='module')
def glcnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[GLCNetTask, Path]:
    """A GLCNet pretraining checkpoint, as ``runs/x/checkpoints/last.ckpt``."""
    torch.manual_seed(0)
    task = GLCNetTask(backbone='resnet18', in_channels=4, **STATS)
    folder = tmp_path_factory.mktemp('glcnet')
    return task, save_task(task, folder / 'last.ckpt')


@pytest.fixture(scope='module')
def starts(
    glcnet: tuple[GLCNetTask, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, torch.Tensor], Path]]:
    """Each glcgeo layout a fine-tuning can start from, with the model it holds."""
    folder = tmp_path_factory.mktemp('starts')
    pretrained, last = glcnet
    weights = folder / 'weights.ckpt'
    export_weights(last, weights)
    torch.manual_seed(1)
    segmentation = FinetuneTask(
        backbone='resnet18',
        in_channels=4,
        num_classes=5,
        **STATS,
    )
    best = save_task(segmentation, folder / 'best.ckpt')
    model = folder / 'model.ckpt'
    write_model_checkpoint(best, model)
    glcnet_model = pretrained.model.model.state_dict()
    return {
        'export': (glcnet_model, weights),
        'glcnet': (glcnet_model, last),
        'segmentation': (segmentation.model.state_dict(), model),
    }


def test_band_metadata_is_written_and_read_by_one_schema() -> None:
    metadata = BandMetadata(
        bands=(4, 3), band_mean=(1.0, 2.0), band_std=(3.0, 4.0), band_dtype='uint16'
    )
    written = metadata.to_hyperparameters()
    assert written == {
        'bands': [4, 3],
        'band_mean': [1.0, 2.0],
        'band_std': [3.0, 4.0],
        'band_dtype': 'uint16',
    }
    # weights_only-safe: plain lists and strings.
    assert all(type(written[k]) is list for k in ('bands', 'band_mean', 'band_std'))
    assert BandMetadata.from_hyperparameters({**written, 'lr': 0.1}) == metadata
    assert BandMetadata.from_hyperparameters({}) == BandMetadata()
    with pytest.raises(GlcgeoError, match='given together'):
        BandMetadata(band_mean=(1.0,))
    with pytest.raises(GlcgeoError, match='1 band stds given, the model has 2'):
        BandMetadata(band_mean=(1.0, 2.0), band_std=(1.0,))
    hp = {'model': 'unet', 'backbone': 'resnet18', 'in_channels': 2, 'num_classes': 3}
    full = CheckpointMetadata.from_hyperparameters({**hp, **written})
    assert (full.bands, full.band_mean, full.num_classes) == ((4, 3), (1.0, 2.0), 3)
    assert full.class_names == ('class_0', 'class_1', 'class_2')


def test_every_layout_is_told_apart_and_read(
    starts: dict[str, tuple[dict[str, torch.Tensor], Path]], tmp_path: Path
) -> None:
    ssl = save_ssl_checkpoint(
        SimCLR(model='resnet18', in_channels=4, size=32, memory_bank_size=0),
        str(tmp_path / 'simclr.ckpt'),
    )
    kinds = {
        kind: checkpoint_kind(read_checkpoint(path))
        for kind, (_, path) in starts.items()
    }
    assert kinds == {
        'export': 'weights',
        'glcnet': 'glcnet',
        'segmentation': 'segmentation',
    }
    assert checkpoint_kind(read_checkpoint(ssl)) == 'ssl_backbone'
    for kind, (source, path) in starts.items():
        weights = read_weights(path)
        assert weights.backbone == 'resnet18' and weights.in_channels == 4
        assert weights.band_mean == STATS['band_mean'], kind
        assert weights.bands == STATS['bands'], kind
        for key, value in weights.encoder.items():
            assert torch.equal(value, source[f'encoder.{key}']), (kind, key)
        assert weights.decoder.keys() == {
            k.removeprefix('decoder.') for k in source if k.startswith('decoder.')
        }
    simclr = read_weights(ssl)
    assert simclr.decoder == {} and simclr.band_mean is None
    empty = tmp_path / 'empty.ckpt'
    torch.save({'state_dict': {'head.weight': torch.zeros(2)}}, empty)
    with pytest.raises(GlcgeoError, match='no encoder weights'):
        read_weights(empty)


@pytest.mark.parametrize('kind', ['export', 'glcnet', 'segmentation'])
@pytest.mark.parametrize('transfer', ['encoder', 'encoder+decoder'])
def test_glcgeo_checkpoints_start_a_finetuning(
    starts: dict[str, tuple[dict[str, torch.Tensor], Path]], kind: str, transfer: str
) -> None:
    """An exported file, a GLCNet run's last.ckpt, a fine-tuning run's model.ckpt:
    each starts the encoder (and decoder), and gives its band statistics."""
    source, path = starts[kind]
    band_stats = pretrained_band_stats(str(path))
    assert band_stats is not None
    assert (band_stats.mean, band_stats.std, band_stats.bands) == tuple(STATS.values())
    model = FinetuneTask(
        backbone='resnet18', in_channels=4, num_classes=3, weights=str(path),
        transfer=transfer,
    ).model  # fmt: skip
    for key, value in model.state_dict().items():
        if key.startswith('encoder.') or (
            transfer == 'encoder+decoder' and key.startswith('decoder.')
        ):
            assert torch.equal(value, source[key]), key
    decoder_equal = all(
        torch.equal(value, source[key])
        for key, value in model.state_dict().items()
        if key.startswith('decoder.') and value.is_floating_point() and value.ndim > 1
    )
    assert decoder_equal == (transfer == 'encoder+decoder')


@pytest.mark.parametrize(
    'ssl_task',
    [
        lambda: SimCLR(model='resnet18', in_channels=4, size=32, memory_bank_size=0),
        lambda: MoCo(model='resnet18', in_channels=4, size=32, hidden_dim=32),
    ],
    ids=['simclr', 'moco'],
)
def test_simclr_and_moco_backbones_load_into_the_encoder(
    ssl_task: type, tmp_path: str
) -> None:
    task = ssl_task()
    path = save_ssl_checkpoint(task, os.path.join(tmp_path, 'ssl.ckpt'))
    # TorchGeo's own loader finds no weights in these checkpoints.
    with pytest.raises(RuntimeError, match='Missing key'):
        SemanticSegmentation(
            model='deeplabv3+', backbone='resnet18', in_channels=4, num_classes=3,
            weights=path,
        )  # fmt: skip
    model = FinetuneTask(
        backbone='resnet18', in_channels=4, num_classes=3, weights=path
    ).model
    backbone = task.backbone.state_dict()
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, backbone[key]), key
    with pytest.raises(GlcgeoError, match='backbone only'):
        load_pretrained(model, path, decoder=True)
    with pytest.raises(GlcgeoError, match='does not fit'):
        FinetuneTask(backbone='resnet34', in_channels=4, num_classes=3, weights=path)


def test_random_start_and_missing_weights() -> None:
    a = FinetuneTask(backbone='resnet18', in_channels=4, num_classes=3)
    assert a.hparams['transfer'] == 'encoder' and 'weights' not in a.hparams
    with pytest.raises(GlcgeoError, match='no such checkpoint'):
        FinetuneTask(backbone='resnet18', in_channels=4, weights='missing.ckpt')
    with pytest.raises(GlcgeoError, match='unknown transfer'):
        FinetuneTask(backbone='resnet18', in_channels=4, transfer='decoder')


def test_model_checkpoint_keeps_weights_and_metadata_only(
    starts: dict[str, tuple[dict[str, torch.Tensor], Path]],
) -> None:
    _, path = starts['segmentation']
    written = torch.load(path, weights_only=True)
    assert set(written) == {
        'state_dict', 'hyper_parameters', 'pytorch-lightning_version', 'epoch',
        'global_step',
    }  # fmt: skip
    assert written['hyper_parameters']['band_std'] == STATS['band_std']
    assert not [name for name in os.listdir(path.parent) if '.partial' in name]


@pytest.mark.parametrize('model', ['unet', 'deeplabv3+', 'upernet', 'fcn'])
def test_segmentation_models_are_built_as_torchgeo_builds_them(model: str) -> None:
    hparams = {'model': model, 'backbone': 'resnet18', 'in_channels': 4}
    torch.manual_seed(0)
    task = SemanticSegmentation(**hparams, num_classes=3, num_filters=8)
    built = build_segmentation_model({**task.hparams, 'weights': True})
    built.load_state_dict(task.model.state_dict())  # strictly: the same network
    x = torch.randn(2, 4, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(built.eval()(x), task.model.eval()(x))


def test_loading_a_smp_checkpoint_skips_torchgeo_tasks(tmp_path: Path) -> None:
    task = FinetuneTask(model='unet', backbone='resnet18', in_channels=4, num_classes=3)
    path = save_task(task, tmp_path / 'model.ckpt')
    code = (
        'import sys; from glcgeo.inference import load_segmentation_checkpoint; '
        f'load_segmentation_checkpoint({str(path)!r}); '
        "print('torchgeo.tasks' in sys.modules, 'lightning' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['False', 'False']
