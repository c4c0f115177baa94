"""GLCNet: DeepLabV3+ with a global style head and a local region-matching head."""

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from .variants import ABLATIONS, MATCHINGS

__all__ = [
    'ABLATIONS',
    'MATCHINGS',
    'GLCNet',
    'centre_matched_boxes',
    'pool_regions',
    'style_vector',
]


def style_vector(
    features: Tensor, with_variance: bool = True, weights: Tensor | None = None
) -> Tensor:
    """Summarise a feature map by its per-channel spatial statistics ("style").

    Args:
        features: feature map [B, C, H, W].
        with_variance: append the per-channel spatial variance to the mean (GLCNet's
            style vector); False gives the mean alone (the no-style ablation).
        weights: [B, 1, H, W] weight of each position in [0, 1] (the share of
            its input pixels holding data), or None for all 1: positions over
            nodata count less, or not at all.

    Returns:
        [B, 2C] (mean then variance) or [B, C] (mean).
    """
    flat = features.flatten(2)
    if weights is None:
        mean = flat.mean(dim=2)
        if not with_variance:
            return mean
        # Unbiased (N - 1) variance, as the authors' torch.var.
        return torch.cat([mean, flat.var(dim=2)], dim=1)
    w = weights.flatten(2)
    total = w.sum(dim=2)
    mean = (w * flat).sum(dim=2) / total
    if not with_variance:
        return mean
    # The unbiased variance of reliability weights: N - 1 when all are 1.
    squared = (w * (flat - mean[..., None]) ** 2).sum(dim=2)
    variance = squared / (total - w.square().sum(dim=2) / total)
    return torch.cat([mean, variance], dim=1)


def pool_regions(feature_map: Tensor, boxes: Tensor, output_size: int = 7) -> Tensor:
    """Average a feature map over boxes given in its pixel coordinates.

    Each box is cut out with RoI-align (bilinear sampling of the map, whose samples
    sit at pixel centres) on an *output_size* x *output_size* grid of equal bins and
    the bins are averaged, which approximates the mean of the map over the box's
    exact extent, fractional edges included.

    Args:
        feature_map: [N, C, H, W] map at the resolution of the boxes.
        boxes: [N, R, 4] boxes ``(x1, y1, x2, y2)`` in pixels of *feature_map*, with
            the pixel-edge convention: pixel (row i, col j) covers x in [j, j + 1)
            and y in [i, i + 1).
        output_size: bins per side of the RoI-align grid.

    Returns:
        [N * R, C] region means, image-major (all regions of image 0 first).
    """
    rois = list(boxes.to(feature_map.dtype).unbind(0))
    # aligned=True shifts boxes by half a pixel, which maps the pixel-edge
    # convention onto roi_align's sample grid (pixel centres at integer + 0.5).
    crops = roi_align(
        feature_map,
        rois,
        output_size=output_size,
        spatial_scale=1.0,
        sampling_ratio=-1,
        aligned=True,
    )
    return crops.mean(dim=(2, 3))


def centre_matched_boxes(boxes: Tensor, size: float) -> Tensor:
    """Square boxes of a fixed pixel size centred on the given boxes' centres.

    This is the authors' matching: the two views' boxes share a centre but, when the
    views have different scales, cover different ground extents.

    Args:
        boxes: [..., 4] boxes ``(x1, y1, x2, y2)`` in pixels.
        size: side of the returned boxes in pixels.

    Returns:
        boxes of the same shape and dtype, *size* pixels wide and high.
    """
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = size / 2
    return torch.cat([centres - half, centres + half], dim=-1)


def _mlp(in_features: int, hidden_features: int, out_features: int) -> nn.Sequential:
    """Two-layer projection head without batch normalisation, as the authors'."""
    return nn.Sequential(
        nn.Linear(in_features, hidden_features),
        nn.ReLU(),
        nn.Linear(hidden_features, out_features),
    )


