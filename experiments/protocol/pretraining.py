"""Pretraining runs of the protocol: every start, and how far its loss fell.

* GLCNet and its ablations (no-style, global-only, local-only) train with
  :func:`glcgeo.pretrain.pretrain`, as ``glcgeo pretrain`` does.
* ``zero_step`` is the same call with no step: the network GLCNet starts from
  at that seed, exported untrained (a control that separates "pretrained" from
  "this network, loaded this way").
* SimCLR (v1) and MoCo (v2) are TorchGeo's tasks on the same backbone, views,
  batch and steps, trained as their authors train them: their schedules count
  optimiser steps (TorchGeo counts epochs, so a one-epoch run never leaves
  SimCLR's warm-up) and their learning rates follow the authors' batch scaling.
  They see the first view of the same pairs GLCNet sees (the same window draw,
  nodata rule and normalisation); their own augmentations make the two views.

Every run records its loss at the start and at the end against chance,
``log(2N - 1)`` for NT-Xent over N embeddings (``log(K + 1)`` for MoCo's queue
of K): a start whose loss did not fall clearly below chance is not trained.
"""

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from lightly.utils.lars import LARS
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor
from torch.optim import SGD
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torchgeo.tasks import MoCo, SimCLR

from glcgeo.datamodules import GLCNetDataModule
from glcgeo.export import export_weights
from glcgeo.pretrain import pretrain

#: GLCNet variants, by the name the runner gives their start.
GLCNET_ABLATIONS = {
    'glcnet': 'full',
    'no_style': 'no_style',
    'global_only': 'global_only',
    'local_only': 'local_only',
}

#: A loss this far (nats) below chance counts as trained: about 10 times the
#: spread of a trained loss's last-tenth mean between seeds in the pilot.
TRAINED_MARGIN = 0.3

#: Regions matched per GLCNet pair (the paper's 4).
REGIONS = 4


@dataclass(frozen=True)
class PretrainSettings:
    """What every pretraining run shares.

    Attributes:
        backbone: smp/timm encoder name.
        patch: side of each view, in pixels.
        batch: pairs (views) per step.
        steps: optimiser steps.
        lr: GLCNet's Adam learning rate (the paper's 1e-3).
        spectral_augmentation: GLCNet's per-band jitter and band-to-all view
            (off: chosen on validation in the pilot, see findings.md).
    """

    backbone: str = 'resnet18'
    patch: int = 64
    batch: int = 32
    steps: int = 150
    lr: float = 1e-3
    spectral_augmentation: bool = False


@dataclass
class LossRecord:
    """How far one pretraining run's loss fell.

    Attributes:
        part: which loss ('global', 'local', 'simclr', 'moco').
        chance: its value for embeddings that carry no information.
        first: mean over the first tenth of the steps.
        last: mean over the last tenth of the steps.
    """

    part: str
    chance: float
    first: float
    last: float

    @property
    def trained(self) -> bool:
        """Whether the loss ended clearly below chance."""
        return self.last <= self.chance - TRAINED_MARGIN


def _loss_records(
    metrics_csv: str, parts: dict[str, tuple[str, float]]
) -> list[LossRecord]:
    """Summarise a run's logged losses (``parts``: name -> (column, chance))."""
    log = pd.read_csv(metrics_csv)
    records = []
    for part, (column, chance) in parts.items():
        values = log[column].dropna().to_numpy()
        tenth = max(1, len(values) // 10)
        records.append(
            LossRecord(
                part,
                chance,
                float(values[:tenth].mean()),
                float(values[-tenth:].mean()),
            )
        )
    return records


class StepScheduledSimCLR(SimCLR):
    """TorchGeo's SimCLR with its warm-up and cosine decay counted in steps.

    SimCLR v1 (Chen et al. 2020): LARS, linear warm-up over the first tenth of
    training, then cosine decay. TorchGeo steps the schedule per epoch, which in a
    run of one epoch never leaves the warm-up.
    """

    def configure_optimizers(self) -> Any:
        """LARS with a per-step warm-up and cosine schedule."""
        optimizer = LARS(
            self.parameters(),
            lr=self.hparams['lr'],
            momentum=self.hparams['momentum'],
            weight_decay=self.hparams['weight_decay'],
        )
        total = max(2, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, total // 10)
        scheduler = SequentialLR(
            optimizer,
            schedulers=[
                LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup),
                CosineAnnealingLR(optimizer, T_max=total - warmup),
            ],
            milestones=[warmup],
        )
        return {
            'optimizer': optimizer,
            'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'},
        }


class StepScheduledMoCo(MoCo):
    """TorchGeo's MoCo v2 with its authors' key-encoder start and cosine schedule.

    MoCo v2 (Chen et al. 2020): SGD, momentum 0.9, cosine learning-rate decay,
    and a key encoder that starts as a copy of the query encoder. TorchGeo drops
    the rate at fixed epochs, which a one-epoch run never reaches, and builds the
    key encoder as a second random network, which the momentum update only
    forgets after hundreds of steps.
    """

    def configure_models(self) -> None:
        """TorchGeo's networks, the key encoder copied from the query encoder."""
        super().configure_models()
        self.backbone_momentum.load_state_dict(self.backbone.state_dict())
        self.projection_head_momentum.load_state_dict(self.projection_head.state_dict())

    def configure_optimizers(self) -> Any:
        """SGD with a per-step cosine schedule."""
        optimizer = SGD(
            self.parameters(),
            lr=self.hparams['lr'],
            momentum=self.hparams['momentum'],
            weight_decay=self.hparams['weight_decay'],
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = CosineAnnealingLR(optimizer, T_max=total)
        return {
            'optimizer': optimizer,
            'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'},
        }


