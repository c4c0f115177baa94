"""Export GLCNet pretraining into weights that TorchGeo's segmentation task loads.

The exported file is a Lightning-style checkpoint that TorchGeo reads as is::

    task = SemanticSegmentation(
        model='deeplabv3+', backbone='resnet50', in_channels=4, num_classes=6,
        weights='weights.ckpt',
    )  # loads the pretrained encoder

TorchGeo loads only the encoder (loading a decoder is open upstream, PR #1379); to
start from the pretrained decoder too, call :func:`load_pretrained` on the task (or
on a bare segmentation_models_pytorch model) afterwards::

    report = load_pretrained(task, 'weights.ckpt')  # encoder + decoder

Layout of the file: ``state_dict`` holds the encoder under
``model.backbone.model.<key>`` (the keys TorchGeo's
:func:`~torchgeo.tasks.utils.extract_backbone` takes when ``hyper_parameters``
names a ``backbone``) and the pretrained decoder under ``model.decoder.<key>``
(as in a checkpoint of TorchGeo's own task); ``hyper_parameters`` holds
``backbone``, ``in_channels``, the normalisation statistics ``band_mean``,
``band_std`` (raw band values) and ``bands`` (1-based band indexes), and the
pretraining settings.
"""

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from segmentation_models_pytorch.base import SegmentationModel
from torch import Tensor, nn
from torchgeo.tasks.utils import extract_backbone

from .checkpoints import read_checkpoint
from .errors import GlcgeoError
from .models import GLCNet
from .outputs import atomic_write, check_destination

__all__ = [
    'LoadReport',
    'PretrainedWeights',
    'export_weights',
    'load_pretrained',
    'read_weights',
]

#: Key prefix of the encoder, as TorchGeo's ``extract_backbone`` expects it.
ENCODER_PREFIX = 'model.backbone.model.'
#: Key prefix of the decoder (TorchGeo does not read it).
DECODER_PREFIX = 'model.decoder.'
#: Key prefix of the GLCNet network in a pretraining (GLCNetTask) checkpoint.
TASK_PREFIX = 'model.'

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class PretrainedWeights:
    """Pretrained DeepLabV3+ weights and the data settings they were trained on.

    Attributes:
        backbone: smp encoder name.
        in_channels: number of input bands.
        encoder: state dict of ``model.encoder``.
        decoder: state dict of the pretrained part of ``model.decoder`` (all of it,
            or the ASPP only after a global-only pretraining).
        band_mean: per-band mean of the raw values used for normalisation.
        band_std: per-band standard deviation of the raw values.
        bands: 1-based band indexes of the input files.
        hyper_parameters: all hyperparameters stored with the weights.
    """

    backbone: str
    in_channels: int
    encoder: dict[str, Tensor]
    decoder: dict[str, Tensor]
    band_mean: list[float] | None
    band_std: list[float] | None
    bands: list[int] | None
    hyper_parameters: dict[str, Any]


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


def _require(
    hyper_parameters: dict[str, Any], names: tuple[str, ...], path: StrPath
) -> None:
    """Check that the hyperparameters name each of *names*."""
    missing = [name for name in names if hyper_parameters.get(name) is None]
    if missing:
        raise GlcgeoError(
            f'hyper_parameters lack {", ".join(missing)}: not a GLCNet checkpoint', path
        )


def _plain_list(values: Any, kind: type) -> list[Any] | None:
    """Band statistics as a plain list (``torch.load(weights_only=True)`` safe)."""
    return None if values is None else [kind(value) for value in values]


def _pretrained_network(checkpoint: dict[str, Any], path: StrPath) -> GLCNet:
    """Rebuild the pretraining network and load its weights, strictly.

    Raises:
        GlcgeoError: if the checkpoint is not a GLCNetTask checkpoint or its
            weights do not fit the network its hyperparameters describe.
    """
    hp = checkpoint['hyper_parameters']
    _require(hp, ('backbone', 'in_channels'), path)
    try:
        network = GLCNet(
            backbone=hp['backbone'],
            in_channels=int(hp['in_channels']),
            ablation=hp.get('ablation', 'full'),
        )
    except (KeyError, ValueError) as error:
        raise GlcgeoError(f'cannot rebuild the network: {error}', path) from None
    state_dict = {
        key.removeprefix(TASK_PREFIX): value
        for key, value in checkpoint['state_dict'].items()
        if key.startswith(TASK_PREFIX)
    }
    misfit = _misfit(network, state_dict, strict=True)
    if misfit:
        raise GlcgeoError(
            f'weights do not fit GLCNet(backbone={hp["backbone"]!r}, '
            f'in_channels={hp["in_channels"]}): {misfit}',
            path,
        )
    network.load_state_dict(state_dict)
    return network


