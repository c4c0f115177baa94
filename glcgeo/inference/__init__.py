"""Tiled inference: georeferenced land-cover maps from a segmentation checkpoint.

Example::

    from glcgeo.inference import load_segmentation_checkpoint, predict_raster

    model, metadata = load_segmentation_checkpoint('finetune.ckpt')
    predict_raster(model, metadata, 'scene.tif', 'landcover.tif')

and per-pixel embeddings from a pretrained network::

    from glcgeo.inference import embed_raster, load_embedding_network

    model, metadata = load_embedding_network('pretrain/checkpoints/last.ckpt')
    embed_raster(model, metadata, 'scene.tif', 'embeddings.tif', dims=16)
"""

from ..checkpoints import (
    CheckpointMetadata,
    default_palette,
    load_segmentation_checkpoint,
)
from ..outputs import check_destination
from .blending import RowBandAccumulator, hann_window, tile_weights
from .embed import embed_raster, load_embedding_network
from .pca import write_preview
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
    'embed_raster',
    'hann_window',
    'load_embedding_network',
    'load_segmentation_checkpoint',
    'predict_dataset',
    'predict_raster',
    'prediction_grid',
    'resolve_device',
    'tile_offsets',
    'tile_weights',
    'write_preview',
]