class FirstViewDataModule(GLCNetDataModule):
    """GLCNet's pairs reduced to their first view, normalised: single patches.

    SimCLR and MoCo see the same window draw (valid-area weighted, nodata
    capped), the same nodata rule and normalisation as GLCNet; their own
    augmentations then make their two views.
    """

    def on_after_batch_transfer(
        self, batch: dict[str, Tensor], dataloader_idx: int
    ) -> dict[str, Tensor]:
        """Cut and normalise the first view of each pair as ``image``."""
        views = super().on_after_batch_transfer(batch, dataloader_idx)
        return {'image': views['image1']}


def ssl_task(
    kind: str, in_channels: int, settings: PretrainSettings, queue: int
) -> SimCLR | MoCo:
    """TorchGeo's SimCLR v1 or MoCo v2 with its authors' settings at this batch.

    SimCLR: LARS at ``0.075 * sqrt(batch)`` (the square-root scaling its authors
    recommend for small batches, appendix B.1), weight decay 1e-6, temperature
    0.5, 2-layer head. MoCo v2: SGD at ``0.03 * batch / 256``, weight decay 1e-4,
    temperature 0.2, 2-layer head 2048-128, key momentum 0.99 (the short-run
    value of MoCo's ablation), a queue of *queue* keys.
    """
    common = {
        'model': settings.backbone,
        'in_channels': in_channels,
        'size': settings.patch,
    }
    if kind == 'simclr':
        return StepScheduledSimCLR(
            **common,
            version=1,
            layers=2,
            memory_bank_size=0,
            temperature=0.5,
            lr=0.075 * math.sqrt(settings.batch),
            weight_decay=1e-6,
        )
    return StepScheduledMoCo(
        **common,
        version=2,
        layers=2,
        hidden_dim=2048,
        output_dim=128,
        memory_bank_size=queue,
        temperature=0.2,
        moco_momentum=0.99,
        lr=0.03 * settings.batch / 256,
        weight_decay=1e-4,
    )


def pretrain_start(
    method: str,
    images: list[str],
    stats: str,
    settings: PretrainSettings,
    seed: int,
    folder: str,
) -> tuple[str, list[LossRecord], float]:
    """Pretrain one start at one seed and export it for fine-tuning.

    Args:
        method: 'glcnet', 'no_style', 'global_only', 'local_only', 'zero_step',
            'simclr' or 'moco'.
        images: the unlabelled mosaic.
        stats: band statistics JSON (one normalisation for every start).
        settings: backbone, views, batch and steps.
        seed: pretraining seed (initialisation, pair draw, augmentation).
        folder: where the run and its export go.

    Returns:
        (exported weights, loss records, seconds).
    """
    started = time.perf_counter()
    run = os.path.join(folder, f'{method}_seed{seed}')
    data = {
        'paths': images,
        'patch_size': settings.patch,
        'batch_size': settings.batch,
        'length': settings.batch * max(1, settings.steps),
        'regions': REGIONS,
        'region_size': 48 * settings.patch / 224,
        'stats': stats,
        'seed': seed,
        'num_workers': 0,
        'spectral_augmentation': settings.spectral_augmentation,
    }
    if method in ('simclr', 'moco'):
        seed_everything(seed, workers=True, verbose=False)
        datamodule = FirstViewDataModule(**data)
        datamodule.setup('fit')
        queue = min(1024, settings.batch * settings.steps // 4)
        task = ssl_task(method, datamodule.num_bands, settings, queue)
        trainer = Trainer(
            max_steps=settings.steps,
            max_epochs=-1,
            accelerator='cpu',
            logger=CSVLogger(run, name='logs'),
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            limit_val_batches=0,
        )
        trainer.fit(task, datamodule=datamodule)
        checkpoint = os.path.join(run, 'last.ckpt')
        trainer.save_checkpoint(checkpoint)
        chance = (
            math.log(2 * settings.batch - 1)
            if method == 'simclr'
            else math.log(queue + 1)
        )
        records = _loss_records(
            os.path.join(trainer.logger.log_dir, 'metrics.csv'),
            {method: ('train_loss', chance)},
        )
        weights = os.path.join(folder, f'{method}_seed{seed}.ckpt')
        os.replace(checkpoint, weights)
        return weights, records, time.perf_counter() - started
    ablation = GLCNET_ABLATIONS.get(method, 'full')
    steps = 0 if method == 'zero_step' else settings.steps
    last = pretrain(
        data=data,
        model={
            'backbone': settings.backbone,
            'ablation': ablation,
            'lr': settings.lr,
            'gather_distributed': False,
        },
        trainer={'max_steps': steps, 'accelerator': 'cpu'},
        out=run,
        seed=seed,
        quiet=True,
    )
    weights = os.path.join(folder, f'{method}_seed{seed}.ckpt')
    export_weights(last, weights)
    records = []
    if steps:
        parts = {}
        if ablation != 'local_only':
            parts['global'] = ('train_loss_global', math.log(2 * settings.batch - 1))
        if ablation != 'global_only':
            parts['local'] = (
                'train_loss_local',
                math.log(2 * settings.batch * REGIONS - 1),
            )
        records = _loss_records(
            os.path.join(run, 'logs', 'csv', 'version_0', 'metrics.csv'), parts
        )
    return weights, records, time.perf_counter() - started


def records_to_rows(
    dataset: str, method: str, seed: int, records: list[LossRecord], seconds: float
) -> list[dict[str, Any]]:
    """One CSV row per loss of a pretraining run."""
    return [
        {
            'dataset': dataset,
            'method': method,
            'pretrain_seed': seed,
            **asdict(record),
            'below_chance': record.chance - record.last,
            'trained': record.trained,
            'seconds': round(seconds),
        }
        for record in records
    ]
