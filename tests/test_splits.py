"""Spatial splits of a labelled mosaic and the label budgets drawn from them."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from conftest import DATA, S2_TILES, read_crop, write_raster
from rasterio.windows import Window

from glcgeo.cli import main
from glcgeo.datamodules import SegmentationDataModule
from glcgeo.errors import GlcgeoError
from glcgeo.splits import SPLITS, draw_label_tiles

LABELS = DATA / 'demo_labels' / 's2_pseudo_labels.tif'
#: 32-pixel tiles in blocks of 4 x 4 over the Sentinel-2 tiles' pseudo-labels.
SPLIT_DATA = {
    'images': str(S2_TILES),
    'masks': str(LABELS),
    'patch_size': 32,
    'block_size': 4,
}


@pytest.fixture(scope='module')
def demo_data() -> SegmentationDataModule:
    datamodule = SegmentationDataModule(**SPLIT_DATA, label_fraction=0.05, seed=3)
    datamodule.setup('fit')
    return datamodule


def test_splits_are_spatially_disjoint_and_labels_come_from_train(
    demo_data: SegmentationDataModule,
) -> None:
    split = demo_data.tile_split
    assert split is not None
    assert split.class_values == [0, 1, 2]
    boxes = {
        name: shapely.union_all([shapely.box(*split.bounds(t)) for t in tiles])
        for name, tiles in split.tiles.items()
    }
    assert all(split.tiles[name] for name in SPLITS)
    for a, b in (('train', 'val'), ('train', 'test'), ('val', 'test')):
        # Tiles of different splits may share an edge, never any area.
        assert boxes[a].intersection(boxes[b]).area == 0
        blocks_a = {split.block_of(t) for t in split.tiles[a]}
        assert blocks_a.isdisjoint({split.block_of(t) for t in split.tiles[b]})
    assert set(demo_data.label_tiles) <= set(split.tiles['train'])
    assert len(demo_data.label_tiles) == round(0.05 * len(split.tiles['train']))
    # Kept tiles hold at least min_labelled of class pixels.
    assert min(split.labelled.values()) >= 0.5


def test_label_budget_is_seeded_nested_and_leaves_the_split_alone(
    demo_data: SegmentationDataModule,
) -> None:
    split = demo_data.tile_split
    assert split is not None
    again = SegmentationDataModule(**SPLIT_DATA, label_fraction=0.05, seed=3)
    again.setup('fit')
    assert again.label_tiles == demo_data.label_tiles
    other = SegmentationDataModule(**SPLIT_DATA, label_fraction=0.2, seed=4)
    other.setup('fit')
    assert other.tile_split is not None
    # The evaluation area depends on split_seed only.
    assert other.tile_split.tiles == split.tiles
    train = split.tiles['train']
    draws = {
        seed: draw_label_tiles(
            train, 0.2, generator=torch.Generator().manual_seed(seed)
        )
        for seed in (3, 4)
    }
    assert draws[3] != draws[4]
    assert other.label_tiles == draws[4]
    small = draw_label_tiles(train, 0.05, generator=torch.Generator().manual_seed(3))
    assert set(small) <= set(draws[3])
    assert small == demo_data.label_tiles
    assert len(draw_label_tiles(train, num_label_patches=7)) == 7
    with pytest.raises(GlcgeoError, match='label fraction'):
        draw_label_tiles(train, 1.5)
    with pytest.raises(GlcgeoError, match='asked for'):
        draw_label_tiles(train, num_label_patches=len(train) + 1)


def _write_crop(
    source: Path, window: Window, path: Path, shift: tuple[float, float] = (0, 0)
) -> Path:
    """A window of a raster, moved by *shift* metres; labels' 255 becomes class 3.

    The masks written have no nodata value: every value is a class, 0 included.
    """
    data, transform, crs = read_crop(source, window)
    if len(data) == 1:
        data[data == 255] = 3
    moved = Affine.translation(*shift) @ transform
    return write_raster(path, data, crs=crs, transform=moved, nodata=None)


def test_ground_outside_every_mask_file_is_unlabelled(tmp_path: Path) -> None:
    # Two masks without nodata (0 is a class) over the two Sentinel-2 tiles: an
    # L-shaped labelled area whose bounding box holds ground outside both.
    masks, boxes = [], []
    for tile in S2_TILES.glob('*.tif'):
        with rasterio.open(tile) as src:
            boxes.append(shapely.box(*src.bounds))
            with rasterio.open(LABELS) as labels:
                window = labels.window(*src.bounds)
        masks.append(_write_crop(LABELS, window, tmp_path / f'mask_{tile.stem}.tif'))
    on_files = shapely.union_all(boxes)
    datamodule = SegmentationDataModule(
        str(S2_TILES), [str(m) for m in masks], patch_size=32, block_size=4
    )
    datamodule.setup('fit')
    split = datamodule.tile_split
    assert split is not None and split.class_values == [0, 1, 2, 3]
    partly_outside = None
    for tiles in split.tiles.values():
        for tile in tiles:
            box = shapely.box(*split.bounds(tile))
            share = box.intersection(on_files).area / box.area
            # Every mask pixel is a class: labelled where a file lies, only there.
            assert split.labelled[tile] == pytest.approx(share), tile
            if share < 1:
                partly_outside = tile
    assert partly_outside is not None
    sample = datamodule.dataset[split.query(partly_outside)]  # type: ignore[index]
    xmin, ymin, xmax, ymax = split.bounds(partly_outside)
    centres = shapely.points(
        *np.meshgrid(np.arange(xmin + 5, xmax, 10), np.arange(ymax - 5, ymin, -10))
    )
    outside = ~shapely.contains(on_files, centres)
    assert outside.any()
    assert torch.all(sample['mask'][torch.from_numpy(outside)] == 255)
    assert torch.all(sample['mask'][torch.from_numpy(~outside)] != 255)


def test_finetuning_over_scattered_scenes_uses_only_tiles_on_data(
    tmp_path: Path,
) -> None:
    # Two crops of a Sentinel-2 tile 300 km apart in one CRS, with masks
    # without nodata (0 is a class), as two scenes of one UTM zone.
    tile = S2_TILES / 'S2_L1C_18SUH_tileA_B02-B03-B04-B08.tif'
    images, masks = [], []
    for i, (offset, shift) in enumerate([(0, (0, 0)), (256, (300e3, -200e3))]):
        window = Window(offset, offset, 192, 192)
        images.append(_write_crop(tile, window, tmp_path / f'image{i}.tif', shift))
        masks.append(_write_crop(LABELS, window, tmp_path / f'mask{i}.tif', shift))
    scenes = []
    for image in images:
        with rasterio.open(image) as src:
            scenes.append(shapely.box(*src.bounds))
    out = tmp_path / 'run'
    argv = [
        'finetune', '--images', *images, '--masks', *masks, '--out', out,
        '--backbone', 'resnet18', '--patch-size', '32', '--batch-size', '2',
        '--num-workers', '0', '--accelerator', 'cpu', '--num-label-patches', '2',
        '--max-steps', '1', '--quiet',
    ]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    split = gpd.read_file(out / 'split.geojson')
    assert set(split['split']) == set(SPLITS)
    # Each tile holds at least --min-labelled (0.5) of its ground on a scene.
    on_data = shapely.union_all(scenes)
    for tile in split.geometry:
        assert tile.intersection(on_data).area >= 0.5 * tile.area
