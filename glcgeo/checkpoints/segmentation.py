"""Segmentation models for prediction, rebuilt from their checkpoints."""

import inspect
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import GlcgeoError
from .files import read_checkpoint, state_dict_part
from .metadata import CheckpointMetadata

__all__ = ['build_segmentation_model', 'load_segmentation_checkpoint']

StrPath = str | os.PathLike[str]

#: The tasks whose outputs give one class per pixel.
SUPPORTED_TASKS = ('multiclass', 'binary')

#: TorchGeo's SemanticSegmentation architectures that are plain
#: segmentation_models_pytorch classes, built the way TorchGeo builds them.
SMP_ARCHITECTURES = {
    'unet': 'Unet',
    'deeplabv3+': 'DeepLabV3Plus',
    'upernet': 'UPerNet',
    'segformer': 'Segformer',
    'dpt': 'DPT',
}


def build_segmentation_model(hparams: Mapping[str, Any]) -> nn.Module:
    """Build the network of a SemanticSegmentation checkpoint, with random weights.

    smp architectures are built directly, exactly as TorchGeo's
    SemanticSegmentation builds them (importing ``torchgeo.tasks`` takes seconds);
    others (``fcn``) by TorchGeo's task itself. Pretrained weights are never
    downloaded: the checkpoint's own replace them.

    Args:
        hparams: the checkpoint's hyperparameters (``model``, ``backbone``,
            ``in_channels``, ``num_classes`` or ``num_labels``, ...).

    Returns:
        the network, taking [B, C, H, W] and returning [B, K, H, W] logits.
    """
    if hparams['model'] in SMP_ARCHITECTURES:
        import segmentation_models_pytorch as smp

        architecture = getattr(smp, SMP_ARCHITECTURES[hparams['model']])
        module: nn.Module = architecture(
            encoder_name=hparams['backbone'],
            encoder_weights=None,
            in_channels=hparams['in_channels'],
            classes=hparams.get('num_classes') or hparams.get('num_labels') or 1,
        )
        return module
    from torchgeo.tasks import SemanticSegmentation

    accepted = inspect.signature(SemanticSegmentation.__init__).parameters
    arguments = {k: v for k, v in hparams.items() if k in accepted}
    return SemanticSegmentation(**{**arguments, 'weights': None}).model


def load_segmentation_checkpoint(
    path: StrPath,
) -> tuple[nn.Module, CheckpointMetadata]:
    """Load a segmentation model and its metadata from a Lightning checkpoint.

    The model is rebuilt as TorchGeo's task builds it, with random initial weights
    (:func:`build_segmentation_model`), then the checkpoint's weights are loaded
    strictly.

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
        module = build_segmentation_model(hparams)
        module.load_state_dict(state_dict_part(state_dict, 'model.'))
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        reason = str(e).splitlines()[0]
        raise GlcgeoError(f'weights do not fit the model ({reason})', path) from None
    try:
        metadata = CheckpointMetadata.from_hyperparameters(hparams)
    except GlcgeoError as e:
        raise GlcgeoError(f'inconsistent metadata: {e}', path) from None
    return module.eval(), metadata
