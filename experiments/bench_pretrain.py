"""Benchmark: GLCNet training steps per second against its bare network.

GLCNet trains through Lightning on the shipped Sentinel-2 mosaic, as ``glcgeo
pretrain`` does: pairs read by loader workers, views cut and augmented on the
device, the global and local heads, RoI pooling, both NT-Xent losses and the
optimiser step. Its rate is compared, in the same run, with the bare
DeepLabV3+ it is built on (forward and backward of the same two-view batch:
no data, heads, loss or optimiser): ``ratio_vs_network`` says how much of a
training step is the network the method prescribes (target >= 0.9).

For information it also trains TorchGeo's SimCLR on the same mosaic, backbone,
batch and input size (``ratio_vs_simclr``: bounded by DeepLabV3+ costing about
twice a plain ResNet). Lightning's SimpleProfiler separates the time spent
waiting for the next batch.

    python experiments/bench_pretrain.py [--backbone resnet18] [--size 128] [--batch 16]

Last line: ``RESULT glcnet_steps_per_s=<x> ratio_vs_network=<r>
ratio_vs_simclr=<s> data_wait_fraction=<f>``.
"""

import argparse
import os
import tempfile
import time
import warnings
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import SimpleProfiler
from torchgeo.datamodules import GeoDataModule
from torchgeo.samplers import RandomPatchSampler
from torchgeo.tasks import SimCLR

from glcgeo.datamodules import GLCNetDataModule
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.stats import compute_band_stats
from glcgeo.tasks import GLCNetTask

DATA = os.path.join(
    os.path.dirname(__file__), '..', 'tests', 'data', 'sentinel2_10m_tiles'
)


class StepTimer(Callback):
    """Wall time of the steps after a warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.end = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step > self.warmup:
            self.end = time.perf_counter()
            self.steps = trainer.global_step - self.warmup


class SimCLRDataModule(GeoDataModule):
    """Single patches of the same mosaic, normalised like glcgeo's views."""

    def __init__(
        self, size: int, batch_size: int, length: int, num_workers: int
    ) -> None:
        super().__init__(
            GeoTiffMosaic, batch_size=batch_size, patch_size=size, length=length,
            num_workers=num_workers, paths=DATA,
        )  # fmt: skip

    def setup(self, stage: str) -> None:
        self.train_dataset = GeoTiffMosaic(DATA)
        stats = compute_band_stats(self.train_dataset)
        self.train_sampler = RandomPatchSampler(
            self.train_dataset, size=self.patch_size, length=self.length
        )
        import kornia.augmentation as K

        self.aug = K.AugmentationSequential(
            K.Normalize(mean=torch.tensor(stats.mean), std=torch.tensor(stats.std)),
            data_keys=None,
            keepdim=True,
        )


def run(
    task: LightningModule, datamodule: Any, steps: int, warmup: int
) -> tuple[float, float]:
    """Train for warm-up + steps; return (steps per second, data-wait fraction)."""
    timer = StepTimer(warmup)
    # Written to a file rather than printed: only the figures below matter here.
    profiler = SimpleProfiler(dirpath=tempfile.mkdtemp(), filename='profile')
    trainer = Trainer(
        accelerator='auto', devices=1, max_steps=warmup + steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer], profiler=profiler,
        use_distributed_sampler=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(task, datamodule=datamodule)
    elapsed = timer.end - timer.start
    waits = profiler.recorded_durations.get(
        '[_TrainingEpochLoop].train_dataloader_next', []
    )
    # The first waits include worker start-up: count those of the timed steps.
    wait = sum(waits[warmup + 1 : warmup + 1 + steps])
    return timer.steps / elapsed, wait / elapsed


def network_seconds(forward: Any, batch: int, size: int, repeats: int = 3) -> float:
    """Seconds of one forward and backward pass of a network, after a warm-up.

    Args:
        forward: maps two [batch, 4, size, size] views to a list of outputs.
        batch: pairs per batch.
        size: view side in pixels.
        repeats: timed passes.

    Returns:
        the mean time of a pass.
    """
    views = torch.randn(2, batch, 4, size, size)
    elapsed = 0.0
    for i in range(repeats + 1):
        start = time.perf_counter()
        sum(output.square().mean() for output in forward(*views)).backward()
        if i > 0:
            elapsed += time.perf_counter() - start
    return elapsed / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backbone', default='resnet18')
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--num-workers', type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings('ignore')
    torch.manual_seed(0)
    length = args.batch * (args.steps + args.warmup + 2)
    print(
        f'device={"cuda" if torch.cuda.is_available() else "cpu"} '
        f'threads={torch.get_num_threads()} backbone={args.backbone} '
        f'size={args.size} batch={args.batch} workers={args.num_workers}'
    )

    region_size = 48 * args.size / 224
    glcnet = GLCNetTask(
        backbone=args.backbone, in_channels=4, region_size=region_size,
        gather_distributed=False,
    )  # fmt: skip
    pairs = GLCNetDataModule(
        DATA, patch_size=args.size, batch_size=args.batch, length=length,
        region_size=region_size, num_workers=args.num_workers,
    )  # fmt: skip
    glcnet_rate, glcnet_wait = run(glcnet, pairs, args.steps, args.warmup)
    print(
        f'glcnet: {glcnet_rate:.3f} steps/s, data wait {glcnet_wait:.1%} of step time'
    )

    simclr = SimCLR(
        model=args.backbone, in_channels=4, version=1, layers=2, size=args.size,
        gather_distributed=False,
    )  # fmt: skip
    patches = SimCLRDataModule(args.size, args.batch, length, args.num_workers)
    simclr_rate, simclr_wait = run(simclr, patches, args.steps, args.warmup)
    print(
        f'simclr: {simclr_rate:.3f} steps/s, data wait {simclr_wait:.1%} of step time'
    )

    # The networks alone, on the same views.
    network = network_seconds(
        lambda x1, x2: [glcnet.model.model(torch.cat([x1, x2]))],
        args.batch, args.size,
    )  # fmt: skip
    simclr_net = network_seconds(
        lambda x1, x2: [simclr(x1)[0], simclr(x2)[0]], args.batch, args.size
    )
    print(
        f'networks alone (forward + backward): DeepLabV3+ {network:.3f} s, '
        f'SimCLR backbone + head {simclr_net:.3f} s'
    )
    print(
        f'RESULT glcnet_steps_per_s={glcnet_rate:.3f} '
        f'ratio_vs_network={glcnet_rate * network:.3f} '
        f'ratio_vs_simclr={glcnet_rate / simclr_rate:.3f} '
        f'data_wait_fraction={glcnet_wait:.3f}'
    )


if __name__ == '__main__':
    main()
