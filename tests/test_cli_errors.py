"""The five commands under hostile input: one line naming the file or flag, a
non-zero exit, nothing lost; Ctrl-C is one line and exit 130; --quiet is quiet.

Each test here failed before the fix it guards (issue 10, "Defects under hostile
input", numbers in brackets).
"""

import json
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from conftest import DATA, LANDSAT8, QUADRANTS, S2_TILE_A, S2_TILES, write_raster
from rasterio.shutil import copy as copy_raster
from torchgeo.tasks import SemanticSegmentation

import glcgeo.cli.export
import glcgeo.pretrain
from glcgeo.cli import main
from glcgeo.datamodules import GLCNetDataModule, SegmentationDataModule
from glcgeo.errors import SettingError
from glcgeo.runs import STAGING
from glcgeo.tasks import FinetuneTask, GLCNetTask

LABELS = DATA / 'demo_labels' / 's2_pseudo_labels.tif'

#: Pretraining settings that run a step in about a second on 2 CPU cores.
PRETRAIN = [
    '--backbone', 'resnet18', '--patch-size', '64', '--batch-size', '4',
    '--length', '8', '--num-workers', '0', '--quiet',
]  # fmt: skip
#: Fine-tuning settings that run an epoch in seconds on 2 CPU cores.
FINETUNE = [
    '--masks', str(LABELS), '--backbone', 'resnet18', '--patch-size', '32',
    '--batch-size', '4', '--eval-batch-size', '16', '--length', '8',
    '--num-label-patches', '4', '--accelerator', 'cpu', '--quiet',
]  # fmt: skip


def _one_line(capture: pytest.CaptureFixture[str], status: int, *fragments: str) -> str:
    """Check that a command failed with one line holding every fragment."""
    error = capture.readouterr().err
    assert status == 2, error
    assert error.startswith('glcgeo') and error.count('\n') == 1, error
    for fragment in fragments:
        assert fragment in error, error
    return error


def _save_segmentation_checkpoint(
    path: Path, statistics: bool, band_dtype: str | None = None
) -> Path:
    """A tiny TorchGeo FCN checkpoint for 4 bands, with or without band statistics
    (of images of *band_dtype*, if given)."""
    task = SemanticSegmentation(
        model='fcn', in_channels=4, num_classes=3, num_filters=4, weights=None
    )
    hyper_parameters = dict(task.hparams)
    if statistics:
        hyper_parameters.update(band_mean=[1000.0] * 4, band_std=[500.0] * 4)
    if band_dtype is not None:
        hyper_parameters['band_dtype'] = band_dtype
    torch.save(
        {'state_dict': task.state_dict(), 'hyper_parameters': hyper_parameters}, path
    )
    return path


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A segmentation checkpoint with band statistics ('model') and one without."""
    folder = tmp_path_factory.mktemp('checkpoints')
    return {
        'model': _save_segmentation_checkpoint(folder / 'model.ckpt', True),
        'torchgeo': _save_segmentation_checkpoint(folder / 'torchgeo.ckpt', False),
    }


@pytest.fixture(scope='module')
def truncated_cog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Cloud Optimized GeoTIFF of a Sentinel-2 tile cut at 60 % of its bytes.

    Its header and overviews (at the start of a COG) read; its full-resolution
    tiles do not.
    """
    folder = tmp_path_factory.mktemp('truncated')
    whole = folder / 'whole.tif'
    copy_raster(S2_TILE_A, whole, driver='COG')
    data = whole.read_bytes()
    cut = folder / 'cut.tif'
    cut.write_bytes(data[: int(len(data) * 0.6)])
    whole.unlink()
    return cut


# [5] Numbers out of range: refused as they are parsed, naming the flag.

