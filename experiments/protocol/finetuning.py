"""Fine-tuning runs of the protocol: tiles held in memory, selected on validation.

Hundreds of short runs share each data set's tiles, so the tiles are read once
through glcgeo's :class:`~glcgeo.datamodules.SegmentationDataModule` (the split,
the label-budget draw, the mask encoding and the nodata rule of ``glcgeo
finetune``) and kept as tensors. Each run builds glcgeo's
:class:`~glcgeo.tasks.FinetuneTask` (TorchGeo's DeepLabV3+ with the start
weights loaded by glcgeo) and trains with Adam on random dihedral transforms
(the 8 symmetries of a square) of its labelled tiles, scoring the validation
tiles every ``eval_every`` steps. The best state is kept in memory (no
checkpoint files: a run is seconds of training) and training stops after
``patience`` scorings without improvement; the selected state is scored once
on the test tiles.

Two evaluations:

* ``finetune``: every layer trained.
* ``probe``: the encoder frozen, decoder and head trained. The frozen encoder's
  batch-norm statistics are first re-estimated on all training tiles (images
  only, no labels) for every start alike, so that a random encoder, whose
  statistics were never estimated, is not handicapped; then the encoder is
  fixed, its features computed once per tile and symmetry, and only the
  decoder and head run at each step.
"""

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from glcgeo.datamodules import SegmentationDataModule
from glcgeo.metrics import SegmentationMetrics
from glcgeo.samplers import TileSampler
from glcgeo.splits import draw_label_tiles
from glcgeo.tasks import FinetuneTask

#: Class id of pixels without a label or without image data.
IGNORE = 255

#: The 8 symmetries of a square: (quarter turns, mirrored).
SYMMETRIES = [(turns, mirror) for mirror in (False, True) for turns in range(4)]


def transform(tensor: Tensor, symmetry: int) -> Tensor:
    """Apply one of the 8 symmetries to the last two dimensions of *tensor*."""
    turns, mirror = SYMMETRIES[symmetry]
    tensor = tensor.rot90(turns, (-2, -1))
    return tensor.flip(-1) if mirror else tensor


@dataclass
class Tiles:
    """Image tiles and their masks.

    Attributes:
        images: [N, C, H, W] float32, normalised; nodata pixels are 0.
        masks: [N, H, W] int64 class ids, :data:`IGNORE` where not scored.
    """

    images: Tensor
    masks: Tensor

    def __getitem__(self, index: Any) -> 'Tiles':
        return Tiles(self.images[index], self.masks[index])


