"""Reading Lightning checkpoints safely, for every glcgeo command that takes one."""

import os
from typing import Any

import torch

from .errors import GlcgeoError

__all__ = ['read_checkpoint']


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
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
