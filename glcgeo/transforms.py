"""Transforms of raw band values: the one normalisation, and GLCNet's augmentation.

:func:`normalize_bands` is how every model input is normalised (pretraining views,
fine-tuning tiles, prediction tiles): per-band mean and standard deviation of raw
values, then pixels without data set to 0, the band mean.

GLCNet augments the second view only (GLCNET.md section 3): flips, rot90, per-band
colour jitter, copying one band to all, Gaussian blur and salt noise. Geometric ops
come from kornia, whose 3x3 matrices are kept so that any ground box inside the
overlap can be projected into the augmented view
(:func:`glcgeo.geometry.transform_pixel_boxes`). Photometric ops work for any band
count and act on raw values before normalisation.
"""

import math
from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from .geometry import transform_pixel_boxes

__all__ = [
    'BandJitter',
    'BandToAll',
    'SaltNoise',
    'TwoViewAugmentation',
    'normalize_bands',
]


def normalize_bands(
    image: Tensor,
    mean: Tensor | Sequence[float],
    std: Tensor | Sequence[float],
    valid: Tensor | None = None,
) -> Tensor:
    """Normalise raw band values, then set pixels without data to 0 (the band mean).

    ``(x - mean) / std`` per band; then every band of a pixel that *valid* marks
    as nodata, and any NaN, becomes 0: the band mean, so that fill values (0,
    -9999) and NaN never reach a network as extreme inputs.

    Args:
        image: [..., C, H, W] raw values, of any dtype.
        mean: [C] mean of each band's raw values.
        std: [C] standard deviation of each band's raw values (> 0).
        valid: [..., H, W] bool, True where a pixel holds data (e.g.
            :meth:`~glcgeo.datasets.GeoTiffMosaic.valid_mask`); None when the
            image marks nodata by NaN only.

    Returns:
        [..., C, H, W] float32 normalised values, 0 where there is no data.
    """
    mean = torch.as_tensor(mean, dtype=torch.float32, device=image.device)
    std = torch.as_tensor(std, dtype=torch.float32, device=image.device)
    # One new tensor, then in place: the input is never changed.
    normalized = image.to(torch.float32, copy=True)
    normalized.sub_(mean[:, None, None]).div_(std[:, None, None])
    if valid is not None:
        normalized.masked_fill_(~valid.unsqueeze(-3), 0.0)
    if image.is_floating_point():
        normalized.masked_fill_(torch.isnan(normalized), 0.0)
    return normalized


def _holds_data(image: Tensor) -> Tensor:
    """[B, H, W] True where no band of a [B, C, H, W] image is NaN (nodata)."""
    return ~torch.isnan(image).any(dim=-3)


def _apply_mask(batch_size: int, p: float, device: torch.device) -> Tensor:
    """Per-sample Bernoulli(p) draws, shaped [B, 1, 1, 1] for broadcasting."""
    return (torch.rand(batch_size, 1, 1, 1, device=device) < p).float()


class BandJitter(nn.Module):
    """Per-band brightness and contrast jitter for any number of bands.

    Each band of each selected image is multiplied by a brightness factor and
    stretched around its own spatial mean by a contrast factor, both drawn
    uniformly in ``[1 - amount, 1 + amount]`` (GLCNet: +-10 %).
    """

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1, p: float = 0.8):
        """Initialize a new BandJitter.

        Args:
            brightness: largest relative brightness change.
            contrast: largest relative contrast change.
            p: probability of jittering an image.
        """
        super().__init__()
        self.brightness = brightness
        self.contrast = contrast
        self.p = p

    def forward(self, image: Tensor) -> Tensor:
        """Jitter a batch.

        Args:
            image: [B, C, H, W] raw values.

        Returns:
            the jittered batch.
        """
        b, c = image.shape[:2]
        factors = torch.empty(2, b, c, 1, 1, device=image.device)
        brightness = factors[0].uniform_(1 - self.brightness, 1 + self.brightness)
        contrast = factors[1].uniform_(1 - self.contrast, 1 + self.contrast)
        mean = image.mean(dim=(-2, -1), keepdim=True)
        jittered = ((image - mean) * contrast + mean) * brightness
        apply = _apply_mask(b, self.p, image.device)
        return apply * jittered + (1 - apply) * image


class BandToAll(nn.Module):
    """Copy one randomly chosen band to every band (GLCNet's "grey" view)."""

    def __init__(self, p: float = 0.1):
        """Initialize a new BandToAll.

        Args:
            p: probability of applying it to an image.
        """
        super().__init__()
        self.p = p

    def forward(self, image: Tensor) -> Tensor:
        """Apply to a batch.

        Args:
            image: [B, C, H, W].

        Returns:
            the batch, some images made of one band repeated.
        """
        b, c = image.shape[:2]
        band = torch.randint(0, c, (b,), device=image.device)
        chosen = image[torch.arange(b, device=image.device), band][:, None]
        apply = _apply_mask(b, self.p, image.device)
        return apply * chosen.expand_as(image) + (1 - apply) * image


