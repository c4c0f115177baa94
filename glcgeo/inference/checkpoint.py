"""Loading a segmentation model and its metadata from a Lightning checkpoint.

Two kinds of checkpoints load:

* TorchGeo's :class:`~torchgeo.tasks.SemanticSegmentation` checkpoints: the
  ``state_dict`` holds the segmentation_models_pytorch model under ``model.*`` and
  ``hyper_parameters`` say how to build it (``model``, ``backbone``, ``in_channels``,
  ``num_classes``, ``task``; ``labels`` names the classes).
* glcgeo fine-tuning checkpoints: the same, plus the extras ``bands`` (1-based band
  indexes of the input files, None for all), ``band_mean`` and ``band_std`` (applied
  as ``(x - mean) / std`` to raw pixel values), ``class_names``, ``class_colors``
  (``[r, g, b]``, 0-255) and ``ignore_index``.

The model is rebuilt by TorchGeo's own task class with random initial weights (never
downloaded), then the checkpoint's weights are loaded strictly.
"""

import dataclasses
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
from torch import nn
from torchgeo.tasks import SemanticSegmentation

from ..checkpoints import read_checkpoint
from ..errors import GlcgeoError

__all__ = ['CheckpointMetadata', 'default_palette', 'load_segmentation_checkpoint']

#: The tasks whose outputs give one class per pixel.
SUPPORTED_TASKS = ('multiclass', 'binary')


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Choose distinct colours for classes without colours of their own.

    Args:
        num_classes: number of classes.

    Returns:
        one (r, g, b) colour, 0-255, per class: matplotlib's ``tab20`` for up to 20
        classes, else evenly spaced samples of ``turbo``.

    """
    if num_classes <= 20:
        colormap = matplotlib.colormaps['tab20']
    else:
        colormap = matplotlib.colormaps['turbo'].resampled(num_classes)
    # An integer indexes a colormap's own entries.
    colours = [colormap(i)[:3] for i in range(num_classes)]
    return [(round(255 * r), round(255 * g), round(255 * b)) for r, g, b in colours]


@dataclass(frozen=True)
class CheckpointMetadata:
    """What a prediction needs to know about a model besides its weights.

    Attributes:
        model: TorchGeo model name, e.g. ``'deeplabv3+'`` or ``'unet'``.
        backbone: encoder name, e.g. ``'resnet18'``.
        in_channels: number of input bands the model takes.
        num_classes: number of classes predicted (2 for a binary task).
        task: ``'multiclass'`` or ``'binary'`` (one sigmoid output).
        bands: 1-based band indexes of the input file to read, None for all.
        band_mean: per-band mean of raw values, None for no normalisation.
        band_std: per-band standard deviation of raw values.
        class_names: one name per class.
        class_colors: one (r, g, b) colour per class, 0-255.
        ignore_index: a class the model was not trained to predict, never output.

    """

    model: str
    backbone: str
    in_channels: int
    num_classes: int
    task: str = 'multiclass'
    bands: tuple[int, ...] | None = None
    band_mean: tuple[float, ...] | None = None
    band_std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] = ()
    class_colors: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int | None = None

    def __post_init__(self) -> None:
        """Fill default class names and colours and check lengths."""
        if not self.class_names:
            names = tuple(f'class_{i}' for i in range(self.num_classes))
            object.__setattr__(self, 'class_names', names)
        if not self.class_colors:
            colours = tuple(default_palette(self.num_classes))
            object.__setattr__(self, 'class_colors', colours)
        self._check_length('class names', self.class_names, self.num_classes)
        self._check_length('class colours', self.class_colors, self.num_classes)
        if self.bands is not None:
            self._check_length('bands', self.bands, self.in_channels)
        if (self.band_mean is None) != (self.band_std is None):
            raise GlcgeoError('band mean and std must be given together')
        if self.band_mean is not None and self.band_std is not None:
            self._check_length('band means', self.band_mean, self.in_channels)
            self._check_length('band stds', self.band_std, self.in_channels)
            if any(s <= 0 for s in self.band_std):
                raise GlcgeoError(f'band stds must be positive, got {self.band_std}')

    @staticmethod
    def _check_length(what: str, values: Sequence[Any], expected: int) -> None:
        if len(values) != expected:
            raise GlcgeoError(
                f'{len(values)} {what} given, the model has {expected}: {list(values)}'
            )

    def replace(self, **changes: Any) -> 'CheckpointMetadata':
        """Copy with some fields changed (e.g. by command-line flags), re-checked.

        Args:
            **changes: fields to change; None values are ignored.

        Returns:
            the new metadata.

        Raises:
            GlcgeoError: if a changed field does not fit the model.

        """
        given = {k: v for k, v in changes.items() if v is not None}
        for key in ('bands', 'band_mean', 'band_std', 'class_names'):
            if key in given:
                given[key] = tuple(given[key])
        return dataclasses.replace(self, **given)


def _task_arguments(hparams: dict[str, Any]) -> dict[str, Any]:
    """Select the hyperparameters that TorchGeo's SemanticSegmentation accepts."""
    accepted = inspect.signature(SemanticSegmentation.__init__).parameters
    arguments = {k: v for k, v in hparams.items() if k in accepted}
    # Build the architecture only: pretrained weights are replaced by the
    # checkpoint's own, and must never be downloaded.
    arguments['weights'] = None
    return arguments


def _optional_tuple(value: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def load_segmentation_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[nn.Module, CheckpointMetadata]:
    """Load a segmentation model and its metadata from a Lightning checkpoint.

    The checkpoint is read with ``torch.load(weights_only=True)``: it may hold
    tensors and plain Python values only, so loading cannot run arbitrary code.

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
        weights = {
            key.removeprefix('model.'): value
            for key, value in state_dict.items()
            if key.startswith('model.')
        }
        module.load_state_dict(weights)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        reason = str(e).splitlines()[0]
        raise GlcgeoError(f'weights do not fit the model ({reason})', path) from None
    try:
        metadata = CheckpointMetadata(
            model=hparams['model'],
            backbone=hparams['backbone'],
            in_channels=hparams['in_channels'],
            # A binary model has one sigmoid output for two classes.
            num_classes=2 if task == 'binary' else hparams.get('num_classes') or 1,
            task=task,
            bands=_optional_tuple(hparams.get('bands')),
            band_mean=_optional_tuple(hparams.get('band_mean')),
            band_std=_optional_tuple(hparams.get('band_std')),
            class_names=tuple(
                hparams.get('class_names') or hparams.get('labels') or ()
            ),
            class_colors=tuple(tuple(c) for c in hparams.get('class_colors') or ()),
            ignore_index=hparams.get('ignore_index'),
        )
    except GlcgeoError as e:
        raise GlcgeoError(f'inconsistent metadata: {e}', path) from None
    return module.eval(), metadata