@dataclass
class TiledSet:
    """A labelled data set cut into split tiles, ready for fine-tuning runs.

    Attributes:
        name: data set name.
        class_names: one name per class.
        train_tiles: the training tiles' (row, col) indexes, in split order.
        train: every training tile (the label budgets are drawn from these).
        val: the validation tiles (model selection).
        test: the test tiles (scored once per run).
    """

    name: str
    class_names: list[str]
    train_tiles: list[tuple[int, int]]
    train: Tiles
    val: Tiles
    test: Tiles

    @property
    def in_channels(self) -> int:
        """Number of image bands."""
        return int(self.train.images.shape[1])

    def budget(self, label_tiles: int, seed: int) -> list[int]:
        """Indexes of the labelled training tiles: nested across budgets for a seed."""
        order = draw_label_tiles(
            self.train_tiles,
            num_label_patches=len(self.train_tiles),
            generator=torch.Generator().manual_seed(seed),
        )
        return [self.train_tiles.index(t) for t in order[:label_tiles]]

    def save(self, path: str) -> None:
        """Keep the tiles in a ``.pt`` file."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(self.__dict__, path + '.part')
        os.replace(path + '.part', path)

    @classmethod
    def load(cls, path: str) -> 'TiledSet':
        """Tiles saved by :meth:`save`."""
        return cls(**torch.load(path, weights_only=False))


def read_tiles(name: str, datamodule: SegmentationDataModule) -> TiledSet:
    """Read every tile of a labelled data set once, as ``glcgeo finetune`` reads them.

    Each split's tiles go through the data module's own evaluation path (its
    dataset, :class:`~glcgeo.samplers.TileSampler`, collation and
    ``on_after_batch_transfer``: masks encoded, nodata ignored, images
    normalised with nodata 0).

    Args:
        name: data set name.
        datamodule: the data module, set up.

    Returns:
        the tiles of each split.
    """
    split = datamodule.tile_split
    assert split is not None and datamodule.dataset is not None
    parts = {}
    for part in ('train', 'val', 'test'):
        queries = [split.query(tile) for tile in split.tiles[part]]
        loader = DataLoader(
            datamodule.dataset,
            batch_size=64,
            sampler=TileSampler(datamodule.dataset, queries),
            collate_fn=datamodule.collate_fn,
        )
        batches = [datamodule.on_after_batch_transfer(b, 0) for b in loader]
        parts[part] = Tiles(
            torch.cat([b['image'] for b in batches]),
            torch.cat([b['mask'] for b in batches]).squeeze(1),
        )
    return TiledSet(
        name=name,
        class_names=list(datamodule.class_names),
        train_tiles=list(split.tiles['train']),
        **parts,
    )


def score(
    predict: Callable[[slice], Tensor], masks: Tensor, class_names: list[str]
) -> dict[str, float]:
    """OA, Kappa, mIoU, mF1 and per-class F1/IoU from one confusion matrix."""
    metric = SegmentationMetrics(
        len(class_names), class_names=class_names, ignore_index=IGNORE
    )
    with torch.no_grad():
        for start in range(0, len(masks), 32):
            part = slice(start, start + 32)
            metric.update(predict(part).argmax(1), masks[part])
    return {key: float(value) for key, value in metric.compute().items()}


@dataclass(frozen=True)
class Schedule:
    """How long and how fast a fine-tuning run trains.

    Attributes:
        lr: Adam learning rate.
        max_steps: most optimiser steps.
        batch_size: tiles per step (drawn with replacement from the budget).
        eval_every: steps between validation scorings.
        patience: scorings without a better validation Kappa before stopping.
    """

    lr: float
    max_steps: int
    batch_size: int = 8
    eval_every: int = 10
    patience: int = 6


def _train_and_select(
    model: nn.Module,
    step: Callable[[], Tensor],
    validate: Callable[[], float],
    schedule: Schedule,
) -> dict[str, Any]:
    """Optimise until patience runs out; leave the best-validating state in *model*."""
    # Fused: a third of the step time of PyTorch's default Adam on 1 CPU thread.
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=schedule.lr, fused=True
    )
    best_kappa, best_step, best_state, waited = -math.inf, 0, None, 0
    done = 0
    for done in range(1, schedule.max_steps + 1):
        loss = step()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if done % schedule.eval_every:
            continue
        kappa = validate()
        if kappa > best_kappa:
            best_kappa, best_step, waited = kappa, done, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= schedule.patience:
                break
    if best_state is None:
        raise ValueError('max_steps must allow one validation (>= eval_every)')
    model.load_state_dict(best_state)
    return {
        'val_Kappa': best_kappa,
        'selected_step': best_step,
        'last_step': done,
        'stopped_early': done < schedule.max_steps,
    }


def recalibrate(encoder: nn.Module, images: Tensor) -> None:
    """Re-estimate the encoder's batch-norm statistics on *images*, then freeze it."""
    for module in encoder.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches
    encoder.train()
    with torch.no_grad():
        for start in range(0, len(images), 32):
            encoder(images[start : start + 32])
    encoder.eval()
    encoder.requires_grad_(False)