OUT = 'OUT'
BAD_FLAGS = [
    ['stats', '--data', LANDSAT8, '--out', OUT, '--crs', 'EPSG:999999'],
    ['stats', '--data', LANDSAT8, '--out', OUT, '--res', '0'],
    ['stats', '--data', LANDSAT8, '--out', OUT, '--res', '-10'],
    ['stats', '--data', LANDSAT8, '--out', OUT, '--windows', '0'],
    ['stats', '--data', LANDSAT8, '--out', OUT, '--window-size', 'nan'],
    ['stats', '--data', LANDSAT8, '--out', OUT, '--bands', '1', '0'],
    ['pretrain', '--data', S2_TILES, '--out', OUT, '--bands', '-1'],
    ['pretrain', '--data', S2_TILES, '--out', OUT, '--patch-size', '0'],
    ['pretrain', '--data', S2_TILES, '--out', OUT, '--overlap', '1.5', '0.2'],
    ['pretrain', '--data', S2_TILES, '--out', OUT, '--overlap', '0.8', '0.3'],
    ['pretrain', '--data', S2_TILES, '--out', OUT, '--batch-size', '0'],
    ['pretrain', '--data', S2_TILES, '--out', OUT, '--scale', '0', '1'],
    ['pretrain', '--data', S2_TILES, '--out', OUT, '--max-nodata', '1'],
    ['pretrain', '--data', S2_TILES, '--out', OUT, '--temperature', '-1'],
    ['pretrain', '--data', S2_TILES, '--out', OUT, '--num-workers', '-1'],
    ['pretrain', '--data', S2_TILES, '--out', OUT, '--max-steps', '0'],
    ['finetune', '--images', S2_TILES, '--out', OUT, '--split', '0', '0.5', '0.5'],
    ['finetune', '--images', S2_TILES, '--out', OUT, '--min-labelled', '1.5'],
    ['finetune', '--images', S2_TILES, '--out', OUT, '--label-fraction', '2'],
    ['finetune', '--images', S2_TILES, '--out', OUT, '--epochs', '0'],
    ['predict', '--in', S2_TILE_A, '--out', OUT, '--model', OUT, '--tile-size', '0'],
    ['predict', '--in', S2_TILE_A, '--out', OUT, '--model', OUT, '--overlap', '-1'],
    ['predict', '--in', S2_TILE_A, '--out', OUT, '--model', OUT, '--std', '0'],
    ['predict', '--in', S2_TILE_A, '--out', OUT, '--model', OUT, '--bands', '0'],
    ['embed', '--in', S2_TILE_A, '--out', OUT, '--weights', OUT, '--bands', '0'],
]


@pytest.mark.parametrize(
    'argv', BAD_FLAGS, ids=[f'{a[0]} {" ".join(map(str, a[5:]))}' for a in BAD_FLAGS]
)
def test_a_number_out_of_range_is_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    out = str(tmp_path / 'out')
    flag = next(str(a) for a in reversed(argv) if str(a).startswith('--'))
    status = main([out if a == OUT else str(a) for a in argv])
    _one_line(capsys, status, f'argument {flag}: ', f'glcgeo {argv[0]} --help')
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        # Settings from a config file skip argparse: the API checks them.
        (['pretrain', '--config', {'regions': -1}], 'data.regions must be > 0, got -1'),
        (
            ['pretrain', '--config', {'overlap': [0.8, 0.3]}],
            'data.overlap must be (min, max) with min <= max, got (0.8, 0.3)',
        ),
        (['finetune', '--config', {'block_size': 0}], 'data.block_size must be > 0'),
        # What only the network or Lightning know, checked before any file.
        (['pretrain', '--patch-size', '40'], 'takes multiples of 16 pixels: use 32'),
        (['pretrain', '--devices', '0'], 'argument --devices: cannot be 0: `Trainer'),
        (['finetune', '--patch-size', '40'], 'takes multiples of 16 pixels: use 32'),
    ],
    ids=[
        'config regions',
        'config overlap',
        'config block_size',
        'pretrain patch',
        'devices',
        'finetune patch',
    ],
)
def test_settings_are_checked_before_anything_is_written(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str | dict[str, object]],
    message: str,
) -> None:
    out = tmp_path / 'run'
    command, *options = argv
    args = [str(command), '--out', str(out)]
    if command == 'pretrain':
        args += ['--data', str(S2_TILES), *PRETRAIN, '--max-steps', '1']
    else:
        args += ['--images', str(S2_TILES), *FINETUNE, '--max-steps', '1']
    for option in options:
        if isinstance(option, dict):
            config = tmp_path / 'config.yaml'
            config.write_text(yaml.safe_dump({'data': {'init_args': option}}))
            option = str(config)
        args.append(option)
    _one_line(capsys, main(args), message)
    assert not out.exists()


