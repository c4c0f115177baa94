"""Fine-tuning runs of the protocol: tiles held in memory, selected on validation.

Hundreds of short runs share each data set's tiles, so the tiles are read once
and kept as tensors: a set of one scene through glcgeo's
:class:`~glcgeo.datamodules.SegmentationDataModule` (the block split, the mask
encoding and the nodata rule of ``glcgeo finetune``), a set of many scenes scene
by scene on each scene's own grid (:func:`read_scenes`: the same mask encoding,
nodata rule and normalisation; the split is by scene). Label budgets are a
number of labelled training tiles or a percentage of the training area's
labelled pixels (:meth:`TiledSet.budget`), nested across budgets. Each run
builds glcgeo's :class:`~glcgeo.tasks.FinetuneTask` (TorchGeo's DeepLabV3+
with the start weights loaded by glcgeo) and trains with Adam on random
dihedral transforms (the 8 symmetries of a square) of its labelled tiles,
scoring the validation tiles every ``eval_every`` steps. The best state is
kept in memory (no checkpoint files: a run is seconds of training) and
training stops after ``patience`` scorings without improvement; the selected
state is scored once on the test tiles.

Two evaluations:

* ``finetune``: every layer trained.
* ``probe``: the encoder frozen, decoder and head trained. The frozen encoder's
  batch-norm statistics are first re-estimated on the training tiles (images
  only, no labels; a fixed sample of :data:`CALIBRATION_TILES` where there are
  more) for every start alike, so that a random encoder, whose
  statistics were never estimated, is not handicapped; then the encoder is
  fixed, its features computed once per tile and symmetry, and only the
  decoder and head run at each step.
"""

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from glcgeo.datamodules import SegmentationDataModule
from glcgeo.datamodules.segmentation import MaskEncoder
from glcgeo.metrics import SegmentationMetrics
from glcgeo.rasters import valid_pixels
from glcgeo.samplers import TileSampler
from glcgeo.splits import draw_label_tiles
from glcgeo.stats import BandStats
from glcgeo.tasks import FinetuneTask
from glcgeo.transforms import normalize_bands

#: Class id of pixels without a label or without image data.
IGNORE = 255

#: Most training tiles whose images re-estimate a frozen encoder's batch-norm
#: statistics in the probe: a fixed sample, the same for every start.
CALIBRATION_TILES = 512

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
        masks: [N, H, W] class ids (uint8 kept, int64 used), :data:`IGNORE` where
            not scored.
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
        train_tiles: the training tiles' indexes ((row, col) of the block
            split, (scene, row, col) for scenes), in split order.
        train: every training tile (the label budgets are drawn from these).
        val: the validation tiles (model selection).
        test: the test tiles (scored once per run).
        labelled_pixels: labelled pixels of the training area (percentage
            budgets count against it): of the whole training scenes, or of the
            training tiles of a block split when None.
    """

    name: str
    class_names: list[str]
    train_tiles: list[tuple[int, ...]]
    train: Tiles
    val: Tiles
    test: Tiles
    labelled_pixels: int | None = None

    @property
    def in_channels(self) -> int:
        """Number of image bands."""
        return int(self.train.images.shape[1])

    def budget(self, budget: str, seed: int) -> list[int]:
        """Indexes of the labelled training tiles of a budget, nested for a seed.

        Args:
            budget: a number of tiles ('16') or a percentage of the training
                area's labelled pixels ('1%'): the tiles of a seeded order are
                taken until their labelled pixels reach it. Tiles are drawn
                uniformly over the training area, so over the training scenes
                in proportion to their tiles.
            seed: seed of the order (a smaller budget is a prefix of a larger).

        Raises:
            ValueError: for a budget the training tiles cannot hold.
        """
        order = draw_label_tiles(
            self.train_tiles,
            num_label_patches=len(self.train_tiles),
            generator=torch.Generator().manual_seed(seed),
        )
        position = {tile: i for i, tile in enumerate(self.train_tiles)}
        indexes = [position[t] for t in order]
        if not budget.endswith('%'):
            count = int(budget)
        else:
            labelled = (self.train.masks != IGNORE).sum((1, 2))[indexes].cumsum(0)
            total = self.labelled_pixels or int(labelled[-1])
            target = float(budget[:-1]) / 100 * total
            count = int(torch.searchsorted(labelled, torch.tensor(target))) + 1
        if not 1 <= count <= len(indexes):
            raise ValueError(
                f'{self.name}: budget {budget} needs {count} tiles, the training '
                f'area has {len(indexes)}'
            )
        return indexes[:count]

    def calibration(self) -> Tensor:
        """Training images that re-estimate a frozen encoder's batch norms.

        All training tiles up to :data:`CALIBRATION_TILES`, else a fixed seeded
        sample of that many: the same for every start and run.
        """
        if len(self.train.images) <= CALIBRATION_TILES:
            return self.train.images
        pick = torch.randperm(
            len(self.train.images), generator=torch.Generator().manual_seed(0)
        )[:CALIBRATION_TILES]
        return self.train.images[pick.sort().values]

    def save(self, path: str) -> None:
        """Keep the tiles in a ``.pt`` file."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(self.__dict__, path + '.part')
        os.replace(path + '.part', path)

    @classmethod
    def load(cls, path: str) -> 'TiledSet':
        """Tiles saved by :meth:`save`."""
        saved = torch.load(path, weights_only=False)
        # Files saved with fields since dropped (how tiles were scored, which
        # the results page states from the settings) load as well.
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in known})


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


