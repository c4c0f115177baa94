"""Lightning checkpoint files: reading them safely, writing a model's weights."""

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import GlcgeoError
from ..outputs import atomic_write

__all__ = ['read_checkpoint', 'state_dict_part', 'write_model_checkpoint']

StrPath = str | os.PathLike[str]


def read_checkpoint(path: StrPath) -> dict[str, Any]:
    """Read a Lightning checkpoint with ``torch.load(weights_only=True)``.

    Only tensors and plain Python values are unpickled, so reading a checkpoint
    from elsewhere cannot run code.

    Args:
        path: the ``.ckpt`` file.

    Returns:
        the checkpoint, with a ``state_dict`` dict and a ``hyper_parameters`` dict
        (empty when the checkpoint has none).

    Raises:
        GlcgeoError: if the file is missing, unreadable or has no state dict.
    """
    if os.path.isdir(path):
        raise GlcgeoError(
            'a folder: give a checkpoint file in it (e.g. checkpoints/last.ckpt, '
            'model.ckpt)',
            path,
        )
    if not os.path.isfile(path):
        raise GlcgeoError('no such checkpoint file', path)
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # unpickling a foreign file fails in many ways
        # The first sentence only: torch's advice to retry with weights_only=False
        # does not apply to a file that is not a checkpoint at all.
        message = str(error).strip() or 'no details'
        reason = message.split('. ')[0].splitlines()[0][:200]
        raise GlcgeoError(
            f'not a readable checkpoint ({type(error).__name__}: {reason})', path
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(
        checkpoint.get('state_dict'), dict
    ):
        raise GlcgeoError('not a Lightning checkpoint (no state_dict)', path)
    if not isinstance(checkpoint.get('hyper_parameters'), dict):
        checkpoint['hyper_parameters'] = {}
    return checkpoint


def write_model_checkpoint(source: StrPath, path: StrPath) -> dict[str, Any]:
    """Write a Lightning checkpoint's weights and metadata, without optimiser state.

    What prediction and TorchGeo need (a fine-tuning run's ``model.ckpt``),
    written whole or not at all (:func:`~glcgeo.outputs.atomic_write`).

    Args:
        source: the Lightning checkpoint.
        path: the file to write.

    Returns:
        the source checkpoint, as read.
    """
    checkpoint = read_checkpoint(source)
    keys = ('state_dict', 'hyper_parameters', 'pytorch-lightning_version')
    content = {key: checkpoint[key] for key in (*keys, 'epoch', 'global_step')}
    with atomic_write(path) as temporary:
        torch.save(content, temporary)
    return checkpoint


def state_dict_part(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under *prefix*, with the prefix removed."""
    return {
        key.removeprefix(prefix): value
        for key, value in state_dict.items()
        if key.startswith(prefix)
    }