#: Settings out of range or unknown: (command, key, value, short flag, problem).
BAD_SETTINGS = [
    ('pretrain', 'data.batch_size', 0, '--batch-size', 'must be > 0, got 0'),
    ('pretrain', 'data.num_workers', -1, '--num-workers', 'must be >= 0, got -1'),
    ('pretrain', 'data.patch_size', -64, '--patch-size', 'must be > 0, got -64'),
    ('pretrain', 'data.regions', 0, '--regions', 'must be > 0, got 0'),
    ('pretrain', 'data.crs', 'foo', '--crs', 'must be a CRS that GDAL knows'),
    ('pretrain', 'data.crs', 'EPSG:99999', '--crs',
     "must be a CRS that GDAL knows (EPSG:32631, WKT, a PROJ string), got 'EPSG:99"),
    ('pretrain', 'model.lr', -1, '--lr', 'must be > 0, got -1'),
    ('pretrain', 'model.weight_decay', -1, None, 'must be >= 0, got -1'),
    ('pretrain', 'model.betas', [2, 3], None, 'each must be in [0, 1), got '),
    ('pretrain', 'data.scale', [1.2, 0.8], None, 'must be (min, max) with min <= '),
    ('pretrain', 'model.backbone', 'notanet', '--backbone',
     "must be a segmentation_models_pytorch encoder, got 'notanet' (list them"),
    ('pretrain', 'trainer.accelerator', 'tpu', '--accelerator',
     "cannot be 'tpu': Requirement 'torch_xla"),
    ('finetune', 'data.batch_size', 0, '--batch-size', 'must be > 0, got 0'),
    ('finetune', 'data.crs', 'foo', '--crs', 'must be a CRS that GDAL knows'),
    ('finetune', 'model.lr', -1, '--lr', 'must be > 0, got -1'),
    ('finetune', 'model.backbone', 'resnt18', '--backbone',
     "must be a segmentation_models_pytorch encoder, got 'resnt18' (did you mean "
     'resnet18'),
    ('finetune', 'trainer.accelerator', 'tpu', '--accelerator', "cannot be 'tpu'"),
]  # fmt: skip
#: Each bad setting given as its short flag, as its key flag and in a config.
GIVEN_AS = [
    pytest.param(*case, form, id=f'{case[0]} {form} {case[1]}={case[2]}')
    for case in BAD_SETTINGS
    for form in ('flag', 'key', 'config')
    if form != 'flag' or case[3] is not None
]


def _without(argv: list[str], flag: str | None) -> list[str]:
    """A command line without *flag* and its value."""
    if flag not in argv:
        return argv
    at = argv.index(flag)
    return argv[:at] + argv[at + 2 :]


@pytest.mark.parametrize(
    ('command', 'key', 'value', 'flag', 'problem', 'form'), GIVEN_AS
)
def test_a_bad_setting_is_one_line_naming_it_as_given(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    key: str,
    value: object,
    flag: str | None,
    problem: str,
    form: str,
) -> None:
    # Before: key flags and config keys skipped the short flags' checks, and
    # what the classes or Lightning refused was a traceback.
    out = tmp_path / 'run'
    if command == 'pretrain':
        argv = ['--data', str(S2_TILES), *PRETRAIN, '--max-steps', '1']
    else:
        argv = ['--images', str(S2_TILES), *FINETUNE, '--max-steps', '1']
    argv = [command, '--out', str(out), *_without(argv, flag)]
    text = value if isinstance(value, str) else json.dumps(value)
    if form == 'flag':
        assert flag is not None
        expected = f'argument {flag}: {problem}'
        argv += [flag, text]
    elif form == 'key':
        expected = f'argument --{key}: {problem}'
        argv += [f'--{key}', text]
    else:
        config = tmp_path / 'config.yaml'
        section, _, name = key.partition('.')
        config.write_text(yaml.safe_dump({section: {name: value}}))
        expected = f'{config}: {key} {problem}'
        argv += ['--config', str(config)]
    _one_line(capsys, main(argv), expected)
    assert not out.exists()


