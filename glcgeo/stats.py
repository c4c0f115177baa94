"""Per-band normalisation statistics computed from a mosaic by sampling.

uint8 aerial images and uint16 Sentinel-2 reflectances differ by orders of
magnitude; :func:`compute_band_stats` estimates each band's mean and standard
deviation from random windows of the mosaic's valid area (never loading it whole),
and :class:`BandStats` saves them as JSON so that pretraining, fine-tuning and
prediction normalise alike.
"""

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Generator, Tensor

from .checkpoints import BandMetadata
from .datasets import GeoTiffMosaic
from .errors import GlcgeoError
from .outputs import atomic_write
from .transforms import normalize_bands

__all__ = ['BandStats', 'compute_band_stats']


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

    def check_band_count(
        self, count: int, data: str, path: str | os.PathLike[str] | None = None
    ) -> None:
        """Check that the statistics are of *count* bands.

        Args:
            count: the band count of the data they normalise.
            data: the data, with its verb (``'the mosaic has'``), for the message.
            path: the statistics file, named by the error.

        Raises:
            GlcgeoError: if the counts differ.
        """
        if len(self.mean) != count:
            raise GlcgeoError(
                f'statistics of {len(self.mean)} bands, but {data} {count}', path
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
        """Read statistics written by :meth:`save`.

        Args:
            path: the JSON file.

        Returns:
            the statistics.

        Raises:
            GlcgeoError: if the file is missing or not glcgeo statistics.

        """
        try:
            with open(path) as f:
                data = json.load(f)
            return cls(**data)
        except FileNotFoundError:
            raise GlcgeoError('no such statistics file', path) from None
        except OSError as error:  # a folder, an unreadable file
            raise GlcgeoError(
                f'cannot read the statistics ({error.strerror})', path
            ) from None
        except (json.JSONDecodeError, TypeError) as error:
            raise GlcgeoError(f'not glcgeo band statistics ({error})', path) from None


def compute_band_stats(
    dataset: GeoTiffMosaic,
    windows: int = 64,
    window_size: int = 128,
    generator: Generator | None = None,
) -> BandStats:
    """Estimate per-band mean and standard deviation from random windows.

    Windows are centred on random points of the mosaic's valid area; nodata pixels
    are excluded. The result is deterministic for a given generator.

    Args:
        dataset: the mosaic.
        windows: number of windows to read.
        window_size: side of each window, in mosaic pixels (clamped to the mosaic).
        generator: random generator (defaults to one seeded with 0).

    Returns:
        the statistics.

    Raises:
        GlcgeoError: if the sampled windows hold no valid pixel.

    """
    from .samplers import PairedWindowSampler

    generator = generator or torch.Generator().manual_seed(0)
    grid = dataset.grid
    x, y, _ = dataset.bounds
    # Whole pixels, as the sampler counts them (a partial last pixel is no pixel).
    width = math.floor((x.stop - x.start) / grid.res[0] + 1e-6)
    height = math.floor((y.stop - y.start) / grid.res[1] + 1e-6)
    size = max(1, min(window_size, width, height))
    # The pair sampler knows where the valid data is.
    sampler = PairedWindowSampler(
        dataset, size=size, length=windows, scale=(1.0, 1.0), max_nodata=0.99
    )
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    count = 0
    total = np.zeros(dataset.num_bands)
    total_sq = np.zeros(dataset.num_bands)
    for _ in range(windows):
        window = sampler.random_window(rng, size)
        xmin, ymin, xmax, ymax = grid.window_bounds(window)
        image = dataset.read_window(xmin, ymin, xmax, ymax)
        # Gaps between files are filled with 0, which is data for files without
        # a nodata value: keep only pixels whose centre lies on a file.
        valid = dataset.valid_mask(image) & dataset.on_files(xmin, ymin, xmax, ymax)
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
        files=list(dataset.files),
    )
