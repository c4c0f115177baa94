"""Tiled inference: tiling, blending, checkpoints, COG writing and the Python API."""

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from conftest import fcn_task, save_task_checkpoint, warp_raster
from torch import nn
from torchgeo.samplers import GriddedPatchSampler
from torchgeo.tasks import SemanticSegmentation

import glcgeo.inference.predict as predict_module
from glcgeo.cli import main
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.errors import GlcgeoError
from glcgeo.inference import (
    CheckpointMetadata,
    RowBandAccumulator,
    Tile,
    TileGrid,
    load_segmentation_checkpoint,
    predict_dataset,
    predict_raster,
    prediction_grid,
    tile_weights,
)
from glcgeo.inference.patches import Patch, batch_patches
from glcgeo.inference.reading import (
    SCENE_MARGIN,
    Placement,
    SceneReader,
    read_ahead,
)
from glcgeo.rasters import valid_pixels
from glcgeo.tasks import FinetuneTask

DATA = Path(__file__).parent / 'data'
S2 = DATA / 'sentinel2_10m_tiles' / 'S2_L1C_18SUH_tileA_B02-B03-B04-B08.tif'
RGB1 = DATA / 'landsat7_rgb_quadrants' / 'rgb1.tif'
RGB1_3857 = DATA / 'landsat7_rgb_quadrants' / 'rgb1_fake_nir_epsg3857.tif'
L8 = DATA / 'landsat8_7band' / 'l8_B1-B7_crop256.tif'
RGBN = DATA / 'rgbn_5m_overlap' / 'rgbn.tif'
RGBN_SUB = DATA / 'rgbn_5m_overlap' / 'rgbn_suba.tif'

NUM_CLASSES = 6

#: A class map's files: the map and its sidecars for GDAL and QGIS.
MAP_FILES = ['map.qml', 'map.tif', 'map.tif.aux.xml']


def _band_stats(path: Path) -> tuple[list[float], list[float]]:
    """Per-band mean and std of a file's non-zero pixels."""
    with rasterio.open(path) as src:
        data = src.read().reshape(src.count, -1).astype(np.float64)
    data = data[:, (data != 0).any(axis=0)]
    return data.mean(axis=1).tolist(), data.std(axis=1).tolist()


@pytest.fixture(scope='module')
def fcn_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Plain TorchGeo SemanticSegmentation checkpoints, by input band count."""
    folder = tmp_path_factory.mktemp('fcn')
    return {
        bands: save_task_checkpoint(
            fcn_task(bands, NUM_CLASSES), folder / f'fcn{bands}.ckpt'
        )
        for bands in (3, 4)
    }


GLCGEO_EXTRAS = {
    'bands': [3, 2, 1, 4],
    'band_mean': [1000.0, 900.0, 800.0, 2000.0],
    'band_std': [300.0, 250.0, 350.0, 700.0],
    'class_names': ['water', 'forest', 'crop', 'urban', 'wetland'],
    'class_colors': [
        [0, 0, 255],
        [0, 128, 0],
        [255, 255, 0],
        [255, 0, 0],
        [0, 255, 255],
    ],
    'ignore_index': None,
}


@pytest.fixture(scope='module')
def glcgeo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DeepLabV3+ checkpoint with the extras glcgeo's fine-tuning writes."""
    torch.manual_seed(0)
    task = SemanticSegmentation(
        model='deeplabv3+', backbone='resnet18', in_channels=4, num_classes=5
    )
    task.hparams.update(GLCGEO_EXTRAS)
    return save_task_checkpoint(task, tmp_path_factory.mktemp('glcgeo') / 'ft.ckpt')


def _pointwise(
    in_channels: int, **metadata: object
) -> tuple[nn.Module, CheckpointMetadata]:
    """A 1x1-convolution model: its prediction of a pixel depends on that pixel only."""
    torch.manual_seed(1)
    model = nn.Conv2d(in_channels, NUM_CLASSES, kernel_size=1)
    return model, CheckpointMetadata(
        model='pointwise',
        backbone='none',
        in_channels=in_channels,
        num_classes=NUM_CLASSES,
        **metadata,  # type: ignore[arg-type]
    )