def export_weights(
    checkpoint: StrPath, out: StrPath, overwrite: bool = False
) -> PretrainedWeights:
    """Write the pretrained encoder and decoder of a GLCNet pretraining checkpoint.

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
    network = _pretrained_network(content, checkpoint)
    hp = content['hyper_parameters']
    if hp.get('band_mean') is None or hp.get('band_std') is None:
        warnings.warn(
            f'{checkpoint}: no band statistics in the checkpoint; the weights carry '
            'none and fine-tuning must normalise the bands as pretraining did',
            UserWarning,
            stacklevel=2,
        )
    decoder_prefix = network.trained_decoder_prefix.removeprefix('decoder.')
    backbone = str(hp['backbone'])
    in_channels = int(hp['in_channels'])
    band_mean = _plain_list(hp.get('band_mean'), float)
    band_std = _plain_list(hp.get('band_std'), float)
    bands = _plain_list(hp.get('bands'), int)
    # TorchGeo takes its 'model' branch when hyper_parameters name a 'model', which
    # would read these keys wrongly: keep only plain settings, never 'model'.
    hyper_parameters: dict[str, Any] = {
        key: value
        for key, value in hp.items()
        if key != 'model' and isinstance(value, str | int | float | bool | tuple)
    }
    hyper_parameters.update(
        backbone=backbone,
        in_channels=in_channels,
        band_mean=band_mean,
        band_std=band_std,
        bands=bands,
    )
    weights = PretrainedWeights(
        backbone=backbone,
        in_channels=in_channels,
        encoder=network.model.encoder.state_dict(),
        decoder={
            key: value
            for key, value in network.model.decoder.state_dict().items()
            if key.startswith(decoder_prefix)
        },
        band_mean=band_mean,
        band_std=band_std,
        bands=bands,
        hyper_parameters=hyper_parameters,
    )
    state_dict = {ENCODER_PREFIX + k: v for k, v in weights.encoder.items()}
    state_dict.update({DECODER_PREFIX + k: v for k, v in weights.decoder.items()})
    _write_checked(
        {'state_dict': state_dict, 'hyper_parameters': hyper_parameters}, weights, out
    )
    return weights


def _write_checked(
    content: dict[str, Any], weights: PretrainedWeights, out: StrPath
) -> None:
    """Save *content* as *out*, once TorchGeo has read it back as it was meant."""
    with atomic_write(out) as temporary:
        torch.save(content, temporary)
        name, encoder = extract_backbone(temporary)
        if name != weights.backbone or encoder.keys() != weights.encoder.keys():
            raise RuntimeError('TorchGeo does not read the exported encoder back')


def read_weights(path: StrPath) -> PretrainedWeights:
    """Read a weights file written by :func:`export_weights`.

    Args:
        path: the weights file.

    Returns:
        the weights and their normalisation statistics.

    Raises:
        GlcgeoError: if the file is missing, unreadable or not glcgeo weights.
    """
    checkpoint = read_checkpoint(path)
    hp = checkpoint['hyper_parameters']
    _require(hp, ('backbone', 'in_channels'), path)
    state_dict: dict[str, Tensor] = checkpoint['state_dict']
    encoder = {
        k.removeprefix(ENCODER_PREFIX): v
        for k, v in state_dict.items()
        if k.startswith(ENCODER_PREFIX)
    }
    if not encoder:
        raise GlcgeoError('no encoder weights: not a glcgeo weights file', path)
    decoder = {
        k.removeprefix(DECODER_PREFIX): v
        for k, v in state_dict.items()
        if k.startswith(DECODER_PREFIX)
    }
    return PretrainedWeights(
        backbone=hp['backbone'],
        in_channels=int(hp['in_channels']),
        encoder=encoder,
        decoder=decoder,
        band_mean=hp.get('band_mean'),
        band_std=hp.get('band_std'),
        bands=hp.get('bands'),
        hyper_parameters=hp,
    )


def _misfit(module: nn.Module, state_dict: dict[str, Tensor], strict: bool) -> str:
    """Say how *state_dict* fails to fit *module*, key for key and shape for shape.

    Args:
        module: the module to load into.
        state_dict: the weights.
        strict: every key of the module must be in *state_dict*.

    Returns:
        the first problem (and how many more), or '' when the weights fit.
    """
    expected = module.state_dict()
    problems = [f'unexpected {k}' for k in state_dict if k not in expected]
    problems += [
        f'{k} has shape {tuple(v.shape)}, the model {tuple(expected[k].shape)}'
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if strict:
        problems += [f'missing {k}' for k in expected if k not in state_dict]
    if len(problems) > 1:
        return f'{problems[0]} (and {len(problems) - 1} more)'
    return problems[0] if problems else ''


def load_pretrained(
    target: nn.Module, path: StrPath, decoder: bool = True
) -> LoadReport:
    """Load exported GLCNet weights into a DeepLabV3+ model, decoder included.

    Args:
        target: a TorchGeo :class:`~torchgeo.tasks.SemanticSegmentation` task built
            with ``model='deeplabv3+'`` and the same backbone and in_channels, or a
            bare segmentation_models_pytorch ``DeepLabV3Plus``.
        path: weights file written by :func:`export_weights`.
        decoder: load the pretrained decoder too (False: the encoder only, as
            TorchGeo's ``weights=`` does).

    Returns:
        the keys loaded and the keys left as they were (the segmentation head is
        never loaded: its class count is the downstream task's).

    Raises:
        TypeError: if *target* is neither an smp model nor a task holding one.
        GlcgeoError: if the file is not glcgeo weights or does not fit the model.
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
        parts['decoder'] = weights.decoder
    for part, state_dict in parts.items():
        # The encoder must fit exactly; a decoder file may hold only the ASPP.
        misfit = _misfit(getattr(model, part), state_dict, strict=part == 'encoder')
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
