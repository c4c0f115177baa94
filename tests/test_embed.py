"""``glcgeo embed``: per-pixel embeddings streamed as predict streams maps."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import RGBN_SUBTILES, S2_TILE_A
from PIL import Image
from rasterio.windows import Window
from torch import Tensor, nn

from glcgeo.checkpoints import ModelMetadata, read_weights, write_weights
from glcgeo.cli import main
from glcgeo.export import export_weights
from glcgeo.inference import (
    embed_raster,
    load_embedding_network,
    prediction_grid,
    tile_weights,
    write_preview,
)
from glcgeo.inference.embed import DecoderFeatures
from glcgeo.inference.pca import PCA
from glcgeo.inference.reading import SCENE_MARGIN
from glcgeo.inference.writer import CogWriter
from glcgeo.models import GLCNet
from glcgeo.pretrain import pretrain
from glcgeo.provenance import file_sha256
from glcgeo.rasters import valid_pixels

#: A real scene with nodata: its 11 left columns hold none (nodata 0).
NODATA_SCENE = RGBN_SUBTILES[0]
#: Windows (column, row) of Sentinel-2 tile A cut into small scenes, 180 x 150.
CROPS = {'crop0.tif': (0, 0), 'crop1.tif': (300, 200)}
#: Tiling of the small scenes: several tiles, fast.
TILING = ['--tile-size', '128', '--overlap', '32']

pytestmark = pytest.mark.usefixtures('reproducible_creation_time')


def embed(*args: object) -> int:
    """``glcgeo embed`` in this process; its exit status."""
    return main(['embed', *map(str, args)])


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real GLCNet pretraining checkpoint: one step on the Sentinel-2 tiles."""
    out = tmp_path_factory.mktemp('pretrain')
    last = pretrain(
        data={
            'paths': [str(S2_TILE_A.parent)],
            'batch_size': 2,
            'patch_size': 64,
            'length': 2,
            'num_workers': 0,
        },
        model={'backbone': 'resnet18'},
        trainer={'max_steps': 1},
        out=str(out),
        quiet=True,
    )
    return Path(last)