@dataclass
class SceneTiles:
    """The tiles of one scene, read on its own grid.

    Attributes:
        tiles: (scene index, row, col) of each tile kept.
        images: normalised tiles, nodata 0.
        masks: class ids, :data:`IGNORE` where not a class or without image data.
        labelled_pixels: labelled pixels of the whole scene (tiled or not).
    """

    tiles: list[tuple[int, int, int]]
    images: Tensor
    masks: Tensor
    labelled_pixels: int


def read_scene(
    index: int,
    image_path: str,
    mask_path: str,
    encoder: MaskEncoder,
    stats: BandStats,
    tile: int,
    min_labelled: float = 0.5,
) -> SceneTiles:
    """Cut one scene into tiles on its own pixel grid, as fine-tuning reads them.

    Image and mask must share the grid (CRS, transform and size): no pixel is
    resampled. Masks are encoded by glcgeo's :class:`MaskEncoder`, pixels without
    image data (glcgeo's :func:`~glcgeo.rasters.valid_pixels` rule) are ignored,
    and images are normalised by :func:`~glcgeo.transforms.normalize_bands`.

    Args:
        index: the scene's index (first element of its tiles' indexes).
        image_path: the scene's image.
        mask_path: its class mask.
        encoder: raw mask values to class ids.
        stats: band statistics of the pretraining images.
        tile: side of a tile, in pixels (whole tiles from the top-left corner).
        min_labelled: smallest share of labelled pixels for a tile to be kept.

    Raises:
        ValueError: when the mask is not on the image's grid.
    """
    with rasterio.open(image_path) as src, rasterio.open(mask_path) as mask_src:
        grid = (src.crs, src.transform, src.shape)
        if grid != (mask_src.crs, mask_src.transform, mask_src.shape):
            raise ValueError(f'{mask_path}: not on the grid of {image_path}')
        image = torch.from_numpy(src.read())
        nodata = src.nodata
        raw_mask = torch.from_numpy(mask_src.read(1).astype(np.int64))
        mask_nodata = mask_src.nodata
    if mask_nodata is not None and mask_nodata in encoder.class_values:
        raise ValueError(f'{mask_path}: nodata {mask_nodata} is also a class value')
    valid = valid_pixels(image, nodata)
    classes = encoder.encode(raw_mask)
    classes[~valid] = IGNORE
    normalized = normalize_bands(image, stats.mean, stats.std, valid)
    rows, cols = image.shape[1] // tile, image.shape[2] // tile
    # [rows, cols, ...] blocks of whole tiles, then one tile per row of the batch.
    images = (
        normalized[:, : rows * tile, : cols * tile]
        .reshape(len(normalized), rows, tile, cols, tile)
        .permute(1, 3, 0, 2, 4)
        .reshape(rows * cols, len(normalized), tile, tile)
    )
    masks = (
        classes[: rows * tile, : cols * tile]
        .reshape(rows, tile, cols, tile)
        .permute(0, 2, 1, 3)
        .reshape(rows * cols, tile, tile)
    )
    keep = (masks != IGNORE).float().mean((1, 2)) >= min_labelled
    tiles = [(index, r, c) for r in range(rows) for c in range(cols)]
    return SceneTiles(
        tiles=[t for t, k in zip(tiles, keep.tolist(), strict=True) if k],
        images=images[keep].contiguous(),
        masks=masks[keep].to(torch.uint8),
        labelled_pixels=int((classes != IGNORE).sum()),
    )