@pytest.mark.parametrize(
    ('make', 'message'),
    [
        (lambda: GLCNetDataModule(S2_TILES, batch_size=0), 'batch_size must be > 0'),
        (lambda: GLCNetDataModule(S2_TILES, crs='foo'), "crs must be a CRS that"),
        (lambda: SegmentationDataModule(S2_TILES, LABELS, num_workers=-1),
         'num_workers must be >= 0, got -1'),
        (lambda: GLCNetTask(lr=-1), 'lr must be > 0, got -1'),
        (lambda: GLCNetTask(betas=(2, 3)), 'betas each must be in [0, 1), got (2, 3)'),
        (lambda: FinetuneTask(backbone='notanet'), "backbone must be a segmentation"),
        (lambda: glcgeo.pretrain.pretrain({'paths': S2_TILES}, {'weight_decay': -1},
                                          {}, 'OUT'),
         'model.weight_decay must be >= 0, got -1'),
    ],
    ids=['data batch_size', 'data crs', 'segmentation num_workers', 'task lr',
         'task betas', 'finetune backbone', 'pretrain model.weight_decay'],
)  # fmt: skip
def test_the_python_api_refuses_a_bad_setting_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[], object],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingError) as refused:
        make()
    assert str(refused.value).startswith(message)
    assert not os.path.exists('OUT')


# [1] A failed pretraining writes nothing; the corrected rerun and resume work.


def test_a_failed_pretraining_leaves_its_folder_reusable(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / 'run'
    stats = tmp_path / 'rgb_stats.json'
    stats.write_text('{"mean": [1, 2, 3], "std": [1, 1, 1], "bands": [1, 2, 3]}')
    base = ['pretrain', '--data', str(S2_TILES), '--out', str(out), *PRETRAIN]
    status = main([*base, '--max-steps', '1', '--stats', str(stats)])
    # The statistics are the culprit, with both band counts.
    _one_line(capfd, status, f'{stats}: statistics of 3 bands, but the mosaic has 4')
    assert not out.exists()
    _one_line(capfd, main(['pretrain', '--out', str(out), '--resume']),
              f'{out}: nothing to resume')  # fmt: skip

    # A run that fails at its first step takes back what it wrote.
    def fail(*args: object) -> None:
        raise RuntimeError('no step')

    with monkeypatch.context() as patch:
        patch.setattr(GLCNetTask, 'training_step', fail)
        with pytest.raises(RuntimeError, match='no step'):
            main([*base, '--max-steps', '1'])
    assert not out.exists()

    # The corrected rerun works, and resuming overwrites the one last.ckpt [9].
    monkeypatch.setattr(glcgeo.pretrain, 'CHECKPOINT_EVERY', 1)
    capfd.readouterr()
    assert main([*base, '--max-steps', '2']) == 0
    assert main(['pretrain', '--out', str(out), '--resume', '--max-steps', '3',
                 '--quiet']) == 0  # fmt: skip
    assert capfd.readouterr() == ('', '')  # --quiet is quiet, resuming too [9]
    names = os.listdir(out / 'checkpoints')
    assert 'last.ckpt' in names and not any('-v' in name for name in names), names
    last = torch.load(out / 'checkpoints' / 'last.ckpt', weights_only=False)
    assert last['global_step'] == 3


# [3] Corrupt pixel data.


@pytest.mark.parametrize('command', ['stats', 'pretrain', 'finetune', 'predict'])
def test_a_truncated_file_is_one_line_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    truncated_cog: Path,
    checkpoints: dict[str, Path],
    command: str,
) -> None:
    out = tmp_path / 'out'
    stats = tmp_path / 'stats.json'
    stats.write_text(
        '{"mean": [0, 0, 0, 0], "std": [1, 1, 1, 1], "bands": [1, 2, 3, 4]}'
    )
    argv = {
        'stats': ['--data', truncated_cog, '--out', out],
        # Given statistics, the pixels are first read by a DataLoader worker.
        'pretrain': ['--data', truncated_cog, '--out', out, *PRETRAIN,
                     '--num-workers', '1', '--stats', stats, '--max-steps', '1'],
        'finetune': ['--images', truncated_cog, '--out', out, *FINETUNE],
        'predict': ['--in', truncated_cog, '--out', out, '--model',
                    checkpoints['model'], '--quiet'],
    }[command]  # fmt: skip
    status = main([command, *map(str, argv)])
    _one_line(capsys, status, f'glcgeo: {truncated_cog}: cannot read pixels')
    assert not out.exists()


# [4] An output folder that takes no file.


