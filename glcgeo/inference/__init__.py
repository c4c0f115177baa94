"""Tiled inference: georeferenced land-cover maps from a segmentation checkpoint.

Example::

    from glcgeo.inference import load_segmentation_checkpoint, predict_raster

    model, metadata = load_segmentation_checkpoint('finetune.ckpt')
    predict_raster(model, metadata, 'scene.tif', 'landcover.tif')
"""

from ..checkpoints import (
    CheckpointMetadata,
    default_palette,
    load_segmentation_checkpoint,
)
from ..outputs import check_destination
from .blending import RowBandAccumulator, hann_window, tile_weights
from .predict import (
    PredictionSummary,
    predict_dataset,
    predict_raster,
    resolve_device,
)
from .reading import prediction_grid
from .tiling import Tile, TileGrid, tile_offsets
from .writer import CogWriter, SegmentationMap, class_dtype

__all__ = [
    'CheckpointMetadata',
    'CogWriter',
    'PredictionSummary',
    'RowBandAccumulator',
    'SegmentationMap',
    'Tile',
    'TileGrid',
    'check_destination',
    'class_dtype',
    'default_palette',
    'hann_window',
    'load_segmentation_checkpoint',
    'predict_dataset',
    'predict_raster',
    'prediction_grid',
    'resolve_device',
    'tile_offsets',
    'tile_weights',
]
