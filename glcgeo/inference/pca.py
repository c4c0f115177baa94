"""Principal components of embeddings: the PCA stored with them, and colour previews.

:func:`fit_pca` fits the first principal components of a sample of per-pixel
embeddings (:func:`~glcgeo.inference.embed.sample_embeddings`) in float64;
:class:`PCA` projects embeddings onto them on the model's device (a 1 x 1
convolution) and is stored as JSON in the embeddings' ``pca`` tag, so that the
components can be mapped back to the decoder's channels. :func:`write_preview`
draws three components of an embeddings file as a PNG.
"""

import json
import os
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from torch import Tensor

from ..errors import GlcgeoError
from ..outputs import atomic_write, check_destination

__all__ = ['PCA', 'PCA_PIXELS', 'PREVIEW_SIZE', 'fit_pca', 'write_preview']

#: Most pixels a PCA is fitted on.
PCA_PIXELS = 65_536
#: Largest side of a preview, in pixels: larger embeddings are read from their
#: overviews.
PREVIEW_SIZE = 1024


@dataclass(frozen=True)
class PCA:
    """Principal components of embeddings: ``(embedding - mean) @ components.T``.

    Attributes:
        mean: [D] mean embedding of the sample.
        components: [N, D] unit principal axes, by decreasing variance; each
            axis's largest entry is positive, so the signs are reproducible.
        explained_variance: [N] variance along each axis.
        total_variance: the sample's total variance (sum over D).
        pixels: pixels in the sample.
        seed: seed of the sample.

    .. versionadded:: 0.1
    """

    mean: Tensor
    components: Tensor
    explained_variance: Tensor
    total_variance: float
    pixels: int
    seed: int

    @property
    def dims(self) -> int:
        """N, the number of components."""
        return len(self.components)

    def tag(self) -> str:
        """The PCA as the JSON of the embeddings' ``pca`` tag.

        Returns:
            ``{"mean": [D], "components": [[D] * N], "explained_variance": [N],
            "explained_variance_ratio": [N], "total_variance", "pixels",
            "seed"}``, numbers with 7 significant digits (float32's).
        """

        def rounded(values: Tensor) -> Any:
            return np.vectorize(lambda v: float(f'{v:.7g}'))(values.numpy()).tolist()

        return json.dumps(
            {
                'mean': rounded(self.mean),
                'components': rounded(self.components),
                'explained_variance': rounded(self.explained_variance),
                'explained_variance_ratio': rounded(
                    self.explained_variance / self.total_variance
                ),
                'total_variance': float(f'{self.total_variance:.7g}'),
                'pixels': self.pixels,
                'seed': self.seed,
            }
        )

    @classmethod
    def from_tag(cls, text: str) -> Self:
        """Read a PCA back from the ``pca`` tag of :meth:`tag`."""
        content = json.loads(text)

        def tensor(key: str) -> Tensor:
            return torch.tensor(content[key], dtype=torch.float64)

        return cls(
            tensor('mean'),
            tensor('components'),
            tensor('explained_variance'),
            float(content['total_variance']),
            int(content['pixels']),
            int(content['seed']),
        )

    def convolution(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The projection as a 1 x 1 convolution's weight and bias, as *like*.

        Returns:
            ([N, D, 1, 1] weight, [N] bias) of *like*'s dtype and device.
        """
        weight = self.components.to(like)
        return weight[:, :, None, None], -(weight @ self.mean.to(like))

    def project(self, features: Tensor) -> Tensor:
        """Project [B, D, H, W] embeddings onto the components: [B, N, H, W]."""
        return F.conv2d(features, *self.convolution(features))


def fit_pca(samples: Tensor, dims: int, seed: int = 0) -> PCA:
    """Fit the first principal components of embeddings, in float64.

    Args:
        samples: [n, D] embeddings, n >= 2.
        dims: components kept, 1 to D.
        seed: the sample's seed, recorded.

    Returns:
        the PCA.

    Raises:
        GlcgeoError: if *dims* is not in 1..D or there are fewer than 2 samples.
    """
    count, channels = samples.shape
    if not 1 <= dims <= channels:
        raise GlcgeoError(f'--dims must be 1 to {channels}, got {dims}')
    if count < 2:
        raise GlcgeoError(f'{count} pixels with data: too few to fit a PCA on')
    data = samples.double()
    mean = data.mean(dim=0)
    centred = data - mean
    covariance = centred.T @ centred / (count - 1)
    variances, axes = torch.linalg.eigh(covariance)
    order = variances.argsort(descending=True)[:dims]
    components = axes[:, order].T.contiguous()
    # The sign of an eigenvector is arbitrary: make each one's largest entry
    # positive, so that a PCA fitted twice is the same.
    largest = components.abs().argmax(dim=1, keepdim=True)
    components *= components.gather(1, largest).sign()
    return PCA(
        mean,
        components,
        variances[order].clamp_min(0),
        float(variances.clamp_min(0).sum()),
        count,
        seed,
    )


def _stretch(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Bytes of one band, its 2nd to 98th percentiles over *valid* to 0-255."""
    low, high = np.percentile(values[valid], [2, 98]) if valid.any() else (0, 0)
    scaled = (values - low) / max(high - low, 1e-12) * 255
    return np.where(valid, np.clip(scaled, 0, 255), 0).astype(np.uint8)


def write_preview(
    embeddings: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    size: int = PREVIEW_SIZE,
) -> None:
    """Write a PNG of the first three principal components of embeddings, as colour.

    The embeddings are read at most *size* pixels on a side (averaged, from
    their overviews). Bands that are principal components already (a ``pca``
    tag) are shown as they are; other embeddings are reduced to their first
    three components over the preview's pixels. Each component is stretched
    from its 2nd to its 98th percentile (robust to outliers) to red, green and
    blue; pixels without data are transparent. Written whole (temporary name,
    rename).

    Args:
        embeddings: a file of :func:`embed_raster`.
        path: the PNG to write.
        overwrite: whether an existing file may be replaced.
        size: largest side of the preview, in pixels.

    Raises:
        GlcgeoError: if *path* may not be written, or *embeddings* is no raster.
    """
    from PIL import Image

    check_destination(path, overwrite, inputs=[embeddings])
    with rasterio.open(embeddings) as src:
        scale = max(1.0, max(src.width, src.height) / size)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))

        def band(index: int) -> np.ndarray:
            # One band at a time: a preview of 256 bands would take gigabytes.
            values = src.read(index, out_shape=shape, resampling=Resampling.average)
            return values.astype(np.float64)

        # Nodata (NaN) is every band's at once.
        valid = np.isfinite(band(1))
        if 'pca' in src.tags() or src.count <= 3 or valid.sum() < 2:
            values = [band(b) for b in range(1, min(src.count, 3) + 1)]
        else:
            pixels = np.flatnonzero(valid)
            chosen = np.random.default_rng(0).choice(
                pixels, min(len(pixels), PCA_PIXELS), replace=False
            )
            bands = range(1, src.count + 1)
            sample = np.stack([band(b).flat[chosen] for b in bands], axis=1)
            pca = fit_pca(torch.from_numpy(sample), 3)
            mean, components = pca.mean.numpy(), pca.components.numpy()
            projected = np.zeros((3, *shape))
            for b in bands:
                projected += components[:, b - 1, None, None] * (band(b) - mean[b - 1])
            values = list(projected)
    colour = np.zeros((4, *shape), dtype=np.uint8)
    for channel, component in enumerate(values):
        colour[channel] = _stretch(component, valid)
    colour[3] = np.where(valid, 255, 0)
    with atomic_write(path) as temporary:
        Image.fromarray(np.moveaxis(colour, 0, -1), 'RGBA').save(temporary, 'PNG')