@pytest.mark.parametrize(
    'command', ['stats', 'export', 'pretrain', 'finetune', 'predict']
)
def test_an_unwritable_output_folder_is_one_line_before_any_work(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    read_only_folder: Path,
    checkpoints: dict[str, Path],
    command: str,
) -> None:
    out = read_only_folder / 'glcgeo-output'
    argv = {
        'stats': ['--data', LANDSAT8, '--out', out],
        'export': ['--checkpoint', checkpoints['model'], '--out', out],
        'pretrain': ['--data', S2_TILES, '--out', out, *PRETRAIN],
        'finetune': ['--images', S2_TILES, '--out', out, *FINETUNE],
        'predict': ['--in', S2_TILE_A, '--out', out, '--model', checkpoints['model']],
    }[command]
    status = main([command, *map(str, argv)])
    folder = out if command in ('pretrain', 'finetune') else read_only_folder
    _one_line(capsys, status, f'glcgeo: {folder}: cannot ')
    assert not out.exists()


# [6] A fine-tuning shorter than an epoch.


def test_finetuning_shorter_than_an_epoch_validates_at_its_end(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / 'ft'
    argv = ['finetune', '--images', str(S2_TILES), '--out', str(out), *FINETUNE]
    with monkeypatch.context() as patch:
        patch.setattr(FinetuneTask, 'training_step', lambda *args: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            main([*argv, '--max-steps', '1'])
    assert not out.exists()  # a failed run takes back what it wrote
    capfd.readouterr()
    assert main([*argv, '--max-steps', '1']) == 0
    assert capfd.readouterr() == ('', '')  # --quiet is quiet [9]
    assert {'model.ckpt', 'metrics.json'} <= set(os.listdir(out))


# [7] Advice that points the right way.


#: A local (engineering) CRS, as FLAIR-2's masks have beside EPSG:2154 images.
LOCAL_CRS = (
    'LOCAL_CS["RGF93 v1 / Lambert-93",UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
    'AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
)


def _mask_variant(folder: Path, name: str) -> Path:
    """The demo labels made sparse, empty, four bands deep, float, of one class,
    or in a local CRS (the labels cover both tiles: on neither's grid)."""
    with rasterio.open(LABELS) as src:
        labels, profile = src.read(1), src.profile
    nodata, crs = profile['nodata'], profile['crs']
    if name == 'sparse':
        sparse = np.full_like(labels, nodata)
        sparse[::7, ::7] = labels[::7, ::7]
        bands = sparse[None]
    elif name == 'nodata':
        bands = np.full_like(labels, nodata)[None]
    elif name == 'float':
        bands = np.where(labels == nodata, nodata, labels + 0.5).astype('float32')
        bands = bands[None]
    elif name == 'one':
        bands = np.where(labels == nodata, nodata, 1).astype(labels.dtype)[None]
    elif name == 'local':
        bands, crs = labels[None], LOCAL_CRS
    else:
        bands = np.stack([labels] * 4)
    return write_raster(
        folder / f'{name}.tif',
        bands,
        crs=crs,
        transform=profile['transform'],
        nodata=nodata,
    )


@pytest.mark.parametrize(
    ('case', 'advice'),
    [
        ('sparse', 'lower --min-labelled'),
        ('nodata', 'the masks hold no class pixel over the images'),
        ('four bands', 'a class mask must have one band of class ids, this file has 4'),
        ('float masks', 'the mask holds values that are no whole number ('),
        ('one class', 'the masks hold one class (value 1) over the images: give the '
         'values of every class, at least two, with --class-values'),
        ('local crs', 'its CRS, a local CRS "RGF93 v1 / Lambert-93", cannot be '
         "transformed to EPSG:32618 (such a mask is read in the images' CRS only "
         'on the exact grid of an image'),
        ('weights', 'the weights take 4 bands (bands [1, 2, 3, 4] of the images'),
        # Weights of a 3-band uint8 pretraining, 4-band uint16 images.
        ('uint8 weights', 'the weights take 3 bands (bands [1, 2, 3] of the uint8 '
         'images they were trained on), but the images have 4 (uint16): give '
         "--bands with 3 of their bands (normalised with the images' own "
         'statistics), or --stats'),
        ('no crs', 'raster has no CRS (not georeferenced); give one with --crs'),
    ],
)  # fmt: skip
def test_advice_points_the_right_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, advice: str
) -> None:
    out = tmp_path / 'out'
    finetune = ['finetune', '--images', str(S2_TILES), '--out', str(out), *FINETUNE]
    if case not in ('weights', 'uint8 weights', 'no crs'):
        mask = _mask_variant(tmp_path, case.split()[0])
        argv, culprit = [*finetune, '--masks', str(mask)], mask
    elif case == 'weights':
        # Weights trained on 4 bands, an image of 3.
        culprit = tmp_path / 'weights.ckpt'
        metadata = {
            'bands': [1, 2, 3, 4],
            'band_mean': [0.0] * 4,
            'band_std': [1.0] * 4,
        }
        torch.save({'state_dict': {}, 'hyper_parameters': metadata}, culprit)
        argv = [*finetune, '--images', str(QUADRANTS[0]), '--weights', str(culprit)]
        advice += ' they were trained on), but the images have 3'
    elif case == 'uint8 weights':
        culprit = tmp_path / 'weights.ckpt'
        metadata = {
            'bands': [1, 2, 3],
            'band_mean': [50.0] * 3,
            'band_std': [30.0] * 3,
            'band_dtype': 'uint8',
        }
        torch.save({'state_dict': {}, 'hyper_parameters': metadata}, culprit)
        argv = [*finetune, '--weights', str(culprit)]
    else:
        with rasterio.open(LANDSAT8) as src:
            culprit = write_raster(
                tmp_path / 'no_crs.tif', src.read(), crs=None, transform=src.transform
            )
        argv = ['stats', '--data', str(culprit), '--out', str(out)]
    _one_line(capsys, main(argv), f'glcgeo: {culprit}: ', advice)
    assert not out.exists()


# [10] A model without statistics.


def test_predict_needs_statistics_for_a_model_without_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], checkpoints: dict[str, Path]
) -> None:
    out = tmp_path / 'map.tif'
    model = checkpoints['torchgeo']
    argv = ['predict', '--in', str(S2_TILE_A), '--out', str(out), '--model', str(model)]
    _one_line(capsys, main(argv), f'{model}: the model carries no band statistics',
              '--stats', '--mean')  # fmt: skip
    assert os.listdir(tmp_path) == []
    raw = ['--mean', '0', '0', '0', '0', '--std', '1', '1', '1', '1', '--quiet']
    assert main([*argv, *raw]) == 0


