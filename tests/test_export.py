"""Exported GLCNet weights load into TorchGeo's SemanticSegmentation, as pretrained."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import Tensor
from torchgeo.tasks import SemanticSegmentation
from torchgeo.tasks.utils import extract_backbone

from glcgeo.checkpoints import load_pretrained
from glcgeo.cli import main
from glcgeo.errors import GlcgeoError
from glcgeo.export import export_weights, read_weights
from glcgeo.models import GLCNet
from glcgeo.pretrain import pretrain

DATA = Path(__file__).parent / 'data'
S2 = DATA / 'sentinel2_10m_tiles'


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """The ``glcgeo`` entry point with only the export sub-command registered."""
    monkeypatch.setattr('glcgeo.cli.COMMANDS', ('export',))
    return main


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real pretraining checkpoint: one step of GLCNetTask on the Sentinel-2 tiles."""
    out = tmp_path_factory.mktemp('pretrain')
    data = {'paths': [str(S2)], 'batch_size': 2, 'patch_size': 64, 'length': 2}
    last = pretrain(
        data={**data, 'num_workers': 0},
        model={'backbone': 'resnet18'},
        trainer={'max_steps': 1},
        out=str(out),
        quiet=True,
    )
    return Path(last)


@pytest.fixture(scope='module')
def pretrained(checkpoint: Path) -> dict[str, Any]:
    content: dict[str, Any] = torch.load(
        checkpoint, map_location='cpu', weights_only=True
    )
    return content