@pytest.fixture(scope='module')
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two small Sentinel-2 scenes."""
    folder = tmp_path_factory.mktemp('scenes')
    with rasterio.open(S2_TILE_A) as src:
        for name, (col, row) in CROPS.items():
            window = Window(col, row, 180, 150)
            profile = src.profile | {
                'width': 180,
                'height': 150,
                'transform': src.window_transform(window),
                'blockxsize': 64,
                'blockysize': 64,
            }
            with rasterio.open(folder / name, 'w', **profile) as dst:
                dst.write(src.read(window=window))
    return folder


@pytest.fixture(scope='module')
def outputs(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """The scene with nodata embedded whole (all.tif) and to 4 components
    (pc.tif, with its preview pc.png), by the command line."""
    folder = tmp_path_factory.mktemp('outputs')
    common = ['--in', NODATA_SCENE, '--weights', checkpoint, *TILING, '--quiet']
    assert embed(*common, '--out', folder / 'all.tif') == 0
    assert embed(*common, '--out', folder / 'pc.tif', '--dims', 4,
                 '--preview', folder / 'pc.png') == 0  # fmt: skip
    return folder


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read().astype(np.float32)


def test_embeddings_are_a_cog_of_decoder_channels_on_the_input_grid(
    outputs: Path, checkpoint: Path
) -> None:
    with rasterio.open(NODATA_SCENE) as src:
        crs, transform, shape = src.crs, src.transform, src.shape
        has_data = valid_pixels(torch.from_numpy(src.read()), src.nodata).numpy()
    assert (~has_data).any() and has_data.any()
    with rasterio.open(outputs / 'all.tif') as dst:
        assert dst.count == 256 and set(dst.dtypes) == {'float16'}
        assert dst.crs == crs and dst.transform == transform and dst.shape == shape
        assert dst.tags(ns='IMAGE_STRUCTURE')['LAYOUT'] == 'COG'
        assert dst.profile['tiled'] and dst.profile['interleave'] == 'band'
        assert dst.descriptions == tuple(f'embedding_{i}' for i in range(256))
        assert np.isnan(dst.nodata)
        values = dst.read()
        tags = dst.tags()
    # NaN exactly where the input holds no data.
    np.testing.assert_array_equal(np.isnan(values).any(axis=0), ~has_data)
    assert np.isfinite(values[:, has_data]).all()
    assert values[:, has_data].std(axis=1).max() > 0  # not constant
    assert tags['checkpoint'] == checkpoint.name
    assert tags['checkpoint_sha256'] == file_sha256(checkpoint)
    assert tags['source'] == str(NODATA_SCENE.resolve())
    assert tags['created'] == '2026-12-03T00:00:00+00:00'
    assert tags['model'] == 'deeplabv3+ resnet18' and tags['glcgeo_version']
    assert len(json.loads(tags['band_mean'])) == 4
    settings = json.loads(tags['settings'])
    assert settings['tile_size'] == 128 and settings['overlap'] == 32
    assert settings['dims'] is None
    assert 'decoder' in tags['embedding'] and 'pca' not in tags


def test_dims_gives_n_components_and_stores_the_pca(outputs: Path) -> None:
    with rasterio.open(outputs / 'pc.tif') as dst:
        assert dst.count == 4 and dst.descriptions == ('pc_0', 'pc_1', 'pc_2', 'pc_3')
        assert dst.tags(ns='IMAGE_STRUCTURE')['LAYOUT'] == 'COG'
        pca = PCA.from_tag(dst.tags()['pca'])
        assert json.loads(dst.tags()['settings'])['dims'] == 4
    assert pca.mean.shape == (256,) and pca.components.shape == (4, 256)
    torch.testing.assert_close(
        pca.components @ pca.components.T, torch.eye(4, dtype=torch.float64),
        atol=1e-5, rtol=0,
    )  # fmt: skip
    assert (pca.explained_variance.diff() <= 0).all() and pca.pixels > 1000
    # The stored PCA maps the embeddings to the components written.
    embeddings, components = _read(outputs / 'all.tif'), _read(outputs / 'pc.tif')
    valid = np.isfinite(components).all(axis=0)
    projected = pca.project(torch.from_numpy(embeddings[None]).double())[0].numpy()
    scale = np.abs(components[:, valid]).max()
    np.testing.assert_allclose(
        components[:, valid], projected[:, valid], rtol=0, atol=5e-3 * scale
    )
    # Each component varies over the scene, most in the first.
    spread = components[:, valid].std(axis=1)
    assert spread[0] > 0 and (spread > 0).all()


def _assert_colourful(png: Path, transparent_columns: int) -> None:
    """A preview: RGBA, not one colour, transparent where the input has no data."""
    image = np.asarray(Image.open(png))
    assert image.ndim == 3 and image.shape[2] == 4
    assert (image[:, :transparent_columns, 3] == 0).all()
    rgb = image[image[..., 3] == 255][:, :3]
    assert len(rgb) > 0.9 * image[..., 0].size - transparent_columns * len(image)
    assert (rgb.std(axis=0) > 20).all()
    assert len(np.unique(rgb, axis=0)) > 1000


def test_preview_shows_the_first_components_in_colour(outputs: Path) -> None:
    _assert_colourful(outputs / 'pc.png', transparent_columns=11)
    with rasterio.open(NODATA_SCENE) as src:
        assert Image.open(outputs / 'pc.png').size == (src.width, src.height)
    # Embeddings without a PCA: the preview finds their components itself.
    write_preview(outputs / 'all.tif', outputs / 'all.png')
    _assert_colourful(outputs / 'all.png', transparent_columns=11)


class _Pointwise(nn.Module):
    """Embeds each pixel from its own bands only (a 1 x 1 convolution)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(4, 8, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def _pointwise_metadata() -> ModelMetadata:
    return ModelMetadata(
        model='pointwise',
        backbone='none',
        in_channels=4,
        band_mean=(1000.0, 900.0, 800.0, 2000.0),
        band_std=(300.0, 250.0, 350.0, 700.0),
    )


def test_small_tiles_give_the_embeddings_of_one_tile(
    tmp_path: Path, scenes: Path
) -> None:
    model, metadata = _Pointwise(), _pointwise_metadata()
    scene = scenes / 'crop1.tif'
    whole = embed_raster(model, metadata, scene, tmp_path / 'whole.tif',
                         tile_size=1024, progress=False)  # fmt: skip
    tiled = embed_raster(model, metadata, scene, tmp_path / 'tiled.tif',
                         tile_size=64, overlap=16, batch_size=3,
                         progress=False)  # fmt: skip
    assert whole.tiles == 1 and tiled.tiles > 9
    expected, actual = _read(tmp_path / 'whole.tif'), _read(tmp_path / 'tiled.tif')
    assert expected.std(axis=(1, 2)).min() > 0.1  # varies from pixel to pixel
    # Equal up to the float16 rounding of sums blended in a different order.
    np.testing.assert_allclose(actual, expected, rtol=2e-3, atol=1e-3)


def test_a_scene_larger_than_a_block_has_overviews(tmp_path: Path) -> None:
    # Several float16 bands: GDAL's COG driver cannot make their overviews.
    model, metadata = _Pointwise(), _pointwise_metadata()
    out = tmp_path / 'emb.tif'
    embed_raster(model, metadata, S2_TILE_A, out, progress=False)
    with rasterio.open(out) as dst:
        assert dst.count == 8 and set(dst.dtypes) == {'float16'}
        assert dst.tags(ns='IMAGE_STRUCTURE')['LAYOUT'] == 'COG'
        assert all(dst.overviews(band) == [2] for band in range(1, 9))
        full = dst.read().astype(np.float32)
        half = dst.read(out_shape=(8, 320, 320)).astype(np.float32)
    # The overview is the average of the full resolution's 2 x 2 pixels.
    pooled = full.reshape(8, 320, 2, 320, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(half, pooled, rtol=2e-3, atol=2e-3)


def _in_memory(
    model: nn.Module, metadata: ModelMetadata, path: Path, tile_size: int, overlap: int
) -> np.ndarray:
    """The scene's embeddings over the same tiles, blended over the whole scene."""
    with rasterio.open(path) as src:
        data = src.read()
    height, width = data.shape[1:]
    margin = SCENE_MARGIN
    grown = np.pad(data, ((0, 0), (margin, margin), (margin, margin)), 'reflect')
    mean = np.array(metadata.band_mean, np.float32)[:, None, None]
    std = np.array(metadata.band_std, np.float32)[:, None, None]
    sums = np.zeros((256, height, width), np.float32)
    weights = np.zeros((height, width), np.float32)
    for tile in prediction_grid(height, width, tile_size, overlap):
        w = tile.window
        rows, cols = int(w.height), int(w.width)
        image = (grown[:, w.row_off : w.row_off + rows, w.col_off : w.col_off + cols]
                 - mean) / std  # fmt: skip
        padded = np.pad(image, ((0, 0), (0, -rows % 32), (0, -cols % 32)), 'reflect')
        with torch.inference_mode():
            features = model(torch.from_numpy(padded[None]))[0].numpy()
        top, left = int(w.row_off) - margin, int(w.col_off) - margin
        inside = np.s_[max(0, top) : top + rows, max(0, left) : left + cols]
        crop = np.s_[max(0, -top) : height - top, max(0, -left) : width - left]
        tile_weight = tile_weights(rows, cols, tile.edges)[crop]
        sums[(slice(None), *inside)] += features[(slice(None), *crop)] * tile_weight
        weights[inside] += tile_weight
    return sums / weights


def test_streamed_tiles_equal_the_in_memory_blend_of_the_same_tiles(
    tmp_path: Path,
    scenes: Path,
    checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The network's tiles differ from one whole tile (the ASPP pools each tile):
    # the streamed file must be the blend of the very same tiles.
    model, metadata = load_embedding_network(checkpoint)
    scene = scenes / 'crop0.tif'
    windows: list[Window] = []
    write = CogWriter.write

    def recording(writer: CogWriter, array: np.ndarray, window: Window) -> None:
        windows.append(window)
        write(writer, array, window)

    monkeypatch.setattr(CogWriter, 'write', recording)
    embed_raster(model, metadata, scene, tmp_path / 'emb.tif', tile_size=96,
                 overlap=32, batch_size=2, progress=False)  # fmt: skip
    # Written a band of rows at a time, as tiles finish.
    assert len(windows) >= 3 and max(w.height for w in windows) <= 96
    model.to(memory_format=torch.contiguous_format)
    expected = _in_memory(model, metadata, scene, 96, 32)
    actual = _read(tmp_path / 'emb.tif')
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=2e-3, atol=1e-3 * scale)


def test_a_checkpoint_and_its_exported_weights_give_one_network(
    tmp_path: Path, checkpoint: Path
) -> None:
    exported = tmp_path / 'weights.ckpt'
    export_weights(checkpoint, exported)
    from_checkpoint, metadata = load_embedding_network(checkpoint)
    from_weights, weights_metadata = load_embedding_network(exported)
    assert metadata == weights_metadata and metadata.band_mean is not None
    state, expected = from_weights.state_dict(), from_checkpoint.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    # The pretrained decoder, not a fresh one.
    network = torch.load(checkpoint, weights_only=True)['state_dict']
    decoder = {k.removeprefix('model.model.decoder.'): v for k, v in network.items()
               if k.startswith('model.model.decoder.')}  # fmt: skip
    assert all(torch.equal(from_checkpoint.decoder.state_dict()[k], v)
               for k, v in decoder.items())  # fmt: skip
    fresh = DecoderFeatures('resnet18', 4).decoder.state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in decoder.items())
    assert (
        from_checkpoint.channels
        == GLCNet('resnet18').model.segmentation_head[0].in_channels
    )


def _mtimes(folder: Path) -> dict[str, int]:
    return {name: (folder / name).stat().st_mtime_ns for name in CROPS}


def test_a_folder_gives_one_output_per_scene_and_resumes(
    tmp_path: Path,
    scenes: Path,
    checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / 'embeddings'
    args = ['--in', scenes, '--out', out, '--weights', checkpoint, '--dims', 3,
            *TILING]  # fmt: skip
    assert embed(*args) == 0
    assert sorted(os.listdir(out)) == sorted([*CROPS, 'footprints.gpkg'])
    assert '2 predicted, 0 skipped, 0 failed' in capsys.readouterr().out
    for name in CROPS:
        with rasterio.open(out / name) as dst, rasterio.open(scenes / name) as src:
            assert dst.count == 3 and dst.transform == src.transform
            assert PCA.from_tag(dst.tags()['pca']).dims == 3

    # A killed run leaves complete outputs: a rerun makes only the missing one.
    first = (out / 'crop0.tif').read_bytes()
    os.remove(out / 'crop0.tif')
    kept = (out / 'crop1.tif').stat().st_mtime_ns
    assert embed(*args) == 0
    assert '1 predicted, 1 skipped, 0 failed' in capsys.readouterr().out
    assert (out / 'crop1.tif').stat().st_mtime_ns == kept
    assert (out / 'crop0.tif').read_bytes() == first  # the same seeded PCA
    before = _mtimes(out)
    assert embed(*args, '--overwrite', '--quiet') == 0
    assert all(t > before[n] for n, t in _mtimes(out).items())


def _one_line(
    capture: pytest.CaptureFixture[str], status: int, *fragments: str
) -> None:
    error = capture.readouterr().err
    assert status == 2, error
    assert error.startswith('glcgeo') and error.count('\n') == 1, error
    for fragment in fragments:
        assert fragment in error, error


@pytest.fixture(scope='module')
def encoder_only(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """Exported weights without their decoder (as from SimCLR or MoCo)."""
    weights = read_weights(checkpoint)
    path = tmp_path_factory.mktemp('encoder') / 'encoder.ckpt'
    write_weights(dataclasses.replace(weights, decoder={}), path)
    return path


@pytest.mark.parametrize(
    ('flags', 'fragments'),
    [
        (['--dims', '0'], ['argument --dims: must be > 0']),
        (['--dims', '257'], ['--dims must be 1 to 256, got 257']),
        (['--seed', '-1'], ['argument --seed']),
        (['--preview', 'preview.jpg'], ['preview.jpg', 'must name a .png']),
        (['--weights', 'ENCODER'], ['encoder.ckpt', 'no pretrained decoder']),
        (['--weights', 'SCENE'], ['not a readable checkpoint']),
        (['--out', 'SCENE'], ['output and input must be different files']),
        (['--out', 'EXISTING'], ['output exists (use --overwrite']),
    ],
    ids=['dims-0', 'dims-too-many', 'seed', 'preview-not-png', 'weights-no-decoder',
         'weights-not-a-checkpoint', 'out-is-the-input', 'out-exists'],
)  # fmt: skip
def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path,
    scenes: Path,
    checkpoint: Path,
    encoder_only: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    fragments: list[str],
) -> None:
    scene = tmp_path / 'scene.tif'
    scene.write_bytes((scenes / 'crop0.tif').read_bytes())
    existing = tmp_path / 'existing.tif'
    existing.write_bytes(b'a file of the user')
    names: dict[str, object] = {
        'ENCODER': encoder_only,
        'SCENE': scene,
        'EXISTING': existing,
    }
    given: dict[str, object] = {
        '--in': scene,
        '--out': tmp_path / 'emb.tif',
        '--weights': checkpoint,
    }
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        given[flag] = names.get(value, value)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    argv = [item for pair in given.items() for item in pair]
    _one_line(capsys, embed(*argv, *TILING, '--quiet'), *fragments)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_preview_takes_one_scene(
    tmp_path: Path, scenes: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = embed('--in', scenes, '--out', tmp_path / 'out/', '--weights',
                   checkpoint, '--preview', tmp_path / 'p.png')  # fmt: skip
    _one_line(capsys, status, '--preview takes one scene')
    assert os.listdir(tmp_path) == []


def test_ctrl_c_is_one_line_and_leaves_nothing(
    tmp_path: Path, checkpoint: Path
) -> None:
    scene = tmp_path / 'scene.tif'
    scene.write_bytes(S2_TILE_A.read_bytes())
    process = subprocess.Popen(
        [sys.executable, '-m', 'glcgeo', 'embed', '--in', str(scene), '--out',
         'emb.tif', '--weights', str(checkpoint), '--tile-size', '64',
         '--overlap', '32', '--quiet'],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    # Pressed while the embeddings are being written.
    deadline = time.monotonic() + 300
    while not any(
        re.match(r'\.emb\.tif\..*\.partial', p) for p in os.listdir(tmp_path)
    ):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode in (130, -signal.SIGINT), err
    assert err == 'glcgeo: interrupted\n'
    assert os.listdir(tmp_path) == ['scene.tif']