def test_values_of_another_dtype_than_the_model_s_are_a_one_line_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: a uint8 scene was normalised with a uint16 model's statistics,
    # silently.
    model = _save_segmentation_checkpoint(tmp_path / 'm.ckpt', True, 'uint16')
    scene = DATA / 'rgbn_5m_overlap' / 'rgbn.tif'  # uint8
    argv = ['predict', '--in', str(scene), '--out', str(tmp_path / 'map.tif'),
            '--model', str(model), '--tile-size', '64', '--overlap', '16']  # fmt: skip
    assert main(argv) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if 'warn' in line]
    assert warned == [
        f'glcgeo: warning: {scene}: uint8 values, but the model was trained on '
        "uint16 images: they are normalised with its statistics (give the scene's "
        'own with --stats, or --mean and --std)'
    ]
    # The scene's own statistics: nothing to warn of.
    own = ['--mean', '100', '100', '100', '100', '--std', '50', '50', '50', '50']
    assert main([*argv, '--overwrite', *own]) == 0
    assert 'warning' not in capsys.readouterr().err


# [8] Ctrl-C anywhere.

#: What each command is asked to do when it is interrupted: work that lasts.
COMMANDS = {
    'stats': ['--data', S2_TILES, '--out', 'stats.json', '--windows', '1000000'],
    'pretrain': ['--data', S2_TILES, '--out', 'run', *PRETRAIN, '--max-steps', '50'],
    'export': ['--checkpoint', 'CHECKPOINT', '--out', 'weights.ckpt'],
    'finetune': ['--images', S2_TILES, '--out', 'run', *FINETUNE],
    'predict': ['--in', S2_TILE_A, '--out', 'map.tif', '--model', 'CHECKPOINT',
                '--tile-size', '32', '--overlap', '16', '--quiet'],
}  # fmt: skip
#: When to press Ctrl-C: while Python imports the libraries, and later in set-up
#: or work. Predict's small scene is done within 2 s; export, whose command
#: line loads nothing heavy before its checks, is not pressed (cli.main's
#: handling is the same for every command).
MOMENTS = [
    pytest.param(command, seconds, id=f'{command}-{seconds}s')
    for command in sorted(set(COMMANDS) - {'export'})
    for seconds in ((0.5,) if command == 'predict' else (0.5, 2.0))
]


