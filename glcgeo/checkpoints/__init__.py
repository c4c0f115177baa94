"""Checkpoints: the one metadata schema, every reader and writer, pretrained loading.

Checkpoints are read with ``torch.load(weights_only=True)`` (:func:`read_checkpoint`)
and written whole or not at all (:mod:`glcgeo.outputs`).
"""

from .files import read_checkpoint, state_dict_part, write_model_checkpoint
from .loading import LoadReport, load_pretrained
from .metadata import (
    BandMetadata,
    CheckpointMetadata,
    ModelMetadata,
    default_palette,
    read_band_metadata,
)
from .segmentation import build_segmentation_model, load_segmentation_checkpoint
from .weights import (
    PretrainedWeights,
    checkpoint_kind,
    read_weights,
    state_dict_misfit,
    weights_of,
    write_weights,
)

__all__ = [
    'BandMetadata',
    'CheckpointMetadata',
    'LoadReport',
    'ModelMetadata',
    'PretrainedWeights',
    'build_segmentation_model',
    'checkpoint_kind',
    'default_palette',
    'load_pretrained',
    'load_segmentation_checkpoint',
    'read_band_metadata',
    'read_checkpoint',
    'read_weights',
    'state_dict_misfit',
    'state_dict_part',
    'weights_of',
    'write_model_checkpoint',
    'write_weights',
]
