"""Spatial splits of a labelled mosaic and the label budgets drawn from them."""

import pytest
import shapely
import torch
from conftest import DATA, S2_TILES

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