def _expected_pointwise(
    model: nn.Module, path: Path, mean: list[float], std: list[float]
) -> np.ndarray:
    """The pointwise model's map computed over the whole image at once, in numpy."""
    with rasterio.open(path) as src:
        data = src.read().astype(np.float64)
        valid = src.dataset_mask() > 0
    x = (data - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    weight = model.weight.detach().double().numpy()[:, :, 0, 0]
    logits = (
        np.einsum('kc,chw->khw', weight, x)
        + model.bias.detach().double().numpy()[:, None, None]
    )
    return np.where(valid, logits.argmax(axis=0), 255)


def _read(path: Path | str) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


# Tiling and blending.


def test_tile_grid_covers_scene_with_inward_edge_tiles() -> None:
    grid = TileGrid(height=640, width=1000, tile_size=512, overlap=128)
    assert grid.row_offsets == [0, 128]
    assert grid.col_offsets == [0, 384, 488]
    tiles = list(grid)
    assert len(tiles) == len(grid) == 6
    cover = np.zeros((640, 1000), int)
    for tile in tiles:
        w = tile.window
        assert w.width == w.height == 512 and w.col_off + w.width <= 1000
        cover[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert cover.min() >= 1
    assert tiles[0].edges == (True, False, True, False)
    assert [grid.rows_finished(t) for t in tiles] == [0, 0, 128, 128, 128, 640]


def test_tile_grid_rounds_awkward_sizes_and_handles_small_scenes() -> None:
    grid = TileGrid(height=640, width=640, tile_size=200, overlap=37, multiple=32)
    # 224-pixel tiles at the asked stride of 163: the extra 24 pixels widen the overlap.
    assert grid.tile_width == 224 and grid.col_offsets == [0, 163, 326, 416]
    small = TileGrid(height=40, width=700, tile_size=512, overlap=128)
    assert (small.tile_height, small.tile_width) == (40, 512)
    assert small.row_offsets == [0]
    with pytest.raises(GlcgeoError, match='overlap'):
        TileGrid(height=100, width=100, tile_size=64, overlap=64)


def test_tile_weights_peak_in_the_centre_and_stay_flat_on_scene_edges() -> None:
    inner = tile_weights(64, 64, (False, False, False, False))
    assert inner.min() > 0 and inner.max() <= 1
    assert inner[32, 32] > 0.99 and inner[0, 32] < 0.01
    corner = tile_weights(64, 64, (True, False, True, False))
    # The top-left corner of the scene is covered by this tile only: full weight.
    assert corner[0, 0] == 1 and corner[63, 63] < 0.01


def test_row_band_accumulator_blends_and_hands_out_finished_rows() -> None:
    from rasterio.windows import Window

    band = RowBandAccumulator(width=4, channels=2)
    ones = torch.ones((2, 3, 4))
    band.add(
        Window(0, 0, 4, 3),
        ones * torch.tensor([1.0, 0.0])[:, None, None],
        torch.full((3, 4), 1.0),
        torch.ones((3, 4), dtype=torch.bool),
    )
    band.add(
        Window(0, 2, 4, 3),
        ones * torch.tensor([0.0, 1.0])[:, None, None],
        torch.full((3, 4), 3.0),
        torch.zeros((3, 4), dtype=torch.bool),
    )
    top, scores, valid = band.pop(2)
    # Classes first: [classes, rows, columns].
    assert top == 0 and scores.shape == (2, 2, 4) and valid.all()
    np.testing.assert_allclose(scores[:, :, 0], [[1, 1], [0, 0]])
    top, scores, valid = band.pop(5)
    assert top == 2 and valid[:, 0].tolist() == [True, False, False]
    # Row 2 was covered by both tiles: weights 1 and 3.
    np.testing.assert_allclose(scores[:, 0, 0], [0.25, 0.75])
    np.testing.assert_allclose(scores[:, 1:, 0], [[0, 0], [1, 1]])
    assert band.top == 5
    # The buffers are reused, cleared: a third tile sees no trace of the others.
    band.add(
        Window(0, 5, 4, 2),
        ones[:, :2] * 0.5,
        torch.full((2, 4), 2.0),
        torch.ones((2, 4), dtype=torch.bool),
    )
    top, scores, valid = band.pop(7)
    assert top == 5 and valid.all() and band.capacity == 5
    np.testing.assert_allclose(scores, 0.5)


def test_tiles_are_read_ahead_in_a_bounded_thread() -> None:
    from rasterio.windows import Window

    read: list[int] = []

    def patches(fail_at: int = -1) -> Iterator[Patch | None]:
        for item in range(40):
            if item == fail_at:
                raise OSError('read failed')
            read.append(item)
            patch = Patch(
                data=np.full((2, 4, 4), item, dtype=np.uint16),
                holds_data=np.ones((4, 4), dtype=bool),
                placement=Placement(
                    Window(0, 0, 4, 4), (slice(0, 4), slice(0, 4)), (False,) * 4
                ),
            )
            # Every fifth item holds no data: it ends the batch in progress.
            yield None if item % 5 == 4 else patch

    batches = read_ahead(batch_patches(patches(), batch_size=2), depth=2)
    with closing(batches):
        first = next(batches)
        assert first.data is not None and first.data[:, 0, 0, 0].tolist() == [0, 1]
        # While the model holds the first batch, the thread reads the next ones,
        # but at most `depth` batches (and the one it is putting) ahead.
        deadline = time.monotonic() + 10
        while len(read) <= 2 * 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert 2 * 2 < len(read) <= 2 * (1 + 2 + 1) + 1
        rest = list(batches)
    assert sum(b.items for b in [first, *rest]) == 40
    # The last item (39) holds no data and ends the read in a batch of its own.
    assert rest[-1].items == 1 and not rest[-1].patches
    assert [len(b.patches) for b in rest[:3]] == [2, 0, 2]
    # Errors of the reading reach the caller; closing stops the thread.
    with (
        pytest.raises(OSError, match='read failed'),
        closing(read_ahead(batch_patches(patches(7), 2))) as failing,
    ):
        list(failing)
    stopped = read_ahead(batch_patches(patches(), batch_size=1))
    next(stopped)
    stopped.close()
    assert not any(t.name == 'glcgeo-read-ahead' for t in threading.enumerate())


@pytest.mark.parametrize(
    ('tile_size', 'overlap', 'tiles_per_read'),
    # Tiles of 64 px and less hold fewer scene rows and columns at the edges
    # than the margin they mirror.
    [(160, 40, 2), (96, 64, 4), (700, 0, 1), (64, 32, 3), (32, 24, 5)],
)
def test_scene_reader_decodes_each_block_once(
    tile_size: int, overlap: int, tiles_per_read: int
) -> None:
    class Recording:
        """The open scene, noting the rows of each read."""

        def __init__(self, src: rasterio.DatasetReader) -> None:
            self.src = src
            self.reads: list[tuple[int, int]] = []

        def __getattr__(self, name: str) -> object:
            return getattr(self.src, name)

        def read(self, *args: object, **kwargs: object) -> np.ndarray:
            window = kwargs['window']
            self.reads.append((window.row_off, window.row_off + window.height))
            return self.src.read(*args, **kwargs)

    with rasterio.open(S2) as src:
        scene = src.read()
        recording = Recording(src)
        reader = SceneReader(
            recording,  # type: ignore[arg-type]
            [1, 2, 3, 4],
            None,
            S2,
            tiles_per_read=tiles_per_read,
        )
        grid = prediction_grid(src.height, src.width, tile_size, overlap)
        strips = list(reader.strips(grid))
    # Whole rows of 256-row blocks, each read once, top to bottom.
    assert recording.reads[0][0] == 0 and recording.reads[-1][1] == 640
    for (_, end), (start, _) in itertools.pairwise(recording.reads):
        assert start == end and end % 256 == 0
    # Each strip holds its window of the scene grown by mirrored margins.
    grown = np.pad(scene, ((0, 0), *[(SCENE_MARGIN, SCENE_MARGIN)] * 2), 'reflect')
    assert sum(len(strip.tiles) for strip in strips) == len(grid)
    for strip in strips:
        if strip.data is None:  # tiles of the margin only
            assert not any(placement for _, placement in strip.tiles)
            continue
        first, _ = strip.tiles[0]
        rows = slice(
            int(first.window.row_off), int(first.window.row_off) + grid.tile_height
        )
        cols = slice(strip.col_off, strip.col_off + strip.data.shape[-1])
        np.testing.assert_array_equal(strip.data.numpy(), grown[:, rows, cols])


# Checkpoints.


def test_glcgeo_checkpoint_gives_model_and_metadata(glcgeo_checkpoint: Path) -> None:
    model, metadata = load_segmentation_checkpoint(glcgeo_checkpoint)
    assert (metadata.model, metadata.backbone, metadata.num_classes) == (
        'deeplabv3+',
        'resnet18',
        5,
    )
    assert metadata.bands == (3, 2, 1, 4)
    assert metadata.band_mean == tuple(GLCGEO_EXTRAS['band_mean'])
    assert metadata.class_names == tuple(GLCGEO_EXTRAS['class_names'])
    assert metadata.class_colors[2] == (255, 255, 0)
    state = torch.load(glcgeo_checkpoint, weights_only=True)['state_dict']
    assert torch.equal(
        model.state_dict()['segmentation_head.0.weight'],
        state['model.segmentation_head.0.weight'],
    )
    assert not model.training


def test_finetune_task_checkpoint_loads(tmp_path: Path) -> None:
    task = FinetuneTask(
        model='unet',
        backbone='resnet18',
        in_channels=4,
        num_classes=3,
        class_names=['water', 'land', 'cloud'],
        band_mean=[1.0, 2.0, 3.0, 4.0],
        band_std=[5.0, 6.0, 7.0, 8.0],
    )
    _, metadata = load_segmentation_checkpoint(
        save_task_checkpoint(task, tmp_path / 'finetune.ckpt')
    )
    assert metadata.class_names == ('water', 'land', 'cloud')
    assert metadata.band_std == (5.0, 6.0, 7.0, 8.0)


def test_torchgeo_checkpoint_gets_default_names_and_palette(
    fcn_checkpoints: dict[int, Path],
) -> None:
    _, metadata = load_segmentation_checkpoint(fcn_checkpoints[4])
    assert (
        metadata.model == 'fcn'
        and metadata.band_mean is None
        and metadata.bands is None
    )
    assert metadata.class_names == tuple(f'class_{i}' for i in range(NUM_CLASSES))
    assert len(set(metadata.class_colors)) == NUM_CLASSES
    with pytest.raises(GlcgeoError, match='2 class names'):
        metadata.replace(class_names=['a', 'b'])


def test_unreadable_checkpoints_are_clear_errors(
    tmp_path: Path, fcn_checkpoints: dict[int, Path]
) -> None:
    garbage = tmp_path / 'garbage.ckpt'
    garbage.write_text('not a checkpoint')
    plain = tmp_path / 'plain.ckpt'
    torch.save({'weights': torch.zeros(3)}, plain)
    bare = tmp_path / 'bare.ckpt'
    torch.save({'state_dict': {'model.weight': torch.zeros(3)}}, bare)
    mismatched = tmp_path / 'mismatched.ckpt'
    checkpoint = torch.load(fcn_checkpoints[4], weights_only=True)
    checkpoint['hyper_parameters']['num_classes'] = 3
    torch.save(checkpoint, mismatched)
    for path, message in [
        (tmp_path / 'missing.ckpt', 'no such checkpoint'),
        (garbage, 'not a readable checkpoint'),
        (plain, 'not a Lightning checkpoint'),
        (bare, 'not a segmentation checkpoint'),
        (mismatched, 'weights do not fit'),
    ]:
        with pytest.raises(GlcgeoError, match=message):
            load_segmentation_checkpoint(path)


# Prediction.


def _fcn_for(
    path: Path, fcn_checkpoints: dict[int, Path]
) -> tuple[nn.Module, CheckpointMetadata]:
    """The FCN taking the file's bands, normalised by the file's statistics."""
    with rasterio.open(path) as src:
        count = src.count
    model, metadata = load_segmentation_checkpoint(fcn_checkpoints[count])
    mean, std = _band_stats(path)
    return model, metadata.replace(band_mean=mean, band_std=std)


@pytest.mark.parametrize(
    ('path', 'tile_size', 'overlap'),
    [(S2, 512, 128), (S2, 333, 97), (RGB1, 160, 40)],
    ids=['sentinel2-default', 'sentinel2-awkward', 'landsat-quadrant-awkward'],
)
def test_tiled_prediction_is_seamless(
    tmp_path: Path,
    fcn_checkpoints: dict[int, Path],
    path: Path,
    tile_size: int,
    overlap: int,
) -> None:
    model, metadata = _fcn_for(path, fcn_checkpoints)
    whole = predict_raster(
        model, metadata, path, tmp_path / 'whole.tif', tile_size=10_000, progress=False
    )
    tiled = predict_raster(
        model,
        metadata,
        path,
        tmp_path / 'tiled.tif',
        tile_size=tile_size,
        overlap=overlap,
        progress=False,
    )
    assert whole.tiles == 1 and tiled.tiles > 1
    expected, actual = _read(tmp_path / 'whole.tif'), _read(tmp_path / 'tiled.tif')
    # The map must not be trivial for the agreement to mean anything.
    valid = expected[expected != 255]
    assert (np.bincount(valid, minlength=NUM_CLASSES) > 0.01 * valid.size).sum() >= 3
    assert (expected == actual).mean() >= 0.995


@pytest.mark.parametrize(
    ('tile_size', 'overlap', 'tiles', 'skipped'),
    # 128-pixel tiles over the scene and its margins; 32-pixel tiles, some of
    # which hold margin only.
    [(100, 10, 4 * 4, 0), (32, 8, 13 * 13, 4 * 13 - 4)],
)
def test_pointwise_model_gives_exact_map_with_awkward_tiles(
    tmp_path: Path, tile_size: int, overlap: int, tiles: int, skipped: int
) -> None:
    mean, std = _band_stats(L8)
    model, metadata = _pointwise(7, band_mean=tuple(mean), band_std=tuple(std))
    summary = predict_raster(
        model,
        metadata,
        L8,
        tmp_path / 'map.tif',
        tile_size=tile_size,
        overlap=overlap,
        batch_size=3,
        progress=False,
    )
    assert (summary.tiles, summary.skipped_tiles) == (tiles, skipped)
    np.testing.assert_array_equal(
        _read(tmp_path / 'map.tif'), _expected_pointwise(model, L8, mean, std)
    )


def _host_path_map(
    model: nn.Module,
    metadata: CheckpointMetadata,
    path: Path,
    tile_size: int,
    overlap: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The class map and percentages of the former host path, in numpy.

    Tiles of the mirrored scene are normalised in float32, predicted in the same
    batches on the CPU, and their softmax scores blended with Hann weights over the
    whole scene, then the first most probable class is taken: what glcgeo computed
    on the host before the model's device did it.
    """
    with rasterio.open(path) as src:
        data = src.read(list(metadata.bands or range(1, src.count + 1)))
        nodata = src.nodata
    height, width = data.shape[1:]
    valid = valid_pixels(torch.from_numpy(data), nodata).numpy()
    margin = SCENE_MARGIN
    grown = np.pad(data, ((0, 0), (margin, margin), (margin, margin)), 'reflect')
    grown_valid = np.pad(valid, margin, 'reflect')
    mean = np.array(metadata.band_mean, np.float32)[:, None, None]
    std = np.array(metadata.band_std, np.float32)[:, None, None]
    scores = np.zeros((metadata.num_classes, height, width), np.float32)
    weights = np.zeros((height, width), np.float32)
    pending: list[tuple[Tile, np.ndarray]] = []

    def run() -> None:
        batch = torch.from_numpy(np.stack([image for _, image in pending]))
        with torch.inference_mode():
            probabilities = model(batch).softmax(dim=1).numpy()
        for (tile, _), tile_scores in zip(pending, probabilities, strict=True):
            w = tile.window
            th, tw = int(w.height), int(w.width)
            tile_weight = tile_weights(th, tw, tile.edges)
            rows = slice(
                max(0, w.row_off - margin), min(height, w.row_off + th - margin)
            )
            cols = slice(
                max(0, w.col_off - margin), min(width, w.col_off + tw - margin)
            )
            inner = (
                slice(rows.start + margin - w.row_off, rows.stop + margin - w.row_off),
                slice(cols.start + margin - w.col_off, cols.stop + margin - w.col_off),
            )
            scores[:, rows, cols] += (
                tile_scores[:, inner[0], inner[1]] * tile_weight[inner]
            )
            weights[rows, cols] += tile_weight[inner]
        pending.clear()

    for tile in prediction_grid(height, width, tile_size, overlap):
        w = tile.window
        window = np.s_[
            w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width
        ]
        inside = grown_valid[window][
            max(0, margin - w.row_off) : height + margin - w.row_off,
            max(0, margin - w.col_off) : width + margin - w.col_off,
        ]
        if not inside.any():
            continue
        image = (grown[(slice(None), *window)].astype(np.float32) - mean) / std
        image[:, ~grown_valid[window]] = 0
        pad = ((0, 0), (0, -image.shape[1] % 32), (0, -image.shape[2] % 32))
        pending.append((tile, np.pad(image, pad, 'reflect')))
        if len(pending) == batch_size:
            run()
    if pending:
        run()
    blended = scores / np.maximum(weights, np.float32(1e-12))
    classes = np.where(valid, blended.argmax(axis=0), 255)
    percent = np.where(valid, np.rint(blended * 100), 255).astype(np.uint8)
    return classes, percent


@pytest.mark.parametrize(
    ('path', 'tile_size', 'overlap', 'batch_size'),
    [
        (S2, 512, 128, 4),
        (RGB1, 160, 40, 3),
        (RGBN_SUB, 100, 30, 2),
        # Rows of tiles lying in the mirrored margin only, batches across rows.
        (RGBN_SUB, 32, 0, 5),
        # Edge tiles with fewer scene pixels than the margin they mirror.
        (RGBN_SUB, 64, 32, 3),
        (RGBN_SUB, 32, 8, 4),
    ],
    ids=[
        'sentinel2-default',
        'landsat-frame-awkward',
        'rgbn-strip-small',
        'rgbn-margin-rows',
        'rgbn-thin-edges',
        'rgbn-thinner-edges',
    ],
)
def test_device_path_gives_the_host_path_map(
    tmp_path: Path,
    fcn_checkpoints: dict[int, Path],
    path: Path,
    tile_size: int,
    overlap: int,
    batch_size: int,
) -> None:
    model, metadata = _fcn_for(path, fcn_checkpoints)
    settings = {
        'tile_size': tile_size,
        'overlap': overlap,
        'batch_size': batch_size,
        'progress': False,
    }
    predict_raster(
        model,
        metadata,
        path,
        tmp_path / 'map.tif',
        probabilities=tmp_path / 'p.tif',
        **settings,
    )
    # Without probabilities the classes come from the unnormalised sums.
    predict_raster(model, metadata, path, tmp_path / 'alone.tif', **settings)
    classes, percent = _host_path_map(
        model, metadata, path, tile_size, overlap, batch_size
    )
    assert len(np.unique(classes)) >= 3  # a map worth comparing
    np.testing.assert_array_equal(_read(tmp_path / 'map.tif'), classes)
    np.testing.assert_array_equal(_read(tmp_path / 'alone.tif'), classes)
    with rasterio.open(tmp_path / 'p.tif') as probabilities:
        np.testing.assert_array_equal(probabilities.read(), percent)


def _epsg4326_copy(tmp_path: Path) -> Path:
    """Landsat quadrant warped to EPSG:4326 (degrees)."""
    return warp_raster(RGB1, tmp_path / 'rgb1_4326.tif', 'EPSG:4326')


GEOREFERENCED = {
    'custom-wkt': RGB1,
    'epsg3857-1band': RGB1_3857,
    'epsg32618-uint16': S2,
    'epsg32618-uint8': RGBN,
    'epsg32616-7band': L8,
}


@pytest.mark.parametrize('name', [*GEOREFERENCED, 'epsg4326'])
def test_output_keeps_georeferencing_and_is_a_cog(tmp_path: Path, name: str) -> None:
    path = GEOREFERENCED.get(name) or _epsg4326_copy(tmp_path)
    with rasterio.open(path) as src:
        count, crs, transform, shape = src.count, src.crs, src.transform, src.shape
    model, metadata = _pointwise(count, class_names=tuple('abcdef'))
    out = tmp_path / 'map.tif'
    predict_raster(
        model, metadata, path, out, tile_size=256, overlap=64, progress=False
    )
    assert sorted(os.listdir(tmp_path)) == sorted(
        [*MAP_FILES, *(['rgb1_4326.tif'] if name == 'epsg4326' else [])]
    )
    with rasterio.open(out) as dst:
        assert dst.crs == crs and dst.crs.to_wkt() == crs.to_wkt()
        assert dst.transform == transform and dst.shape == shape
        assert dst.dtypes[0] == 'uint8' and dst.nodata == 255
        assert dst.tags(ns='IMAGE_STRUCTURE')['LAYOUT'] == 'COG'
        assert dst.profile['tiled'] and dst.compression.name == 'deflate'
        assert dst.colormap(1)[0] == (*metadata.class_colors[0], 255)
        assert json.loads(dst.tags(1)['class_names']) == list('abcdef')
        if max(shape) > 512:
            assert dst.overviews(1)


@pytest.mark.parametrize(
    ('path', 'empty_tiles'),
    [(RGB1, True), (RGBN_SUB, False)],
    ids=['rgb-uint8-frame', 'rgbn-uint8-strip'],
)
def test_nodata_skips_empty_tiles_and_stays_nodata(
    tmp_path: Path, path: Path, empty_tiles: bool
) -> None:
    mean, std = _band_stats(path)
    with rasterio.open(path) as src:
        count = src.count
    model, metadata = _pointwise(count, band_mean=tuple(mean), band_std=tuple(std))
    summary = predict_raster(
        model,
        metadata,
        path,
        tmp_path / 'map.tif',
        probabilities=tmp_path / 'p.tif',
        tile_size=64,
        overlap=16,
        progress=False,
    )
    # Rgb1's wide nodata frame holds whole tiles; rgbn_suba's 11-column strip none.
    assert (summary.skipped_tiles > 0) == empty_tiles
    expected = _expected_pointwise(model, path, mean, std)
    np.testing.assert_array_equal(_read(tmp_path / 'map.tif'), expected)
    with rasterio.open(tmp_path / 'p.tif') as probabilities:
        percent = probabilities.read()
        assert probabilities.descriptions == metadata.class_names
        assert probabilities.scales == (0.01,) * NUM_CLASSES
    assert (percent[:, expected == 255] == 255).all()
    totals = percent[:, expected != 255].sum(axis=0, dtype=int)
    assert np.abs(totals - 100).max() <= NUM_CLASSES // 2 + 1


def test_internal_mask_and_nan_are_nodata(tmp_path: Path) -> None:
    masked = tmp_path / 'masked.tif'
    with rasterio.open(S2) as src:
        data = src.read().astype(np.float32)
        profile = {**src.profile, 'dtype': 'float32'}
    data[:, 500:, :] = np.nan  # bottom rows: NaN in every band
    mask = np.full(data.shape[1:], 255, np.uint8)
    mask[:, :200] = 0  # left columns: masked by the file's internal mask
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(masked, 'w', **profile) as dst,
    ):
        dst.write(data)
        dst.write_mask(mask)
    model, metadata = _pointwise(4)
    summary = predict_raster(
        model,
        metadata,
        masked,
        tmp_path / 'map.tif',
        tile_size=128,
        overlap=32,
        progress=False,
    )
    classes = _read(tmp_path / 'map.tif')
    assert (classes[500:] == 255).all() and (classes[:, :200] == 255).all()
    assert (classes[:500, 200:] != 255).all()
    assert summary.skipped_tiles >= 5


def test_binary_model_maps_its_sigmoid(tmp_path: Path) -> None:
    mean, std = _band_stats(S2)
    torch.manual_seed(3)
    model = nn.Conv2d(4, 1, kernel_size=1)  # one logit: a binary task
    metadata = CheckpointMetadata(
        model='pointwise',
        backbone='none',
        in_channels=4,
        num_classes=2,
        task='binary',
        band_mean=tuple(mean),
        band_std=tuple(std),
    )
    predict_raster(
        model,
        metadata,
        S2,
        tmp_path / 'map.tif',
        probabilities=tmp_path / 'p.tif',
        tile_size=256,
        overlap=64,
        progress=False,
    )
    with rasterio.open(S2) as src:
        x = (src.read().astype(np.float64) - np.array(mean)[:, None, None]) / np.array(
            std
        )[:, None, None]
    weight = model.weight.detach().double().numpy()[0, :, 0, 0]
    logit = np.einsum('c,chw->hw', weight, x) + float(model.bias.detach()[0])
    classes = _read(tmp_path / 'map.tif')
    assert set(np.unique(classes)) == {0, 1}
    # Class 1 where the sigmoid passes one half (float32 against float64 aside).
    assert (classes == (logit > 0)).mean() >= 0.9999
    with rasterio.open(tmp_path / 'p.tif') as probabilities:
        percent = probabilities.read().astype(int)
    assert np.abs(percent.sum(axis=0) - 100).max() <= 1
    expected = np.rint(100 / (1 + np.exp(-logit)))
    assert np.abs(percent[1] - expected).max() <= 1


def test_ignore_index_is_never_predicted(tmp_path: Path) -> None:
    model, metadata = _pointwise(7)
    with torch.no_grad():
        model.bias[0] = 1e6  # class 0 would win everywhere
    predict_raster(
        model,
        metadata.replace(ignore_index=0),
        L8,
        tmp_path / 'map.tif',
        progress=False,
    )
    classes = _read(tmp_path / 'map.tif')
    assert 0 not in classes and (classes != 255).all()


def test_memory_is_bounded_by_tile_rows_not_scene(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    largest: list[int] = []

    class Recording(RowBandAccumulator):
        def pop(self, end: int, normalize: bool = True):  # type: ignore[no-untyped-def]
            largest.append(self.capacity)
            return super().pop(end, normalize)

    monkeypatch.setattr(predict_module, 'RowBandAccumulator', Recording)
    model, metadata = _pointwise(4)
    summary = predict_raster(
        model,
        metadata,
        S2,
        tmp_path / 'map.tif',
        tile_size=64,
        overlap=16,
        batch_size=4,
        progress=False,
    )
    assert summary.tiles == 15 * 15
    # The band holds the current tile row and the next one, never the scene (640 rows).
    assert max(largest) <= 2 * 64


def test_predict_dataset_stitches_torchgeo_patches(
    tmp_path: Path, fcn_checkpoints: dict[int, Path]
) -> None:
    model, metadata = load_segmentation_checkpoint(fcn_checkpoints[4])
    mean, std = _band_stats(S2)
    metadata = metadata.replace(band_mean=mean, band_std=std)
    dataset = GeoTiffMosaic(S2)
    sampler = GriddedPatchSampler(dataset, size=256, stride=192)
    result = predict_dataset(model, metadata, dataset, sampler)
    predict_raster(model, metadata, S2, tmp_path / 'raster.tif', progress=False)
    with rasterio.open(S2) as src:
        assert result.transform.almost_equals(src.transform, precision=1e-9)
    assert result.classes.shape == (640, 640)
    # The rasters' mirrored margins change the few pixels on the scene's edges.
    same = result.classes == _read(tmp_path / 'raster.tif')
    assert same[8:-8, 8:-8].mean() >= 0.999
    result.write(tmp_path / 'dataset.tif')
    with rasterio.open(tmp_path / 'dataset.tif') as dst:
        assert dst.crs.to_epsg() == 32618 and dst.colormap(1)
        # Its provenance, and its class names for GDAL and QGIS, as predict_raster's.
        assert str(S2.resolve()) in dst.tags()['source']
        assert json.loads(dst.tags()['band_mean']) == mean
    assert (tmp_path / 'dataset.tif.aux.xml').exists()
    assert (tmp_path / 'dataset.qml').exists()


class _InputRecorder(nn.Module):
    """A pointwise model that records its batch sizes and memory formats."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, NUM_CLASSES, kernel_size=1)
        self.batch_sizes: list[int] = []
        self.channels_last: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(x))
        self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.conv(x)


def test_cpu_models_run_channels_last(tmp_path: Path) -> None:
    # PyTorch's convolutions are faster so on the CPU, and the input's conversion
    # would otherwise be copied inside every convolution.
    cpu = torch.device('cpu')
    assert predict_module.model_memory_format(cpu) == torch.channels_last
    # Elsewhere the model keeps its own, channels-last for mixed precision say.
    assert predict_module.model_memory_format(torch.device('cuda')) is None
    model = _InputRecorder(4)
    metadata = CheckpointMetadata(
        model='pointwise', backbone='none', in_channels=4, num_classes=NUM_CLASSES
    )
    predict_raster(
        model, metadata, S2, tmp_path / 'map.tif', tile_size=256, progress=False
    )
    dataset = GeoTiffMosaic(S2)
    sampler = GriddedPatchSampler(dataset, size=200, stride=150)
    predict_dataset(model, metadata, dataset, sampler, device=cpu)
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert len(model.channels_last) > 2 and all(model.channels_last)


def test_reading_runs_ahead_where_it_pays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    # On the CPU the model's threads take every core: a reader thread among them
    # costs more than it hides, unless it waits on a network.
    assert not predict_module.reads_ahead(cpu)
    assert predict_module.reads_ahead(cpu, remote=True)
    assert predict_module.reads_ahead(cuda)

    def no_thread(items: object) -> None:
        raise AssertionError('a reader thread on the CPU')

    monkeypatch.setattr(predict_module, 'read_ahead', no_thread)
    model, metadata = _pointwise(4)
    predict_raster(
        model, metadata, S2, tmp_path / 'map.tif', device='cpu', progress=False
    )
    dataset = GeoTiffMosaic(S2)
    sampler = GriddedPatchSampler(dataset, size=200, stride=150)
    predict_dataset(model, metadata, dataset, sampler, device='cpu')


def test_cpu_batches_make_one_512_px_tile_unless_told(tmp_path: Path) -> None:
    # One 512 px tile's activations stay in memory that glibc reuses, a batch's
    # do not; smaller tiles are batched up to its pixels.
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    sides = {512: 1, 1024: 1, 384: 1, 256: 4, 200: 6, 128: 16, 1: 262144}
    for side, batch_size in sides.items():
        assert predict_module.default_batch_size(cpu, side * side) == batch_size
        assert predict_module.default_batch_size(cuda, side * side) == 4
    metadata = CheckpointMetadata(
        model='pointwise', backbone='none', in_channels=4, num_classes=NUM_CLASSES
    )
    dataset = GeoTiffMosaic(S2)
    sampler = GriddedPatchSampler(dataset, size=200, stride=150)
    # 256 px tiles by 4 unless told; 200 px patches (16 of them) by 6.
    tile_count = len(prediction_grid(640, 640, 256, 64))
    for batch_size, tiles, patches in [(None, 4, 6), (3, 3, 3)]:
        model = _InputRecorder(4)
        predict_raster(
            model,
            metadata,
            S2,
            tmp_path / 'map.tif',
            tile_size=256,
            overlap=64,
            batch_size=batch_size,
            device='cpu',
            overwrite=True,
            progress=False,
        )
        assert max(model.batch_sizes) == tiles
        assert sum(model.batch_sizes) == tile_count
        model.batch_sizes.clear()
        predict_dataset(
            model, metadata, dataset, sampler, batch_size=batch_size, device='cpu'
        )
        assert max(model.batch_sizes) == patches and sum(model.batch_sizes) == 16
    for call in (
        lambda: predict_raster(
            model, metadata, S2, tmp_path / 'zero.tif', batch_size=0, progress=False
        ),
        lambda: predict_dataset(model, metadata, dataset, sampler, batch_size=0),
    ):
        with pytest.raises(GlcgeoError, match='batch size must be positive, got 0'):
            call()
    assert not (tmp_path / 'zero.tif').exists()


class _ViewingModel(nn.Conv2d):
    """A pointwise model that views its input as contiguous, as some models do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.view(x.shape[0], -1)  # fails on channels-last input
        return super().forward(flat.view(x.shape))


def test_a_model_failing_on_channels_last_input_runs_contiguous(
    tmp_path: Path,
) -> None:
    mean, std = _band_stats(L8)
    torch.manual_seed(1)
    model = _ViewingModel(7, NUM_CLASSES, kernel_size=1)
    _, metadata = _pointwise(7, band_mean=tuple(mean), band_std=tuple(std))
    with pytest.warns(UserWarning, match='fails on channels-last input'):
        predict_raster(
            model,
            metadata,
            L8,
            tmp_path / 'map.tif',
            tile_size=96,
            overlap=32,
            progress=False,
        )
    np.testing.assert_array_equal(
        _read(tmp_path / 'map.tif'), _expected_pointwise(model, L8, mean, std)
    )
    # A model failing in both formats raises its own error, without the warning.
    broken = nn.Conv2d(3, NUM_CLASSES, kernel_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(RuntimeError, match='channels'):
            predict_raster(
                broken, metadata, L8, tmp_path / 'broken.tif', progress=False
            )


def test_bad_inputs_leave_nothing_behind(tmp_path: Path) -> None:
    model, metadata = _pointwise(4)
    text = tmp_path / 'notes.tif'
    text.write_text('not a raster')
    out = tmp_path / 'out'
    out.mkdir()
    for source, destination, message in [
        (tmp_path / 'missing.tif', out / 'a.tif', 'no such file'),
        (text, out / 'a.tif', 'not a readable raster'),
        (RGB1, out / 'a.tif', 'the input has 3 bands, but the model takes 4'),
        (S2, tmp_path / 'nowhere' / 'a.tif', 'output folder does not exist'),
        (S2, S2, 'different files'),
    ]:
        with pytest.raises(GlcgeoError, match=message):
            predict_raster(model, metadata, source, destination, progress=False)
    assert os.listdir(out) == []


def test_a_damaged_scene_is_one_error_naming_it(tmp_path: Path) -> None:
    # A COG cut short: its header reads, its last tiles do not (as when a
    # download or a connection breaks).
    damaged = tmp_path / 'damaged.tif'
    rasterio.shutil.copy(S2, damaged, driver='COG', blocksize=128)
    with open(damaged, 'r+b') as f:
        f.truncate(int(damaged.stat().st_size * 0.7))
    model, metadata = _pointwise(4)
    out = tmp_path / 'out'
    out.mkdir()
    with pytest.raises(GlcgeoError) as error:
        predict_raster(model, metadata, damaged, out / 'map.tif', progress=False)
    assert str(error.value).startswith(f'{damaged}: cannot read pixels (TIFF')
    assert '\n' not in str(error.value)
    assert os.listdir(out) == []


def test_interrupted_prediction_leaves_no_file(tmp_path: Path) -> None:
    model, metadata = _pointwise(4)
    calls = 0

    class Interrupted(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise KeyboardInterrupt
            return model(x)

    shutil.copy(S2, tmp_path / 'scene.tif')
    with pytest.raises(KeyboardInterrupt):
        predict_raster(
            Interrupted(),
            metadata,
            tmp_path / 'scene.tif',
            tmp_path / 'map.tif',
            tile_size=64,
            overlap=16,
            progress=False,
        )
    assert os.listdir(tmp_path) == ['scene.tif']


# The command line.

#: ``glcgeo predict`` with arguments, returning the exit status.
Cli = Callable[..., int]

#: The normalisation a TorchGeo checkpoint without statistics must be given: raw
#: values for the 4-band FCNs.
RAW_VALUES = ['--mean', 0, 0, 0, 0, '--std', 1, 1, 1, 1]


@pytest.fixture
def cli() -> Cli:
    """``glcgeo predict`` run in this process."""
    return lambda *args: main(['predict', *map(str, args)])


def test_cli_writes_map_with_checkpoint_metadata(
    tmp_path: Path,
    glcgeo_checkpoint: Path,
    cli: Cli,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, probabilities = tmp_path / 'landcover.tif', tmp_path / 'scores.tif'
    # The checkpoint reads bands 3, 2, 1, 4 of the 7-band Landsat-8 crop.
    status = cli('--in', L8, '--out', out, '--model', glcgeo_checkpoint,
                 '--probabilities', probabilities)  # fmt: skip
    assert status == 0
    assert 'landcover.tif: 256 x 256 pixels; tiles: 1,' in capsys.readouterr().out
    with rasterio.open(out) as dst, rasterio.open(probabilities) as scores:
        assert json.loads(dst.tags(1)['class_names']) == GLCGEO_EXTRAS['class_names']
        assert dst.colormap(1)[3] == (255, 0, 0, 255)
        assert scores.count == 5 and scores.descriptions[0] == 'water'


def test_cli_keeps_freed_memory_before_loading_the_model(
    tmp_path: Path,
    fcn_checkpoints: dict[int, Path],
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def keep_freed_memory() -> bool:
        calls.append('allocator')
        return True

    def load(path: str) -> tuple[nn.Module, CheckpointMetadata]:
        calls.append('model')
        return load_segmentation_checkpoint(path)

    monkeypatch.setattr('glcgeo.cli.scenes.keep_freed_memory', keep_freed_memory)
    monkeypatch.setattr('glcgeo.inference.load_segmentation_checkpoint', load)
    out = tmp_path / 'map.tif'
    assert cli('--in', S2, '--out', out, '--model', fcn_checkpoints[4], '--quiet',
               *RAW_VALUES) == 0  # fmt: skip
    assert calls == ['allocator', 'model']


def test_cli_keeps_existing_output_unless_overwrite(
    tmp_path: Path,
    fcn_checkpoints: dict[int, Path],
    cli: Cli,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / 'map.tif'
    out.write_bytes(b'precious')
    arguments = ['--in', S2, '--out', out, '--model', fcn_checkpoints[4], '--quiet',
                 *RAW_VALUES]  # fmt: skip
    assert cli(*arguments) == 2
    assert out.read_bytes() == b'precious'
    assert 'use --overwrite' in capsys.readouterr().err
    assert cli(*arguments, '--overwrite') == 0
    assert _read(out).shape == (640, 640)
    assert sorted(os.listdir(tmp_path)) == MAP_FILES
    # Its sidecars are outputs too.
    os.remove(out)
    assert cli(*arguments) == 2
    assert 'map.tif.aux.xml: output exists' in capsys.readouterr().err
    assert not out.exists()


def test_cli_never_replaces_its_model_or_input(
    tmp_path: Path,
    fcn_checkpoints: dict[int, Path],
    cli: Cli,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / 'model.ckpt'
    shutil.copy(fcn_checkpoints[4], model)
    scene = tmp_path / 'scene.tif'
    shutil.copy(S2, scene)
    for out in (model, scene):
        status = cli('--in', scene, '--out', out, '--model', model, '--overwrite',
                     '--quiet', *RAW_VALUES)  # fmt: skip
        assert status == 2
        assert 'output and input must be different' in capsys.readouterr().err
    assert model.read_bytes() == fcn_checkpoints[4].read_bytes()
    assert scene.read_bytes() == Path(S2).read_bytes()


def test_cli_flags_override_checkpoint_metadata(
    tmp_path: Path, glcgeo_checkpoint: Path, cli: Cli
) -> None:
    stats = tmp_path / 'stats.json'
    stats.write_text(json.dumps({'mean': [0, 0, 0, 0], 'std': [1, 1, 1, 1]}))
    names = ['a', 'b', 'c', 'd', 'e']
    status = cli('--in', L8, '--out', tmp_path / 'm.tif', '--model', glcgeo_checkpoint,
                 '--bands', 4, 5, 6, 7, '--stats', stats, '--class-names', *names,
                 '--quiet')  # fmt: skip
    assert status == 0
    with rasterio.open(tmp_path / 'm.tif') as dst:
        assert json.loads(dst.tags(1)['class_names']) == names
    assert cli('--in', L8, '--out', tmp_path / 'n.tif', '--model', glcgeo_checkpoint,
               '--class-names', 'a', '--quiet') == 2  # fmt: skip


def test_cli_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path,
    fcn_checkpoints: dict[int, Path],
    read_only_folder: Path,
    cli: Cli,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = tmp_path / 'notes.txt'
    text.write_text('hello')
    out = tmp_path / 'out'
    out.mkdir()
    model = fcn_checkpoints[4]
    cases = [
        (tmp_path / 'missing.tif', out / 'a.tif', model, 'no such file or folder'),
        (text, out / 'a.tif', model, 'not a readable raster'),
        (RGB1, out / 'a.tif', model, 'the input has 3 bands'),
        (S2, out / 'a.tif', text, 'not a readable checkpoint'),
        (S2, tmp_path / 'nowhere' / 'a.tif', model, 'output folder does not exist'),
        (S2, read_only_folder / 'a.tif', model, 'cannot write to the output folder'),
    ]
    for source, destination, checkpoint, message in cases:
        status = cli('--in', source, '--out', destination, '--model', checkpoint,
                     '--quiet', *RAW_VALUES)  # fmt: skip
        assert status == 2
        err = capsys.readouterr().err
        assert err.startswith('glcgeo: ') and message in err and err.count('\n') == 1
    assert os.listdir(out) == []
    assert not (read_only_folder / 'a.tif').exists()


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['INT', 'TERM'])
def test_cli_interrupted_leaves_no_file(
    tmp_path: Path, glcgeo_checkpoint: Path, signum: int
) -> None:
    shutil.copy(S2, tmp_path / 'scene.tif')
    command = [
        sys.executable, '-m', 'glcgeo', 'predict', '--in', 'scene.tif',
        '--out', 'map.tif', '--model', str(glcgeo_checkpoint),
        '--tile-size', '64', '--overlap', '16',
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # Interrupt once the run has started writing its partial output.
    while not any('.partial' in name for name in os.listdir(tmp_path)):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert 'glcgeo: interrupted' in err
    assert os.listdir(tmp_path) == ['scene.tif']
