"""Segmentation models for prediction, rebuilt from their checkpoints."""

import inspect
import os
from collections.abc import Mapping
from typing import Any

from torch import nn
from torchgeo.tasks import SemanticSegmentation

from ..errors import GlcgeoError
from .files import read_checkpoint, state_dict_part
from .metadata import CheckpointMetadata

__all__ = ['load_segmentation_checkpoint']

StrPath = str | os.PathLike[str]

#: The tasks whose outputs give one class per pixel.
SUPPORTED_TASKS = ('multiclass', 'binary')


def _task_arguments(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Select the hyperparameters that TorchGeo's SemanticSegmentation accepts."""
    accepted = inspect.signature(SemanticSegmentation.__init__).parameters
    arguments = {k: v for k, v in hparams.items() if k in accepted}
    # Build the architecture only: pretrained weights are replaced by the
    # checkpoint's own, and must never be downloaded.
    arguments['weights'] = None
    return arguments


def load_segmentation_checkpoint(
    path: StrPath,
) -> tuple[nn.Module, CheckpointMetadata]:
    """Load a segmentation model and its metadata from a Lightning checkpoint.

    The model is rebuilt by TorchGeo's own task class with random initial weights
    (never downloaded), then the checkpoint's weights are loaded strictly.

    Args:
        path: a glcgeo fine-tuning or TorchGeo SemanticSegmentation checkpoint.

    Returns:
        (the model in eval mode on the CPU, taking [B, C, H, W] normalised images and
        returning [B, K, H, W] logits; its metadata).

    Raises:
        GlcgeoError: if the file is missing, not a checkpoint, or not a
            segmentation checkpoint whose weights fit its hyperparameters.

    """
    checkpoint = read_checkpoint(path)
    hparams, state_dict = checkpoint['hyper_parameters'], checkpoint['state_dict']
    missing = [k for k in ('model', 'backbone', 'in_channels') if k not in hparams]
    if missing or not state_dict:
        raise GlcgeoError(
            'not a segmentation checkpoint (needs state_dict and hyper_parameters '
            f'with model, backbone, in_channels; missing {missing or ["state_dict"]})',
            path,
        )
    task = hparams.get('task', 'multiclass')
    if task not in SUPPORTED_TASKS:
        raise GlcgeoError(f'{task} checkpoints are not supported', path)
    try:
        module = SemanticSegmentation(**_task_arguments(hparams)).model
        module.load_state_dict(state_dict_part(state_dict, 'model.'))
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        reason = str(e).splitlines()[0]
        raise GlcgeoError(f'weights do not fit the model ({reason})', path) from None
    try:
        metadata = CheckpointMetadata.from_hyperparameters(hparams)
    except GlcgeoError as e:
        raise GlcgeoError(f'inconsistent metadata: {e}', path) from None
    return module.eval(), metadata
