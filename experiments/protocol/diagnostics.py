"""Frozen-feature separability: how much a start's encoder features say per pixel.

A multinomial logistic regression on each pixel's frozen encoder features
(stride-4 and stride-16 maps, upsampled to pixels), fitted on the labelled
tiles of a budget and scored (Kappa) on the validation tiles (on test only to
diagnose a result already scored, never to choose). It needs no
decoder and no schedule, so it varies far less over seeds than fine-tuning:
a direct reading of what pretraining put into the encoder. ``raw`` fits the
same classifier on the normalised band values alone, the floor any useful
feature should beat on spectral land cover.
"""

import torch
import torch.nn.functional as F

from glcgeo.tasks import FinetuneTask

from .finetuning import IGNORE, TiledSet, recalibrate, score

#: Encoder outputs read: smp's stride-4 and stride-16 (dilated) maps.
LAYERS = (2, -1)


def frozen_encoder(
    data: TiledSet, weights: str | None, seed: int, backbone: str = 'resnet18'
) -> torch.nn.Module:
    """A start's encoder as the probe freezes it.

    Args:
        data: the tiles (band count, classes, training images).
        weights: start checkpoint (None: random weights, seeded by *seed*).
        seed: seed of random weights.
        backbone: smp encoder name.

    Returns:
        the encoder, its batch-norm statistics re-estimated on training images
        (:func:`~protocol.finetuning.recalibrate`), frozen.
    """
    torch.manual_seed(seed)
    encoder = FinetuneTask(
        backbone=backbone,
        weights=weights,
        in_channels=data.in_channels,
        num_classes=len(data.class_names),
    ).model.encoder
    recalibrate(encoder, data.calibration())
    return encoder


def separability(
    data: TiledSet,
    weights: str | None,
    budget: str,
    seed: int,
    raw: bool = False,
    backbone: str = 'resnet18',
    split: str = 'val',
) -> float:
    """Validation Kappa of a per-pixel linear classifier on frozen features.

    Args:
        data: the tiles.
        weights: start checkpoint (None: random weights, seeded by *seed*).
        budget: labelled training tiles or a percentage of the labelled pixels
            (see :meth:`TiledSet.budget`).
        seed: seed of the budget draw and of random weights.
        raw: classify the normalised bands themselves, not features.
        backbone: smp encoder name.
        split: the tiles scored, 'val' (or 'test' to diagnose a scored result).

    Returns:
        the Kappa on *split*.
    """
    encoder = frozen_encoder(data, weights, seed, backbone)

    def features(images: torch.Tensor) -> torch.Tensor:
        if raw:
            return images
        with torch.no_grad():
            maps = encoder(images)
        return torch.cat(
            [
                F.interpolate(maps[i], size=images.shape[-2:], mode='bilinear')
                for i in LAYERS
            ],
            dim=1,
        )

    labelled = data.train[data.budget(budget, seed)]
    train = features(labelled.images)
    channels = train.shape[1]
    x = train.permute(0, 2, 3, 1).reshape(-1, channels)
    y = labelled.masks.reshape(-1).long()
    keep = y != IGNORE
    x, y = x[keep], y[keep]
    mean, std = x.mean(0), x.std(0) + 1e-6
    linear = torch.nn.Linear(channels, len(data.class_names))
    optimizer = torch.optim.LBFGS(
        linear.parameters(), max_iter=200, line_search_fn='strong_wolfe'
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear((x - mean) / std), y)
        loss = loss + 1e-3 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    scored = getattr(data, split)
    maps = features(scored.images)

    def predict(part: slice) -> torch.Tensor:
        pixels = (maps[part].permute(0, 2, 3, 1) - mean) / std
        return linear(pixels).permute(0, 3, 1, 2)

    return score(predict, scored.masks, data.class_names)['Kappa']
