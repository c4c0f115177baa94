"""The documentation's Python examples run as they are, on the shipped data.

Each ``python`` block of README.md and docs/usage.md runs in its own folder
holding the files the examples name: ``tiles/`` (the two Sentinel-2 tiles),
``scene.tif`` (a crop of tile A), ``scenes/`` (that crop, and one of tile B
warped to the next UTM zone), ``weights.ckpt`` (pretrained DeepLabV3+ ResNet-50
weights, as ``glcgeo export`` writes them) and ``model.ckpt`` (a small TorchGeo
FCN with the bands, statistics and class names ``glcgeo finetune`` records).
"""

import re
from pathlib import Path

import pytest
import rasterio
import segmentation_models_pytorch as smp
import torch
from conftest import (
    S2_TILE_A,
    S2_TILE_B,
    S2_TILES,
    fcn_task,
    save_task_checkpoint,
    warp_raster,
)
from rasterio.windows import Window

from glcgeo.checkpoints import PretrainedWeights, write_weights

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md', ROOT / 'docs' / 'usage.md']
BLOCKS = [
    (page, code)
    for page in PAGES
    for code in re.findall(r'^```python\n(.*?)^```', page.read_text(), re.M | re.S)
]
#: Band statistics of raw Sentinel-2 L1C values, about those of the shipped tiles.
MEAN, STD = [1400.0, 1300.0, 1200.0, 2400.0], [400.0, 450.0, 600.0, 900.0]


def test_the_pages_have_python_examples() -> None:
    assert {page for page, _ in BLOCKS} == set(PAGES)


def _crop(source: Path, destination: Path, size: int = 320) -> Path:
    """Write the top-left *size* x *size* pixels of a raster, georeferenced."""
    with rasterio.open(source) as src:
        window = Window(0, 0, size, size)
        profile = src.profile | {
            'width': size,
            'height': size,
            'transform': src.window_transform(window),
        }
        with rasterio.open(destination, 'w', **profile) as dst:
            dst.write(src.read(window=window))
    return destination


@pytest.fixture(scope='module')
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name, made once."""
    folder = tmp_path_factory.mktemp('docs_inputs')
    (folder / 'tiles').symlink_to(S2_TILES)
    _crop(S2_TILE_A, folder / 'scene.tif')
    scenes = folder / 'scenes'
    scenes.mkdir()
    (scenes / 'tileA.tif').symlink_to(folder / 'scene.tif')
    tile_b = _crop(S2_TILE_B, folder / 'tileB.tif')
    warp_raster(tile_b, scenes / 'tileB_epsg32617.tif', 'EPSG:32617')
    torch.manual_seed(0)
    network = smp.DeepLabV3Plus('resnet50', encoder_weights=None, in_channels=4)
    write_weights(
        PretrainedWeights(
            backbone='resnet50',
            in_channels=4,
            encoder=network.encoder.state_dict(),
            decoder=network.decoder.state_dict(),
            band_mean=MEAN,
            band_std=STD,
            bands=[1, 2, 3, 4],
            band_dtype='uint16',
            hyper_parameters={},
        ),
        folder / 'weights.ckpt',
    )
    task = fcn_task(in_channels=4, num_classes=3)
    task.hparams.update(
        bands=[1, 2, 3, 4],
        band_mean=MEAN,
        band_std=STD,
        class_names=['water', 'vegetation', 'other land'],
    )
    save_task_checkpoint(task, folder / 'model.ckpt')
    return folder


@pytest.mark.parametrize(
    ('page', 'code'),
    BLOCKS,
    ids=[f'{page.stem}-{i}' for i, (page, _) in enumerate(BLOCKS, start=1)],
)
def test_python_example_runs(
    page: Path, code: str, inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in inputs.iterdir():
        (tmp_path / path.name).symlink_to(path)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(page), 'exec'), {'__name__': '__docs__'})
