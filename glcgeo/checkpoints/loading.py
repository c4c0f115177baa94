"""Loading pretrained weights into a segmentation model, decoder included.

TorchGeo's ``weights=`` loads only the encoder (loading a decoder is open
upstream, PR #1379); :func:`load_pretrained` loads the pretrained decoder too,
into a TorchGeo task or a bare segmentation_models_pytorch model, from any
checkpoint :func:`~glcgeo.checkpoints.read_weights` reads::

    task = SemanticSegmentation(model='deeplabv3+', backbone='resnet50',
                                in_channels=4, num_classes=6)
    report = load_pretrained(task, 'weights.ckpt')  # encoder + decoder
"""

import os
from dataclasses import dataclass

from segmentation_models_pytorch.base import SegmentationModel
from torch import nn

from ..errors import GlcgeoError
from .weights import read_weights, state_dict_misfit

__all__ = ['LoadReport', 'load_pretrained']

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


def load_pretrained(
    target: nn.Module, path: StrPath, decoder: bool = True
) -> LoadReport:
    """Load pretrained weights into a segmentation model, decoder included.

    Args:
        target: a TorchGeo :class:`~torchgeo.tasks.SemanticSegmentation` task
            (or :class:`~glcgeo.tasks.FinetuneTask`) built with the same
            architecture, backbone and in_channels, or a bare
            segmentation_models_pytorch model.
        path: weights written by :func:`~glcgeo.export.export_weights`, a GLCNet
            pretraining
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