class SaltNoise(nn.Module):
    """Set random pixels to each band's maximum (salt noise, GLCNet p = 0.001)."""

    def __init__(self, amount: float = 0.001):
        """Initialize a new SaltNoise.

        Args:
            amount: probability of a pixel becoming salt.
        """
        super().__init__()
        self.amount = amount

    def forward(self, image: Tensor) -> Tensor:
        """Apply to a batch.

        Args:
            image: [B, C, H, W] raw values.

        Returns:
            the batch with salt pixels.
        """
        salt = torch.rand(image.shape[0], 1, *image.shape[2:], device=image.device)
        peak = image.amax(dim=(-2, -1), keepdim=True)
        return torch.where(salt < self.amount, peak, image)


class TwoViewAugmentation(nn.Module):
    """GLCNet's two-view augmentation, recording the second view's geometry.

    The first view is only normalised. The second view goes through random flips
    (no flip with probability 0.4), rot90 (probability 0.8), then the photometric
    ops, then normalisation (both by :func:`normalize_bands`: nodata is 0).
    Matched-region boxes (``boxes2``) are moved through the recorded geometric
    matrix, and the matrix is kept as ``matrix2`` ([B, 3, 3], kornia's
    pixel-centre convention; ``matrix1`` is the identity).

    Example::

        augment = TwoViewAugmentation(mean=stats.mean, std=stats.std)
        batch = augment(batch)  # image1, image2, boxes1, boxes2 on any device
    """

    def __init__(
        self,
        mean: list[float] | Tensor,
        std: list[float] | Tensor,
        no_flip_p: float = 0.4,
        rot90_p: float = 0.8,
        jitter_p: float = 0.8,
        jitter: float = 0.1,
        band_to_all_p: float = 0.1,
        blur_p: float = 0.5,
        salt: float = 0.001,
    ) -> None:
        """Initialize a new TwoViewAugmentation.

        Args:
            mean: per-band mean of raw values, for normalisation.
            std: per-band standard deviation of raw values.
            no_flip_p: probability that view 2 is not flipped.
            rot90_p: probability of a 90, 180 or 270 degree rotation of view 2.
            jitter_p: probability of per-band brightness/contrast jitter.
            jitter: largest relative brightness and contrast change.
            band_to_all_p: probability of copying one band to all bands.
            blur_p: probability of a Gaussian blur (sigma 0.8 to 1.4, the sigmas
                OpenCV derives for GLCNet's kernel sizes 3, 5 and 7).
            salt: per-pixel probability of salt noise.
        """
        super().__init__()
        # Two independent flips, each with p = 1 - sqrt(no_flip_p), leave the view
        # unflipped with probability no_flip_p.
        flip_p = 1 - math.sqrt(no_flip_p)
        self.geometric = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=flip_p),
            K.RandomVerticalFlip(p=flip_p),
            K.RandomRotation90(times=(1, 3), p=rot90_p),
            data_keys=['input'],
        )
        self.photometric = nn.Sequential(
            BandJitter(jitter, jitter, p=jitter_p),
            BandToAll(p=band_to_all_p),
            K.RandomGaussianBlur(kernel_size=7, sigma=(0.8, 1.4), p=blur_p),
            SaltNoise(salt),
        )
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32)

    @torch.no_grad()
    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Augment a two-view batch.

        Args:
            batch: ``image1``, ``image2`` [B, C, H, W] raw values (NaN where
                there is no data) and ``boxes1``, ``boxes2`` [B, R, 4] pixel
                boxes of the matched regions.

        Returns:
            the batch with augmented images, normalised by
            :func:`normalize_bands` (0 where there is no data), moved
            ``boxes2``, ``matrix1``, ``matrix2`` [B, 3, 3], and
            ``valid_pixels1``, ``valid_pixels2`` [B, H, W] bool, True where
            each view holds data.
        """
        image1 = batch['image1'].float()
        image2 = batch['image2'].float()
        # The data module is not moved to the device the batches are on.
        mean, std = self.mean.to(image2.device), self.std.to(image2.device)
        valid2 = _holds_data(image2)[:, None]
        # The photometric ops mix pixels (blur, band means): nodata enters them
        # as the band mean, what normalisation makes of it anyway.
        image2 = torch.where(valid2, image2, mean[:, None, None])
        # The flips and rotations move the valid mask with the pixels.
        moved = self.geometric(torch.cat([image2, valid2.to(image2)], dim=1))
        image2, valid2 = moved[:, :-1], moved[:, -1] > 0.5
        matrix2 = self.geometric.transform_matrix
        if matrix2 is None:
            matrix2 = torch.eye(3, device=image2.device).expand(len(image2), 3, 3)
        # kornia's rot90 is an affine warp: round its matrix to the exact
        # permutation so boxes stay on pixel edges.
        matrix2 = matrix2.round()
        batch['boxes2'] = transform_pixel_boxes(batch['boxes2'], matrix2)
        batch['matrix2'] = matrix2
        batch['matrix1'] = torch.eye(3, device=image2.device).expand_as(matrix2)
        valid1 = _holds_data(image1)
        batch['image1'] = normalize_bands(image1, mean, std, valid1)
        batch['image2'] = normalize_bands(self.photometric(image2), mean, std, valid2)
        batch['valid_pixels1'], batch['valid_pixels2'] = valid1, valid2
        return batch
