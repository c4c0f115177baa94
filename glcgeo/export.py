"""Pretrained weights for TorchGeo: export GLCNet pretraining, load it into models.

The exported file is a Lightning-style checkpoint that TorchGeo reads as is::

    task = SemanticSegmentation(
        model='deeplabv3+', backbone='resnet50', in_channels=4, num_classes=6,
        weights='weights.ckpt',
    )  # loads the pretrained encoder

TorchGeo loads only the encoder (loading a decoder is open upstream, PR #1379); to
start from the pretrained decoder too, call :func:`load_pretrained` on the task (or
on a bare segmentation_models_pytorch model) afterwards::

    report = load_pretrained(task, 'weights.ckpt')  # encoder + decoder

:func:`load_pretrained` takes the pretrained weights of any checkpoint glcgeo
reads (:func:`~glcgeo.checkpoints.read_weights`): an exported file, a GLCNet
pretraining checkpoint, a segmentation checkpoint or a SimCLR/MoCo backbone. The
file layouts are :mod:`glcgeo.checkpoints`' business.
"""

import os
import warnings
from dataclasses import dataclass

from segmentation_models_pytorch.base import SegmentationModel
from torch import nn

from .checkpoints import (
    PretrainedWeights,
    checkpoint_kind,
    read_checkpoint,
    read_weights,
    state_dict_misfit,
    weights_of,
    write_weights,
)
from .errors import GlcgeoError
from .outputs import check_destination

__all__ = [
    'LoadReport',
    'PretrainedWeights',
    'export_weights',
    'load_pretrained',
    'read_weights',
]

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` loaded into a segmentation model.

    Attributes:
        loaded: keys of the model's state dict that were loaded.
        skipped: keys left as they were (the segmentation head always, whose class
            count is the downstream task's; the decoder when not asked for or not
            pretrained).
    """

    loaded: list[str]
    skipped: list[str]


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


def load_pretrained(
    target: nn.Module, path: StrPath, decoder: bool = True
) -> LoadReport:
    """Load pretrained weights into a segmentation model, decoder included.

    Args:
        target: a TorchGeo :class:`~torchgeo.tasks.SemanticSegmentation` task
            (or :class:`~glcgeo.tasks.FinetuneTask`) built with the same
            architecture, backbone and in_channels, or a bare
            segmentation_models_pytorch model.
        path: weights written by :func:`export_weights`, a GLCNet pretraining
            checkpoint, a segmentation checkpoint (a fine-tuning run's
            ``model.ckpt``) or a TorchGeo SimCLR/MoCo checkpoint.
        decoder: load the pretrained decoder too (False: the encoder only, as
            TorchGeo's ``weights=`` does).

    Returns:
        the keys loaded and the keys left as they were (the segmentation head is
        never loaded: its class count is the downstream task's).

    Raises:
        TypeError: if *target* is neither an smp model nor a task holding one.
        GlcgeoError: if the file holds no weights glcgeo reads, holds no decoder
            when one is asked for, or does not fit the model.
    """
    model = (
        target
        if isinstance(target, SegmentationModel)
        else getattr(target, 'model', None)
    )
    if not isinstance(model, SegmentationModel):
        raise TypeError(
            'target must be a segmentation_models_pytorch model or a task whose '
            f'.model is one, got {type(target).__name__}'
        )
    weights = read_weights(path)
    parts = {'encoder': weights.encoder}
    if decoder:
        if not weights.decoder:
            raise GlcgeoError(
                'holds a backbone only, no decoder: load the encoder alone '
                "(transfer 'encoder')",
                path,
            )
        parts['decoder'] = weights.decoder
    for part, state_dict in parts.items():
        # The encoder must fit exactly; a decoder may be pretrained in part (ASPP).
        misfit = state_dict_misfit(
            getattr(model, part), state_dict, strict=part == 'encoder'
        )
        if misfit:
            raise GlcgeoError(
                f"the model's {part} does not fit these weights (backbone "
                f'{weights.backbone!r}, {weights.in_channels} bands): {misfit}',
                path,
            )
    loaded: list[str] = []
    for part, state_dict in parts.items():
        getattr(model, part).load_state_dict(state_dict, strict=part == 'encoder')
        loaded += [f'{part}.{key}' for key in state_dict]
    skipped = [key for key in model.state_dict() if key not in set(loaded)]
    return LoadReport(loaded=loaded, skipped=skipped)
