"""Pretrained weights, from and to checkpoints of every layout glcgeo knows.

The layouts, told apart by :func:`checkpoint_kind`:

* ``'glcnet'``: a GLCNet pretraining checkpoint (:class:`~glcgeo.tasks.GLCNetTask`),
  the network under ``model.``, its DeepLabV3+ under ``model.model.``;
* ``'weights'``: pretrained weights exported for TorchGeo (:func:`write_weights`),
  the encoder under ``model.backbone.model.`` (where TorchGeo's
  :func:`~torchgeo.tasks.utils.extract_backbone` looks when the hyperparameters
  name a ``backbone``) and the pretrained decoder under ``model.decoder.``;
* ``'segmentation'``: a segmentation model (TorchGeo's
  :class:`~torchgeo.tasks.SemanticSegmentation`, :class:`~glcgeo.tasks.FinetuneTask`,
  a fine-tuning run's ``model.ckpt``), smp's model under ``model.``;
* ``'ssl_backbone'``: TorchGeo's SimCLR and MoCo, a timm backbone under
  ``backbone.`` (TorchGeo's own ``extract_backbone`` finds nothing in them).
"""

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import GlcgeoError
from ..models import GLCNet
from ..outputs import atomic_write
from .files import read_checkpoint, state_dict_part
from .metadata import BandMetadata

__all__ = [
    'PretrainedWeights',
    'checkpoint_kind',
    'read_weights',
    'state_dict_misfit',
    'weights_of',
    'write_weights',
]

StrPath = str | os.PathLike[str]

#: Where each layout keeps its encoder and its (pretrained) decoder, by kind, in
#: the order :func:`checkpoint_kind` tries them.
LAYOUTS = {
    'weights': ('model.backbone.model.', 'model.decoder.'),
    'glcnet': ('model.model.encoder.', 'model.model.decoder.'),
    'segmentation': ('model.encoder.', 'model.decoder.'),
    'ssl_backbone': ('backbone.', None),
}


def checkpoint_kind(checkpoint: Mapping[str, Any]) -> str | None:
    """Tell the layout of a checkpoint from its state dict's keys.

    Args:
        checkpoint: a checkpoint from :func:`read_checkpoint`.

    Returns:
        'weights', 'glcnet', 'segmentation' or 'ssl_backbone' (see the module
        doc), or None when it holds none of them.
    """
    keys = checkpoint['state_dict'].keys()
    for kind, (encoder, _) in LAYOUTS.items():
        if any(key.startswith(encoder) for key in keys):
            return kind
    return None


@dataclass(frozen=True)
class PretrainedWeights:
    """Pretrained weights of a segmentation model and the bands they were trained on.

    Attributes:
        backbone: smp encoder name.
        in_channels: number of input bands.
        encoder: state dict of ``model.encoder``.
        decoder: state dict of the pretrained part of ``model.decoder`` (all of it,
            the ASPP only after a global-only pretraining, nothing from a SimCLR
            or MoCo backbone).
        band_mean: per-band mean of the raw values used for normalisation.
        band_std: per-band standard deviation of the raw values.
        bands: 1-based band indexes of the input files.
        band_dtype: dtype of the input files' raw values, None where not known.
        hyper_parameters: all hyperparameters stored with the weights.
    """

    backbone: str
    in_channels: int
    encoder: dict[str, Tensor]
    decoder: dict[str, Tensor]
    band_mean: list[float] | None
    band_std: list[float] | None
    bands: list[int] | None
    band_dtype: str | None
    hyper_parameters: dict[str, Any]


#: What each layout is, in errors.
KIND_NAMES = {
    'weights': 'glcgeo weights',
    'glcnet': 'a GLCNet checkpoint',
    'segmentation': 'a segmentation checkpoint',
    'ssl_backbone': 'a SimCLR/MoCo checkpoint',
}


def _require(
    hp: Mapping[str, Any], names: tuple[str, ...], kind: str, path: StrPath
) -> None:
    """Check that the hyperparameters name each of *names*."""
    missing = [name for name in names if hp.get(name) is None]
    if missing:
        raise GlcgeoError(
            f'hyper_parameters lack {", ".join(missing)}: not {KIND_NAMES[kind]}',
            path,
        )


def state_dict_misfit(
    module: nn.Module, state_dict: Mapping[str, Tensor], strict: bool
) -> str:
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


def _pretrained_network(checkpoint: Mapping[str, Any], path: StrPath) -> GLCNet:
    """Rebuild the pretraining network of a GLCNet checkpoint, strictly.

    Raises:
        GlcgeoError: if the checkpoint is not a GLCNetTask checkpoint or its
            weights do not fit the network its hyperparameters describe.
    """
    hp = checkpoint['hyper_parameters']
    _require(hp, ('backbone', 'in_channels'), 'glcnet', path)
    try:
        network = GLCNet(
            backbone=hp['backbone'],
            in_channels=int(hp['in_channels']),
            ablation=hp.get('ablation', 'full'),
        )
    except (KeyError, ValueError) as error:
        raise GlcgeoError(f'cannot rebuild the network: {error}', path) from None
    state_dict = state_dict_part(checkpoint['state_dict'], 'model.')
    misfit = state_dict_misfit(network, state_dict, strict=True)
    if misfit:
        raise GlcgeoError(
            f'weights do not fit GLCNet(backbone={hp["backbone"]!r}, '
            f'in_channels={hp["in_channels"]}): {misfit}',
            path,
        )
    network.load_state_dict(state_dict)
    return network


