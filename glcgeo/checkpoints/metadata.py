"""The one schema of what glcgeo keeps in a checkpoint besides the weights.

Each task's own settings are its hyperparameters; what a model needs to know of
its data is defined here, once: :class:`BandMetadata` (``bands``, ``band_mean``,
``band_std``) for every model glcgeo trains, :class:`ModelMetadata` (adding the
network: ``model``, ``backbone``, ``in_channels``) for every model run over
scenes, and :class:`CheckpointMetadata` (adding ``class_names``,
``class_colors`` and ``ignore_index``) for segmentation models.
"""

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import matplotlib

from ..errors import GlcgeoError
from .files import read_checkpoint

__all__ = [
    'BandMetadata',
    'CheckpointMetadata',
    'ModelMetadata',
    'default_palette',
    'read_band_metadata',
]

StrPath = str | os.PathLike[str]


def _optional_tuple(values: Sequence[Any] | None, kind: type) -> tuple[Any, ...] | None:
    return None if values is None else tuple(kind(value) for value in values)


def _plain_list(values: Sequence[Any] | None, kind: type) -> list[Any] | None:
    """Values as a plain list (what ``torch.load(weights_only=True)`` reads)."""
    return None if values is None else [kind(value) for value in values]


def _check_length(what: str, values: Sequence[Any], expected: int) -> None:
    if len(values) != expected:
        raise GlcgeoError(
            f'{len(values)} {what} given, the model has {expected}: {list(values)}'
        )


@dataclass(frozen=True, kw_only=True)
class BandMetadata:
    """What a model knows of its input bands: glcgeo's part of its hyperparameters.

    Attributes:
        bands: 1-based band indexes of the input files to read, None for all.
        band_mean: per-band mean of raw values, None for no normalisation.
        band_std: per-band standard deviation of raw values.
        band_dtype: dtype of the raw values (``'uint8'``, ``'uint16'`` ...), None
            where not known.

    """

    bands: tuple[int, ...] | None = None
    band_mean: tuple[float, ...] | None = None
    band_std: tuple[float, ...] | None = None
    band_dtype: str | None = None

    def __post_init__(self) -> None:
        """Check that the statistics go together."""
        if (self.band_mean is None) != (self.band_std is None):
            raise GlcgeoError('band mean and std must be given together')
        if self.band_mean is not None and self.band_std is not None:
            _check_length('band stds', self.band_std, len(self.band_mean))
            if any(s <= 0 for s in self.band_std):
                raise GlcgeoError(f'band stds must be positive, got {self.band_std}')

    @staticmethod
    def _fields(hyper_parameters: Mapping[str, Any]) -> dict[str, Any]:
        return {
            'bands': _optional_tuple(hyper_parameters.get('bands'), int),
            'band_mean': _optional_tuple(hyper_parameters.get('band_mean'), float),
            'band_std': _optional_tuple(hyper_parameters.get('band_std'), float),
            'band_dtype': hyper_parameters.get('band_dtype'),
        }

    @classmethod
    def from_hyperparameters(cls, hyper_parameters: Mapping[str, Any]) -> Self:
        """Read the band metadata of a checkpoint's hyperparameters.

        Args:
            hyper_parameters: the checkpoint's hyperparameters.

        Returns:
            the metadata; fields the hyperparameters lack are None.
        """
        return cls(**cls._fields(hyper_parameters))

    def to_hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters that carry this metadata in a checkpoint.

        Returns:
            ``bands``, ``band_mean`` and ``band_std`` as plain lists (or None), and
            ``band_dtype``.
        """
        return {
            'bands': _plain_list(self.bands, int),
            'band_mean': _plain_list(self.band_mean, float),
            'band_std': _plain_list(self.band_std, float),
            'band_dtype': self.band_dtype,
        }


def read_band_metadata(path: StrPath) -> BandMetadata:
    """Read the band metadata of any checkpoint.

    Args:
        path: the checkpoint.

    Returns:
        its bands and statistics (None where it has none).

    Raises:
        GlcgeoError: if the file is not a readable checkpoint, or its band
            metadata do not go together.
    """
    hyper_parameters = read_checkpoint(path)['hyper_parameters']
    try:
        return BandMetadata.from_hyperparameters(hyper_parameters)
    except GlcgeoError as error:
        raise GlcgeoError(f'inconsistent metadata: {error}', path) from None


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


@dataclass(frozen=True, kw_only=True)
class ModelMetadata(BandMetadata):
    """What running a network over scenes needs to know of it besides its weights.

    Attributes:
        model: the architecture, e.g. ``'deeplabv3+'`` or ``'unet'``.
        backbone: encoder name, e.g. ``'resnet18'``.
        in_channels: number of input bands the model takes.

    """

    model: str
    backbone: str
    in_channels: int

    def __post_init__(self) -> None:
        """Check the bands and statistics against the model's input."""
        if self.bands is not None:
            _check_length('bands', self.bands, self.in_channels)
        for what, values in (
            ('band means', self.band_mean),
            ('band stds', self.band_std),
        ):
            if values is not None:
                _check_length(what, values, self.in_channels)
        super().__post_init__()

    def replace(self, **changes: Any) -> Self:
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


@dataclass(frozen=True, kw_only=True)
class CheckpointMetadata(ModelMetadata):
    """What a prediction needs to know about a segmentation model besides its weights.

    Attributes:
        model: TorchGeo model name, e.g. ``'deeplabv3+'`` or ``'unet'``.
        num_classes: number of classes predicted (2 for a binary task).
        task: ``'multiclass'`` or ``'binary'`` (one sigmoid output).
        class_names: one name per class.
        class_colors: one (r, g, b) colour per class, 0-255.
        ignore_index: a class the model was not trained to predict, never output.

    """

    num_classes: int
    task: str = 'multiclass'
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
        _check_length('class names', self.class_names, self.num_classes)
        _check_length('class colours', self.class_colors, self.num_classes)
        super().__post_init__()

    @classmethod
    def from_hyperparameters(cls, hyper_parameters: Mapping[str, Any]) -> Self:
        """Read the metadata of a segmentation checkpoint's hyperparameters.

        TorchGeo's own checkpoints name their classes ``labels`` and have no
        band metadata; glcgeo's add the fields of :class:`BandMetadata` and the
        classes' names, colours and ignored index.

        Args:
            hyper_parameters: the checkpoint's hyperparameters, with ``model``,
                ``backbone`` and ``in_channels``.

        Returns:
            the metadata.

        Raises:
            GlcgeoError: if its fields do not fit together.
        """
        hp = hyper_parameters
        task = hp.get('task', 'multiclass')
        return cls(
            **cls._fields(hp),
            model=hp['model'],
            backbone=hp['backbone'],
            in_channels=hp['in_channels'],
            # A binary model has one sigmoid output for two classes.
            num_classes=2 if task == 'binary' else hp.get('num_classes') or 1,
            task=task,
            class_names=tuple(hp.get('class_names') or hp.get('labels') or ()),
            class_colors=tuple(tuple(c) for c in hp.get('class_colors') or ()),
            ignore_index=hp.get('ignore_index'),
        )