def _in_glcgeo(pid: int) -> bool:
    """Whether Python's start-up is over: glcgeo's imports have loaded NumPy.

    Before that (the interpreter's own ``site`` import, seconds on a loaded
    machine) no program can catch Ctrl-C.
    """
    try:
        return '_multiarray_umath' in Path(f'/proc/{pid}/maps').read_text()
    except OSError:
        return True  # no /proc: rely on the moment alone


def _interrupt(
    folder: Path, argv: list[str], ready: Callable[[], bool]
) -> tuple[int, str]:
    """Start ``glcgeo`` in *folder*, press Ctrl-C once *ready*, return (status, err).

    Ctrl-C reaches the whole process group, DataLoader workers included, as a
    terminal's does.
    """
    process = subprocess.Popen(
        [sys.executable, '-m', 'glcgeo', *argv],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (_in_glcgeo(process.pid) and ready()):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    # Python may end an interrupted process by SIGINT itself (shells read 130).
    assert process.returncode in (130, -signal.SIGINT), err
    return process.returncode, err


@pytest.mark.parametrize(('command', 'seconds'), MOMENTS)
def test_ctrl_c_in_the_first_seconds_is_one_line(
    tmp_path: Path, checkpoints: dict[str, Path], command: str, seconds: float
) -> None:
    argv = [command, *(str(checkpoints['model']) if a == 'CHECKPOINT' else str(a)
                       for a in COMMANDS[command])]  # fmt: skip
    start = time.monotonic()
    _, err = _interrupt(tmp_path, argv, lambda: time.monotonic() - start > seconds)
    assert err == 'glcgeo: interrupted\n'
    assert os.listdir(tmp_path) == []


def test_a_ctrl_c_that_python_ignores_still_stops_the_command(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ctrl-C pressed while Python runs a weakref callback (as the import system's
    # module locks do during the commands' imports): Python prints "Exception
    # ignored" and would go on with the work.
    done = tmp_path / 'done'

    def run(args: object) -> None:
        class Referent:
            pass

        referent = Referent()
        reference = weakref.ref(referent, lambda _: signal.raise_signal(signal.SIGINT))
        del referent
        done.write_text(f'the work went on ({reference})')

    monkeypatch.setattr(glcgeo.cli.export, 'run', run)
    status = main(['export', '--checkpoint', 'a.ckpt', '--out', 'b.ckpt'])
    assert status == 130 and not done.exists()
    assert capsys.readouterr().err.endswith('glcgeo: interrupted\n')


def test_a_ctrl_c_during_an_import_stops_the_command_once_imported(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A library whose import swallows what is raised inside it, as torch's C
    # extension does when Ctrl-C lands in the NumPy import it makes.
    (tmp_path / 'swallowing.py').write_text(
        'import signal\n'
        'try:\n'
        '    signal.raise_signal(signal.SIGINT)\n'
        '    WHOLE = True\n'
        'except BaseException:\n'
        '    WHOLE = False\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    done = tmp_path / 'done'

    def run(args: object) -> None:
        import swallowing

        done.write_text(f'the work went on (imported whole: {swallowing.WHOLE})')

    monkeypatch.setattr(glcgeo.cli.export, 'run', run)
    status = main(['export', '--checkpoint', 'a.ckpt', '--out', 'b.ckpt'])
    assert status == 130 and not done.exists()
    assert sys.modules['swallowing'].WHOLE  # the import was let finish
    assert capsys.readouterr().err.endswith('glcgeo: interrupted\n')
    assert sys.getprofile() is None and sys.gettrace() is None


def _has_logged_a_step(run: Path) -> bool:
    return any(run.glob('logs/csv/*/metrics.csv'))


def test_interrupted_pretraining_exits_130_and_can_resume(tmp_path: Path) -> None:
    argv = ['pretrain', *map(str, COMMANDS['pretrain'])]
    _, err = _interrupt(tmp_path, argv, lambda: _has_logged_a_step(tmp_path / 'run'))
    assert err == 'glcgeo: interrupted\n'
    last = torch.load(
        tmp_path / 'run' / 'checkpoints' / 'last.ckpt', weights_only=False
    )
    assert last['global_step'] >= 1


def test_interrupted_finetuning_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    argv = ['finetune', *map(str, COMMANDS['finetune'])]
    # A run writes in its staging folder until it completes (RunFolder.replacing).
    logs = tmp_path / 'run' / STAGING
    _, err = _interrupt(tmp_path, argv, lambda: _has_logged_a_step(logs))
    assert err == 'glcgeo: interrupted\n'
    assert os.listdir(tmp_path) == []


# Hostile paths: folders where files go, files where folders go.


@pytest.mark.parametrize(
    ('argv', 'culprit', 'message'),
    [
        (['pretrain', '--data', S2_TILE_A, '--out', 'run', '--stats', 'folder'],
         'folder', 'cannot read the statistics (Is a directory)'),
        (['pretrain', '--data', S2_TILE_A, '--out', 'run', '--config', 'folder'],
         'folder', 'cannot read the config (Is a directory)'),
        (['pretrain', '--data', S2_TILE_A, '--out', 'file'],
         'TMP/file', 'a file stands where the folder goes'),
        (['finetune', '--images', S2_TILE_A, '--masks', LABELS, '--out', 'file/run'],
         'TMP/file/run', 'a file (TMP/file) stands where the folder goes'),
        (['predict', '--in', S2_TILE_A, '--out', 'map.tif', '--model', 'CHECKPOINT',
          '--stats', 'folder'], 'folder', 'cannot read the statistics (Is a dir'),
        # Before: stats wrote the file 'new', the others failed in a traceback
        # (predict once its map was written).
        (['stats', '--data', S2_TILE_A, '--out', 'new/'],
         'new/', 'a folder is named where an output file goes'),
        (['vectorize', '--in', LABELS, '--out', 'new/'],
         'new/', 'polygons are written as a GeoPackage: name the file .gpkg'),
        (['predict', '--in', S2_TILE_A, '--out', 'map.tif', '--model', 'MODEL',
          '--polygons', 'new/'], 'new/', 'polygons are written as a GeoPackage'),
        (['export', '--checkpoint', 'MODEL', '--out', 'new/'],
         'new/', 'a folder is named where an output file goes'),
        (['export', '--checkpoint', 'MODEL', '--out', ''],
         'glcgeo', 'an output file is named by an empty path'),
    ],
    ids=['pretrain stats', 'config', 'pretrain out', 'finetune out', 'predict stats',
         'stats out', 'vectorize out', 'polygons', 'export out', 'empty out'],
)  # fmt: skip
def test_a_folder_for_a_file_or_a_file_for_a_folder_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    checkpoints: dict[str, Path],
    argv: list[str | Path],
    culprit: str,
    message: str,
) -> None:
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'file').write_text('not a folder')
    monkeypatch.chdir(tmp_path)  # relative paths, as typed in a shell
    names = {
        'CHECKPOINT': str(checkpoints['torchgeo']),
        'MODEL': str(checkpoints['model']),
    }
    args = [names.get(str(a), str(a)) for a in argv]
    line = f'{culprit}: {message}'.replace('TMP', str(tmp_path))
    _one_line(capsys, main(args), line)
    assert sorted(os.listdir(tmp_path)) == ['file', 'folder']


@pytest.mark.parametrize(
    ('inputs', 'out', 'kind'),
    [([S2_TILE_A], 'map.tif', 'files'), ([S2_TILES], 'maps/', 'folders')],
)
def test_outputs_that_are_one_file_or_folder_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    checkpoints: dict[str, Path],
    inputs: list[Path],
    out: str,
    kind: str,
) -> None:
    # Before, for one scene: "in use by another glcgeo run", this one.
    monkeypatch.chdir(tmp_path)
    argv = ['predict', '--in', *map(str, inputs), '--out', out,
            '--probabilities', out, '--model', str(checkpoints['model'])]  # fmt: skip
    _one_line(capsys, main(argv), f'--out and --probabilities must be different {kind}')
    assert os.listdir(tmp_path) == []


def test_an_unknown_crs_is_one_line_on_the_terminal_too(tmp_path: Path) -> None:
    # GDAL printed PROJ's complaint on the process's stderr first, which capsys
    # does not see.
    argv = ['stats', '--data', str(S2_TILE_A), '--out', 'x.json', '--crs', 'EPSG:99999']
    done = subprocess.run(
        [sys.executable, '-m', 'glcgeo', *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        'glcgeo stats: argument --crs: must be a CRS that GDAL knows (EPSG:32631, '
        "WKT, a PROJ string), got 'EPSG:99999' (see glcgeo stats --help)\n"
    )