def weights_of(checkpoint: Mapping[str, Any], path: StrPath) -> PretrainedWeights:
    """The pretrained weights a checkpoint holds, whatever its layout.

    Args:
        checkpoint: a checkpoint from :func:`read_checkpoint`.
        path: its file, named in errors.

    Returns:
        the encoder and the pretrained decoder (see :class:`PretrainedWeights`).

    Raises:
        GlcgeoError: if the checkpoint is of no layout of :func:`checkpoint_kind`
            or lacks what its layout needs.
    """
    kind = checkpoint_kind(checkpoint)
    if kind is None:
        raise GlcgeoError(
            'no encoder weights: not glcgeo weights, a GLCNet or segmentation '
            'checkpoint, nor a SimCLR/MoCo checkpoint',
            path,
        )
    hp = checkpoint['hyper_parameters']
    # SimCLR and MoCo name their timm backbone 'model'.
    backbone_key = 'model' if kind == 'ssl_backbone' else 'backbone'
    _require(hp, (backbone_key, 'in_channels'), kind, path)
    encoder_prefix, decoder_prefix = LAYOUTS[kind]
    state_dict = checkpoint['state_dict']
    encoder = state_dict_part(state_dict, encoder_prefix)
    decoder = state_dict_part(state_dict, decoder_prefix) if decoder_prefix else {}
    if kind == 'glcnet':
        # Rebuilt to check the weights, and to know which decoder part trained.
        network = _pretrained_network(checkpoint, path)
        trained = network.trained_decoder_prefix.removeprefix('decoder.')
        decoder = {k: v for k, v in decoder.items() if k.startswith(trained)}
    try:
        metadata = BandMetadata.from_hyperparameters(hp)
    except GlcgeoError as error:
        raise GlcgeoError(f'inconsistent metadata: {error}', path) from None
    return PretrainedWeights(
        backbone=str(hp[backbone_key]),
        in_channels=int(hp['in_channels']),
        encoder=encoder,
        decoder=decoder,
        hyper_parameters=hp,
        **metadata.to_hyperparameters(),
    )


def read_weights(path: StrPath) -> PretrainedWeights:
    """Read the pretrained weights of a checkpoint of any layout.

    glcgeo weights (:func:`write_weights`), a GLCNet pretraining checkpoint, a
    segmentation checkpoint (e.g. a fine-tuning run's ``model.ckpt``) or a
    TorchGeo SimCLR/MoCo checkpoint (see :func:`checkpoint_kind`).

    Args:
        path: the checkpoint.

    Returns:
        the weights and their normalisation statistics.

    Raises:
        GlcgeoError: if the file is missing, unreadable or holds no weights
            glcgeo can use.
    """
    return weights_of(read_checkpoint(path), path)


def write_weights(weights: PretrainedWeights, path: StrPath) -> PretrainedWeights:
    """Write pretrained weights in the layout TorchGeo reads ('weights').

    The file is written whole or not at all, and only once TorchGeo's
    ``extract_backbone`` has read the encoder back as it was meant.

    Args:
        weights: the weights; their plain settings (strings, numbers, tuples)
            are kept in the hyperparameters, with the band metadata.
        path: the file to write.

    Returns:
        *weights*, with the hyperparameters written.
    """
    # Only writing weights needs TorchGeo's tasks, whose import takes seconds.
    from torchgeo.tasks.utils import extract_backbone

    # TorchGeo takes its 'model' branch when hyper_parameters name a 'model', which
    # would read these keys wrongly: keep only plain settings, never 'model'.
    hyper_parameters: dict[str, Any] = {
        key: value
        for key, value in weights.hyper_parameters.items()
        if key != 'model' and isinstance(value, str | int | float | bool | tuple)
    }
    hyper_parameters.update(
        backbone=weights.backbone,
        in_channels=weights.in_channels,
        bands=weights.bands,
        band_mean=weights.band_mean,
        band_std=weights.band_std,
        band_dtype=weights.band_dtype,
    )
    encoder_prefix, decoder_prefix = LAYOUTS['weights']
    assert decoder_prefix is not None
    state_dict = {encoder_prefix + k: v for k, v in weights.encoder.items()}
    state_dict.update({decoder_prefix + k: v for k, v in weights.decoder.items()})
    with atomic_write(path) as temporary:
        torch.save(
            {'state_dict': state_dict, 'hyper_parameters': hyper_parameters},
            temporary,
        )
        name, encoder = extract_backbone(temporary)
        if name != weights.backbone or encoder.keys() != weights.encoder.keys():
            raise RuntimeError('TorchGeo does not read the exported encoder back')
    return dataclasses.replace(weights, hyper_parameters=hyper_parameters)
