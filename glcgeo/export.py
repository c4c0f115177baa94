"""Pretrained weights for TorchGeo: export GLCNet pretraining.

The exported file is a Lightning-style checkpoint that TorchGeo reads as is::

    task = SemanticSegmentation(
        model='deeplabv3+', backbone='resnet50', in_channels=4, num_classes=6,
        weights='weights.ckpt',
    )  # loads the pretrained encoder

TorchGeo loads only the encoder (loading a decoder is open upstream, PR #1379); to
start from the pretrained decoder too, call
:func:`~glcgeo.checkpoints.load_pretrained` on the task (or on a bare
segmentation_models_pytorch model) afterwards::

    report = load_pretrained(task, 'weights.ckpt')  # encoder + decoder

The file layouts are :mod:`glcgeo.checkpoints`' business.
"""

import os
import warnings

from .checkpoints import (
    PretrainedWeights,
    checkpoint_kind,
    read_checkpoint,
    read_weights,
    weights_of,
    write_weights,
)
from .errors import GlcgeoError
from .outputs import check_destination

__all__ = ['PretrainedWeights', 'export_weights', 'read_weights']

StrPath = str | os.PathLike[str]


def export_weights(
    checkpoint: StrPath, out: StrPath, overwrite: bool = False
) -> PretrainedWeights:
    """Write the pretrained encoder and decoder of a GLCNet pretraining checkpoint.

    The file holds the encoder where TorchGeo's ``weights=`` finds it, the
    pretrained decoder, and the band metadata
    (:class:`~glcgeo.checkpoints.BandMetadata`) with the pretraining settings
    (see :func:`~glcgeo.checkpoints.write_weights`).

    Args:
        checkpoint: Lightning checkpoint of :class:`~glcgeo.tasks.GLCNetTask`.
        out: path of the weights file to write (a ``.ckpt``).
        overwrite: replace *out* if it exists.

    Returns:
        the exported weights.

    Raises:
        GlcgeoError: if *out* cannot be written (see
            :func:`~glcgeo.outputs.check_destination`: it exists without
            *overwrite*, or it is *checkpoint*), or if *checkpoint* is missing,
            unreadable or not a GLCNet pretraining checkpoint. Nothing is
            written then.
    """
    check_destination(out, overwrite, inputs=[checkpoint])
    content = read_checkpoint(checkpoint)
    if checkpoint_kind(content) != 'glcnet':
        raise GlcgeoError(
            'no GLCNet network in its state dict: not a GLCNet checkpoint', checkpoint
        )
    weights = weights_of(content, checkpoint)
    if weights.band_mean is None or weights.band_std is None:
        warnings.warn(
            f'{checkpoint}: no band statistics in the checkpoint; the weights carry '
            'none and fine-tuning must normalise the bands as pretraining did',
            UserWarning,
            stacklevel=2,
        )
    return write_weights(weights, out)