def finetune_run(
    data: TiledSet,
    weights: str | None,
    transfer: str,
    evaluation: str,
    schedule: Schedule,
    label_tiles: int,
    seed: int,
    init_seed: int,
    backbone: str = 'resnet18',
) -> dict[str, Any]:
    """Fine-tune one start on one label budget; select on validation; test once.

    Args:
        data: the tiles.
        weights: start checkpoint (None: random initialisation).
        transfer: 'encoder' or 'encoder+decoder'.
        evaluation: 'probe' or 'finetune' (see the module doc).
        schedule: learning rate and length.
        label_tiles: number of labelled training tiles.
        seed: seed of the label draw, the batch order and the augmentation.
        init_seed: seed of the network's initialisation (random weights, and the
            segmentation head of every start).
        backbone: smp encoder name.

    Returns:
        validation Kappa and test scores of the selected state, the selected and
        last steps, and the run's duration in seconds.
    """
    started = time.perf_counter()
    torch.manual_seed(init_seed)
    model = FinetuneTask(
        backbone=backbone,
        weights=weights,
        transfer=transfer,
        in_channels=data.in_channels,
        num_classes=len(data.class_names),
        class_names=data.class_names,
        ignore_index=IGNORE,
    ).model
    labelled = data.train[data.budget(label_tiles, seed)]
    generator = torch.Generator().manual_seed(seed)

    def draw() -> tuple[Tensor, list[int]]:
        """Tiles of one step and the symmetry applied to each."""
        pick = torch.randint(
            0, len(labelled.images), (schedule.batch_size,), generator=generator
        )
        symmetries = torch.randint(0, 8, (schedule.batch_size,), generator=generator)
        return pick, symmetries.tolist()

    if evaluation == 'probe':
        encoder, decoder, head = model.encoder, model.decoder, model.segmentation_head
        recalibrate(encoder, data.train.images)

        def encode(images: Tensor) -> list[Tensor]:
            """The two encoder outputs smp's DeepLabV3+ decoder reads."""
            with torch.no_grad():
                features = encoder(images)
            return [features[2], features[-1]]

        # Each labelled tile's features under each symmetry, computed once.
        cached = [
            encode(torch.stack([transform(t, s) for t in labelled.images]))
            for s in range(8)
        ]
        masks = [transform(labelled.masks, s) for s in range(8)]
        val_features = encode(data.val.images)

        def decode(low: Tensor, deep: Tensor) -> Tensor:
            # smp's decoder reads features[2] and features[-1] only.
            logits = head(decoder([None, None, low, deep]))
            return logits

        def step() -> Tensor:
            decoder.train()
            head.train()
            pick, symmetries = draw()
            low = torch.stack(
                [cached[s][0][i] for i, s in zip(pick, symmetries, strict=True)]
            )
            deep = torch.stack(
                [cached[s][1][i] for i, s in zip(pick, symmetries, strict=True)]
            )
            target = torch.stack(
                [masks[s][i] for i, s in zip(pick, symmetries, strict=True)]
            )
            return F.cross_entropy(decode(low, deep), target, ignore_index=IGNORE)

        def predict_val(part: slice) -> Tensor:
            return decode(val_features[0][part], val_features[1][part])

        def predict_test(part: slice) -> Tensor:
            return decode(*encode(data.test.images[part]))

        def evaluate_mode() -> None:
            decoder.eval()
            head.eval()
    else:

        def step() -> Tensor:
            model.train()
            pick, symmetries = draw()
            images = torch.stack(
                [
                    transform(labelled.images[i], s)
                    for i, s in zip(pick, symmetries, strict=True)
                ]
            )
            target = torch.stack(
                [
                    transform(labelled.masks[i], s)
                    for i, s in zip(pick, symmetries, strict=True)
                ]
            )
            return F.cross_entropy(model(images), target, ignore_index=IGNORE)

        def predict_val(part: slice) -> Tensor:
            return model(data.val.images[part])

        def predict_test(part: slice) -> Tensor:
            return model(data.test.images[part])

        def evaluate_mode() -> None:
            model.eval()

    def validate() -> float:
        evaluate_mode()
        return score(predict_val, data.val.masks, data.class_names)['Kappa']

    selection = _train_and_select(model, step, validate, schedule)
    evaluate_mode()
    test = score(predict_test, data.test.masks, data.class_names)
    return {
        **selection,
        **{f'test_{key}': value for key, value in test.items()},
        'seconds': round(time.perf_counter() - started, 1),
    }