def read_scenes(
    name: str,
    scenes: dict[str, Sequence[tuple[str, str]]],
    class_values: list[int],
    class_names: list[str],
    stats: BandStats,
    tile: int,
    scored_tiles: dict[str, int] | None = None,
) -> TiledSet:
    """Every tile of the training scenes, a fixed sample of the others.

    Args:
        name: data set name.
        scenes: (image, mask) files of the 'train', 'val' and 'test' scenes.
        class_values: raw mask value of each class.
        class_names: one name per class.
        stats: band statistics (of the training scenes' images).
        tile: side of a tile, in pixels.
        scored_tiles: tiles drawn from each 'val' and 'test' scene (a seeded
            sample, the same for every start); every tile when absent.

    Returns:
        the tiles of each split; ``train_tiles`` are (scene, row, col).
    """
    scored_tiles = scored_tiles or {}
    encoder = MaskEncoder(class_values, IGNORE)
    parts, labelled_pixels, train_tiles = {}, 0, []
    offset = 0
    for part in ('train', 'val', 'test'):
        images, masks = [], []
        for i, (image, mask) in enumerate(scenes[part]):
            scene = read_scene(offset + i, image, mask, encoder, stats, tile)
            keep = torch.arange(len(scene.tiles))
            wanted = scored_tiles.get(part) if part != 'train' else None
            if wanted is not None and wanted < len(keep):
                generator = torch.Generator().manual_seed(offset + i)
                keep = torch.randperm(len(keep), generator=generator)[:wanted]
                keep = keep.sort().values
            images.append(scene.images[keep])
            masks.append(scene.masks[keep])
            if part == 'train':
                labelled_pixels += scene.labelled_pixels
                train_tiles += scene.tiles
        offset += len(scenes[part])
        parts[part] = Tiles(torch.cat(images), torch.cat(masks))
    return TiledSet(
        name=name,
        class_names=class_names,
        train_tiles=train_tiles,
        labelled_pixels=labelled_pixels,
        **parts,
    )


def score(
    predict: Callable[[slice], Tensor], masks: Tensor, class_names: list[str]
) -> dict[str, float]:
    """OA, Kappa, mIoU, mF1, per-class F1/IoU and predicted class shares.

    ``predicted_<name>`` is the share of scored pixels predicted as each class:
    a start that predicts one class everywhere shows as a share of 1.
    """
    metric = SegmentationMetrics(
        len(class_names), class_names=class_names, ignore_index=IGNORE
    )
    with torch.no_grad():
        for start in range(0, len(masks), 32):
            part = slice(start, start + 32)
            metric.update(predict(part).argmax(1), masks[part].long())
    scores = {key: float(value) for key, value in metric.compute().items()}
    predicted = metric.confmat.sum(0).double()
    predicted /= predicted.sum().clamp(min=1)
    for name, share in zip(class_names, predicted.tolist(), strict=True):
        scores[f'predicted_{name}'] = share
    return scores


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
    budget: str,
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
        budget: labelled training tiles, or a percentage of the training
            area's labelled pixels (see :meth:`TiledSet.budget`).
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
    chosen = data.budget(budget, seed)
    labelled = data.train[chosen]
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
        recalibrate(encoder, data.calibration())

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
        masks = [transform(labelled.masks.long(), s) for s in range(8)]
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
            ).long()
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
        'label_tiles': len(chosen),
        **{f'test_{key}': value for key, value in test.items()},
        'seconds': round(time.perf_counter() - started, 1),
    }
