"""Per-band normalisation statistics computed from a mosaic by sampling.

uint8 aerial images and uint16 Sentinel-2 reflectances differ by orders of
magnitude; :func:`compute_band_stats` estimates each band's mean and standard
deviation from random windows of the mosaic's valid area (never loading it whole),
and :class:`BandStats` saves them as JSON (and :meth:`BandStats.load`, the one
reader, reads them back) so that pretraining, fine-tuning and prediction normalise
alike; :func:`resolve_band_stats` gives a data module the statistics given, or
computed, checked against the data's band count.
"""

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Generator, Tensor

from .checkpoints import BandMetadata
from .collection import GeoTiffCollection, group_samplers, mosaic_groups
from .datasets import GeoTiffMosaic
from .errors import GlcgeoError, check_band_count, check_memory, given_name
from .outputs import atomic_write
from .samplers import ValidWindowSampler
from .transforms import normalize_bands

__all__ = ['BandStats', 'compute_band_stats', 'resolve_band_stats']


@dataclass
class BandStats:
    """Per-band statistics of raw pixel values.

    Attributes:
        mean: mean of each band (raw units of the files).
        std: standard deviation of each band (raw units, > 0).
        bands: 1-based band indexes of the files the statistics belong to.
        nodata: the nodata value excluded from the statistics, if any.
        pixels: number of valid pixels sampled.

    """

    mean: list[float]
    std: list[float]
    bands: list[int]
    nodata: float | None = None
    pixels: int = 0
    files: list[str] = field(default_factory=list)

    def normalize(self, image: Tensor, valid: Tensor | None = None) -> Tensor:
        """Normalise raw values with these statistics (:func:`normalize_bands`).

        Args:
            image: [..., C, H, W] raw values.
            valid: [..., H, W] True where a pixel holds data, or None.

        Returns:
            the normalised image, float32, 0 where there is no data.

        """
        return normalize_bands(image, self.mean, self.std, valid)

    def metadata(self, bands: Sequence[int] | None = None) -> BandMetadata:
        """These statistics as the band metadata checkpoints keep.

        Args:
            bands: 1-based band indexes of the files a model reads (defaults to
                :attr:`bands`).

        Returns:
            the metadata.
        """
        return BandMetadata(
            bands=tuple(self.bands if bands is None else bands),
            band_mean=tuple(self.mean),
            band_std=tuple(self.std),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the statistics as JSON.

        The file appears complete or not at all: it is written beside *path* and
        moved in place, so an interrupted write never leaves half a file.

        Args:
            path: the JSON file to write.

        """
        with atomic_write(path) as temporary, open(temporary, 'w') as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> 'BandStats':
        """Read statistics written by :meth:`save`, and check them.

        The one reader of statistics files: every ``--stats`` goes through it.
        ``mean`` and ``std`` are required; ``bands`` defaults to the first
        ``len(mean)`` bands.

        Args:
            path: the JSON file.

        Returns:
            the statistics.

        Raises:
            GlcgeoError: naming the file, if it is missing, unreadable, not JSON,
                or not statistics: an unknown key, a value of the wrong type, a
                mean or std that is not finite, a std <= 0, or lists of different
                lengths.

        """
        try:
            with open(path, encoding='utf-8') as f:
                data = json.load(f)
        except FileNotFoundError:
            raise GlcgeoError('no such statistics file', path) from None
        except OSError as error:  # a folder, an unreadable file
            raise GlcgeoError(
                f'cannot read the statistics ({error.strerror})', path
            ) from None
        except UnicodeDecodeError:  # a checkpoint, an image
            raise GlcgeoError(
                'not glcgeo band statistics (not a JSON text file)', path
            ) from None
        except json.JSONDecodeError as error:
            raise GlcgeoError(
                f'not glcgeo band statistics (not JSON: {error})', path
            ) from None
        try:
            return cls._from_json(data)
        except ValueError as error:
            raise GlcgeoError(f'not glcgeo band statistics ({error})', path) from None

    @classmethod
    def _from_json(cls, data: object) -> 'BandStats':
        """Statistics from a JSON value, checked (see :meth:`load`).

        Raises:
            ValueError: saying what is wrong.
        """
        if not isinstance(data, dict):
            raise ValueError(f'a JSON object is expected, got {type(data).__name__}')
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f'unknown key {unknown[0]!r}; keys: {", ".join(known)}')
        for key in ('mean', 'std'):
            if key not in data:
                raise ValueError(f'no {key!r} list')
        mean = _numbers(data['mean'], 'mean')
        std = _numbers(data['std'], 'std')
        if len(std) != len(mean):
            raise ValueError(f'{len(mean)} means but {len(std)} stds')
        if any(value <= 0 for value in std):
            raise ValueError(f'std must be > 0, got {std}')
        bands = data.get('bands', list(range(1, len(mean) + 1)))
        if not (
            isinstance(bands, list)
            and len(bands) == len(mean)
            and all(_is_int(b) and b >= 1 for b in bands)
        ):
            raise ValueError(
                f"'bands' must be {len(mean)} band indexes >= 1, got {bands!r}"
            )
        nodata = data.get('nodata')
        if nodata is not None and not _is_number(nodata):
            raise ValueError(f"'nodata' must be a number or null, got {nodata!r}")
        pixels = data.get('pixels', 0)
        if not (_is_int(pixels) and pixels >= 0):
            raise ValueError(f"'pixels' must be an integer >= 0, got {pixels!r}")
        files = data.get('files', [])
        if not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
            raise ValueError(f"'files' must be a list of paths, got {files!r}")
        return cls(
            mean=mean, std=std, bands=bands, nodata=nodata, pixels=pixels, files=files
        )


def _is_int(value: object) -> bool:
    """Whether a JSON value is an integer (true and false are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """Whether a JSON value is a number (true and false are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(values: object, key: str) -> list[float]:
    """A non-empty list of finite numbers from a JSON value, or why not.

    Raises:
        ValueError: naming *key*.
    """
    if not (isinstance(values, list) and values and all(_is_number(v) for v in values)):
        raise ValueError(f'{key!r} must be a list of numbers, got {values!r}')
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f'{key!r} must be finite numbers, got {values}')
    return [float(v) for v in values]


def compute_band_stats(
    dataset: GeoTiffMosaic | GeoTiffCollection[Any],
    windows: int = 64,
    window_size: int = 128,
    generator: Generator | None = None,
) -> BandStats:
    """Estimate per-band mean and standard deviation from random windows.

    Windows are centred on random points of the mosaic's valid area
    (:class:`~glcgeo.samplers.ValidWindowSampler`); nodata pixels are excluded.
    In a collection of several CRSs, each window is read from one group, on its
    own grid, the groups drawn in proportion to their valid ground area
    (:func:`~glcgeo.collection.group_samplers`). The result is deterministic for
    a given generator.

    Args:
        dataset: the mosaic, or a collection of several CRSs
            (:func:`~glcgeo.collection.open_mosaic`).
        windows: number of windows to read.
        window_size: side of each window, in mosaic pixels (clamped to the
            mosaic; groups of a collection smaller than that are left out).
        generator: random generator (defaults to one seeded with 0).

    Returns:
        the statistics.

    Raises:
        GlcgeoError: if the sampled windows hold no valid pixel.

    """
    generator = generator or torch.Generator().manual_seed(0)
    # Whole pixels, as the sampler counts them.
    size = max(1, max(min(window_size, *g.shape) for g in mosaic_groups(dataset)))
    # A window is read raw, as float32 and as float64 values.
    check_memory(
        16 * size**2 * dataset.num_bands,
        f'windows of {size:,} x {size:,} pixels of {dataset.num_bands} bands '
        '(--window-size)',
        'choose a smaller --window-size',
    )
    # Windows with any data at all (the pixels without are left out).
    samplers, group_cdf = group_samplers(
        dataset,
        lambda group: ValidWindowSampler(
            group, size=size, length=windows, max_nodata=0.99
        ),
    )
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    count = 0
    total = np.zeros(dataset.num_bands)
    total_sq = np.zeros(dataset.num_bands)
    for _ in range(windows):
        group = 0
        if isinstance(dataset, GeoTiffCollection):
            group = int(group_cdf.searchsorted(rng.random(), side='right'))
        sampler = samplers[group]
        assert sampler is not None  # a group left out is never drawn
        mosaic = sampler.dataset
        window = sampler.random_window(rng, size)
        xmin, ymin, xmax, ymax = mosaic.grid.window_bounds(window)
        image = mosaic.read_window(xmin, ymin, xmax, ymax)
        # Gaps between files are filled with 0, which is data for files without
        # a nodata value: keep only pixels whose centre lies on a file.
        valid = mosaic.valid_mask(image) & mosaic.on_files(xmin, ymin, xmax, ymax)
        pixels = image[:, valid].double().numpy()
        count += pixels.shape[1]
        total += pixels.sum(axis=1)
        total_sq += (pixels**2).sum(axis=1)
    if count == 0:
        raise GlcgeoError(
            'no valid pixel found to compute statistics', dataset.files[0]
        )
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    # A constant band would divide by zero; leave it unscaled.
    std = np.where(std > 0, std, 1.0)
    return BandStats(
        mean=mean.tolist(),
        std=std.tolist(),
        bands=list(dataset.band_indexes_selected),
        nodata=dataset.file_nodata,
        pixels=int(count),
        files=[given_name(f) for f in dataset.files],
    )


def resolve_band_stats(
    stats: BandStats | str | os.PathLike[str] | None,
    dataset: GeoTiffMosaic | GeoTiffCollection[Any],
    data: str = 'the mosaic has',
) -> BandStats:
    """The statistics a data module normalises with: given, or computed.

    Args:
        stats: statistics, their JSON file (:meth:`BandStats.load`), or None to
            compute them from *dataset* (:func:`compute_band_stats`).
        dataset: the data they normalise.
        data: the data, with its verb, for the error (``'the images have'``).

    Returns:
        the statistics, of as many bands as *dataset* reads.

    Raises:
        GlcgeoError: for a file that is no statistics, or statistics of another
            band count than *dataset*'s (naming the file, if any).
    """
    if stats is None:
        return compute_band_stats(dataset)
    path = None if isinstance(stats, BandStats) else stats
    if not isinstance(stats, BandStats):
        stats = BandStats.load(stats)
    check_band_count('statistics of', len(stats.mean), data, dataset.num_bands, path)
    return stats