class GLCNet(nn.Module):
    """GLCNet network: a shared DeepLabV3+ with global style and local heads.

    Li et al., "Global and Local Contrastive Self-Supervised Learning for Semantic
    Segmentation of HR Remote Sensing Images", IEEE TGRS 60 (2022).

    ``self.model`` is segmentation_models_pytorch's DeepLabV3Plus exactly as TorchGeo's
    :class:`~torchgeo.tasks.SemanticSegmentation` builds it (smp defaults, output
    stride 16), so ``model.encoder.*`` and ``model.decoder.*`` transfer key for key;
    its segmentation head gives the *local_channels*-channel map of the local branch.

    * Global branch: style vector (per-channel spatial mean and variance) of the
      256-channel ASPP output at stride 16 (smp's ``decoder.aspp`` block: ASPP and
      its 3x3 separable convolution) -> MLP 512-256-*embedding_dim*.
    * Local branch: the segmentation head's map at input size, averaged over each
      matched region's box -> MLP *local_channels*-*local_channels*-*embedding_dim*.

    Both views go through the network in one pass, so batch normalisation sees them
    together.

    Example:
        >>> model = GLCNet(backbone='resnet18', in_channels=4)
        >>> out = model(image1, image2, boxes1, boxes2)
        >>> out['global1'].shape, out['local1'].shape  # [B, 64], [B * R, 64]

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        backbone: str = 'resnet50',
        in_channels: int = 4,
        ablation: str = 'full',
        local_channels: int = 64,
        embedding_dim: int = 64,
        matching: str = 'ground',
        region_size: float = 48.0,
    ) -> None:
        """Initialize a new GLCNet.

        Args:
            backbone: smp encoder name (ResNet-50 in the paper).
            in_channels: number of input bands.
            ablation: 'full', 'no_style' (global head on the channel mean only),
                'global_only' or 'local_only'.
            local_channels: channels of the segmentation head's map (local branch).
            embedding_dim: size of the global and local embeddings.
            matching: 'ground' (use the given boxes, which cover the same ground in
                both views) or 'centre' (the authors' boxes of *region_size* pixels
                around the given boxes' centres).
            region_size: side in pixels of the centre-matched boxes.

        Raises:
            ValueError: for an unknown ablation or matching, or a region_size <= 0.
        """
        super().__init__()
        if ablation not in ABLATIONS:
            raise ValueError(
                f'unknown ablation {ablation!r}; choose one of {", ".join(ABLATIONS)}'
            )
        if matching not in MATCHINGS:
            raise ValueError(
                f'unknown matching {matching!r}; choose one of {", ".join(MATCHINGS)}'
            )
        if region_size <= 0:
            raise ValueError(f'region_size must be positive, got {region_size}')
        self.ablation = ablation
        self.matching = matching
        self.region_size = region_size
        self.model = smp.DeepLabV3Plus(
            encoder_name=backbone,
            encoder_weights=None,
            in_channels=in_channels,
            classes=local_channels,
            encoder_output_stride=16,
        )
        self.uses_global = ablation != 'local_only'
        self.uses_local = ablation != 'global_only'
        self.with_variance = ablation != 'no_style'

        aspp_channels = self.model.segmentation_head[0].in_channels
        if self.uses_global:
            style_size = aspp_channels * (2 if self.with_variance else 1)
            self.global_head = _mlp(style_size, aspp_channels, embedding_dim)
        if self.uses_local:
            self.local_head = _mlp(local_channels, local_channels, embedding_dim)
        else:
            # Without the local branch only encoder and ASPP are trained; freezing
            # the rest keeps DDP from waiting for gradients that never come.
            for name, parameter in self.model.named_parameters():
                if not name.startswith(('encoder.', self.trained_decoder_prefix)):
                    parameter.requires_grad_(False)

    @property
    def trained_decoder_prefix(self) -> str:
        """Key prefix of the decoder parts this variant trains, in ``self.model``.

        Global-only trains the decoder up to the ASPP only; the other variants train
        all of it.
        """
        return 'decoder.' if self.uses_local else 'decoder.aspp.'

    def region_features(
        self, decoded: Tensor, boxes: Tensor, image_size: tuple[int, int]
    ) -> Tensor:
        """Mean of the segmentation head's input-size map over each box.

        The head is a 1x1 convolution followed by bilinear upsampling
        (``align_corners=True``), both linear, so the mean of its upsampled output
        over a box equals the 1x1 convolution of the mean of the decoder map over
        the box mapped onto the decoder's grid (up to the interpolation of the
        upsampled pixels: under 1 % of the map's range). Pooling at the decoder's
        stride avoids building the [2B, 64, H, W] map and its gradient: the same
        features for a fraction of the time and memory.

        Args:
            decoded: [N, C, h, w] decoder output (stride 4).
            boxes: [N, R, 4] boxes in input pixels (pixel-edge convention).
            image_size: (H, W) of the input.

        Returns:
            [N * R, local_channels] region features, image-major.
        """
        conv = self.model.segmentation_head[0]
        (h, w), (height, width) = decoded.shape[-2:], image_size
        # align_corners=True maps input pixel centre u to u * (h - 1) / (H - 1).
        ratio = torch.tensor(
            [(w - 1) / (width - 1), (h - 1) / (height - 1)] * 2,
            dtype=boxes.dtype,
            device=boxes.device,
        )
        pooled = pool_regions(decoded, (boxes - 0.5) * ratio + 0.5)
        return F.linear(pooled, conv.weight.flatten(1), conv.bias)

    def forward(
        self,
        image1: Tensor,
        image2: Tensor,
        boxes1: Tensor,
        boxes2: Tensor,
        valid1: Tensor | None = None,
        valid2: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Embed both views globally and their matched regions locally.

        Args:
            image1: first view [B, C, H, W], normalised.
            image2: second view [B, C, H, W], normalised.
            boxes1: [B, R, 4] matched regions ``(x1, y1, x2, y2)`` in view-1 pixels
                (pixel-edge convention: pixel (row i, col j) covers x in [j, j + 1),
                y in [i, i + 1)).
            boxes2: [B, R, 4] the same regions in view-2 pixels.
            valid1: [B, H, W] bool, True where view 1 holds data; nodata
                positions are left out of the style statistics (None: all data).
            valid2: the same for view 2.

        Returns:
            ``global1``, ``global2`` [B, embedding_dim] (unless local_only) and
            ``local1``, ``local2`` [B * R, embedding_dim] (unless global_only), where
            row i of the first view's tensor matches row i of the second's.
        """
        images = torch.cat([image1, image2])
        outputs: dict[str, Tensor] = {}
        if self.uses_local:
            captured: list[Tensor] = []
            # The ASPP output is internal to smp's decoder: capture it on the way.
            hook = self.model.decoder.aspp.register_forward_hook(
                lambda module, inputs, output: captured.append(output)
            )
            try:
                self.model.check_input_shape(images)
                decoded = self.model.decoder(self.model.encoder(images))
            finally:
                hook.remove()
            aspp = captured[0]
            boxes = torch.cat([boxes1, boxes2])
            if self.matching == 'centre':
                boxes = centre_matched_boxes(boxes, self.region_size)
            height, width = images.shape[-2:]
            regions = self.region_features(decoded, boxes, (height, width))
            local = self.local_head(regions)
            outputs['local1'], outputs['local2'] = local.chunk(2)
        else:
            self.model.check_input_shape(images)
            aspp = self.model.decoder.aspp(self.model.encoder(images)[-1])
        if self.uses_global:
            weights = None
            if valid1 is not None and valid2 is not None:
                # The share of each ASPP position's input pixels holding data.
                valid = torch.cat([valid1, valid2])[:, None].to(aspp.dtype)
                height, width = aspp.shape[-2:]
                weights = F.adaptive_avg_pool2d(valid, (height, width))
            style = style_vector(aspp, self.with_variance, weights)
            embedding = self.global_head(style)
            outputs['global1'], outputs['global2'] = embedding.chunk(2)
        return outputs