@pytest.fixture(scope='module')
def weights_file(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('export') / 'weights.ckpt'
    export_weights(checkpoint, out)
    return out


def part(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {
        k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)
    }


def deeplab(
    backbone: str = 'resnet18', in_channels: int = 4, classes: int = 1
) -> smp.DeepLabV3Plus:
    return smp.DeepLabV3Plus(
        backbone, encoder_weights=None, in_channels=in_channels, classes=classes
    )


def assert_equal_state(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.mark.parametrize('num_classes', [2, 7])
def test_torchgeo_loads_the_pretrained_encoder(
    weights_file: Path, pretrained: dict[str, Any], num_classes: int
) -> None:
    task = SemanticSegmentation(
        model='deeplabv3+',
        backbone='resnet18',
        in_channels=4,
        num_classes=num_classes,
        weights=str(weights_file),
    )
    encoder = part(pretrained['state_dict'], 'model.model.encoder.')
    assert_equal_state(task.model.encoder.state_dict(), encoder)
    # The pretraining really changed the weights (one Adam step).
    assert not torch.equal(
        encoder['conv1.weight'], GLCNet('resnet18').model.encoder.conv1.weight
    )
    name, _ = extract_backbone(str(weights_file))
    assert name == 'resnet18'


def test_statistics_travel_with_the_weights(
    weights_file: Path, pretrained: dict[str, Any]
) -> None:
    hp = torch.load(weights_file, weights_only=True)['hyper_parameters']
    source = pretrained['hyper_parameters']
    assert hp['band_mean'] == pytest.approx(source['band_mean'])
    assert hp['band_std'] == pytest.approx(source['band_std'])
    assert hp['bands'] is None and hp['band_dtype'] == 'uint16'  # every band
    assert 'model' not in hp  # TorchGeo would then read the keys another way
    weights = read_weights(weights_file)
    assert weights.band_mean == hp['band_mean'] and weights.in_channels == 4
    assert weights.band_dtype == 'uint16'


def test_load_pretrained_decoder_into_a_torchgeo_task(
    weights_file: Path, pretrained: dict[str, Any]
) -> None:
    task = SemanticSegmentation(
        model='deeplabv3+', backbone='resnet18', in_channels=4, num_classes=5
    )
    head = {k: v.clone() for k, v in task.model.segmentation_head.state_dict().items()}
    report = load_pretrained(task, weights_file)
    for name in ('encoder', 'decoder'):
        expected = part(pretrained['state_dict'], f'model.model.{name}.')
        assert_equal_state(getattr(task.model, name).state_dict(), expected)
    assert_equal_state(task.model.segmentation_head.state_dict(), head)
    assert set(report.skipped) == {f'segmentation_head.{k}' for k in head}
    assert len(report.loaded) + len(report.skipped) == len(task.model.state_dict())


def test_load_pretrained_encoder_only_into_an_smp_model(
    weights_file: Path, pretrained: dict[str, Any]
) -> None:
    model = deeplab(classes=3)
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    report = load_pretrained(model, weights_file, decoder=False)
    assert_equal_state(
        model.encoder.state_dict(),
        part(pretrained['state_dict'], 'model.model.encoder.'),
    )
    assert_equal_state(model.decoder.state_dict(), decoder)
    assert all(k.startswith('encoder.') for k in report.loaded)
    assert {f'decoder.{k}' for k in decoder} <= set(report.skipped)


@pytest.mark.parametrize(
    ('model', 'message'),
    [
        (deeplab(in_channels=3), 'encoder'),
        (deeplab(backbone='resnet34'), 'missing'),
        (smp.Unet('resnet18', encoder_weights=None, in_channels=4), 'decoder'),
    ],
)
def test_load_pretrained_rejects_other_models(
    weights_file: Path, model: torch.nn.Module, message: str
) -> None:
    with pytest.raises(GlcgeoError, match=message):
        load_pretrained(model, weights_file)


def test_load_pretrained_needs_a_segmentation_model(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match='segmentation_models_pytorch'):
        load_pretrained(torch.nn.Linear(2, 2), tmp_path / 'weights.ckpt')


def test_global_only_exports_the_aspp_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = GLCNet('resnet18', in_channels=4, ablation='global_only')
    checkpoint = tmp_path / 'global.ckpt'
    hp = {'backbone': 'resnet18', 'in_channels': 4, 'ablation': 'global_only'}
    state_dict = {f'model.{k}': v for k, v in network.state_dict().items()}
    torch.save({'state_dict': state_dict, 'hyper_parameters': hp}, checkpoint)
    with pytest.warns(UserWarning, match='no band statistics'):
        weights = export_weights(checkpoint, tmp_path / 'weights.ckpt')
    assert weights.decoder and all(k.startswith('aspp.') for k in weights.decoder)
    model = deeplab(classes=2)
    report = load_pretrained(model, tmp_path / 'weights.ckpt')
    assert_equal_state(
        model.decoder.aspp.state_dict(), network.model.decoder.aspp.state_dict()
    )
    assert any(k.startswith('decoder.block1.') for k in report.skipped)


def test_cli_exports_and_refuses_to_overwrite(
    cli: Callable[[list[str]], int],
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / 'weights.ckpt'
    assert cli(['export', '--checkpoint', str(checkpoint), '--out', str(out)]) == 0
    assert 'resnet18 encoder' in capsys.readouterr().out
    before = out.read_bytes()
    assert cli(['export', '--checkpoint', str(checkpoint), '--out', str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f'glcgeo: {out}: ') and error.count('\n') == 1
    assert out.read_bytes() == before
    args = ['export', '--checkpoint', str(checkpoint), '--out', str(out), '--overwrite']
    assert cli([*args, '--quiet']) == 0
    assert capsys.readouterr().out == ''
    assert os.listdir(tmp_path) == ['weights.ckpt']


def test_cli_never_replaces_the_checkpoint_it_exports(
    cli: Callable[[list[str]], int],
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / 'last.ckpt'
    source.write_bytes(checkpoint.read_bytes())
    args = ['export', '--checkpoint', str(source), '--out', str(source)]
    assert cli([*args, '--overwrite']) == 2
    assert 'output and input must be different' in capsys.readouterr().err
    assert source.read_bytes() == checkpoint.read_bytes()


def bad_checkpoints(tmp_path: Path) -> dict[str, Path]:
    no_hparams = tmp_path / 'no_hparams.ckpt'
    torch.save({'state_dict': {}}, no_hparams)
    wrong_backbone = tmp_path / 'wrong_backbone.ckpt'
    network = GLCNet('resnet18', in_channels=4)
    torch.save(
        {
            'state_dict': {f'model.{k}': v for k, v in network.state_dict().items()},
            'hyper_parameters': {'backbone': 'resnet34', 'in_channels': 4},
        },
        wrong_backbone,
    )
    return {
        'missing': tmp_path / 'missing.ckpt',
        'folder': tmp_path,
        'geotiff': DATA / 'landsat8_7band' / 'l8_B1-B7_crop256.tif',
        'no_hparams': no_hparams,
        'wrong_backbone': wrong_backbone,
    }


@pytest.mark.parametrize(
    ('case', 'message'),
    [
        ('missing', 'no such checkpoint file'),
        ('folder', 'a folder: give a checkpoint file in it'),
        ('geotiff', 'not a readable checkpoint'),
        ('no_hparams', 'not a GLCNet checkpoint'),
        ('wrong_backbone', 'weights do not fit'),
    ],
)
def test_cli_rejects_bad_checkpoints(
    cli: Callable[[list[str]], int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    message: str,
) -> None:
    source = bad_checkpoints(tmp_path)[case]
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    args = ['export', '--checkpoint', str(source), '--out', str(out_dir / 'w.ckpt')]
    assert cli(args) == 2
    error = capsys.readouterr().err
    assert error.startswith(f'glcgeo: {source}: ') and message in error
    assert error.count('\n') == 1
    assert os.listdir(out_dir) == []
