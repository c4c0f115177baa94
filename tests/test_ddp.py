"""Two gloo processes on CPU must give the loss and gradients of one process, and
a fine-tuning run on two processes the run of one: one claim, one set of files,
scores of the whole test area."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import S2_TILES
from lightning.pytorch import Trainer
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from glcgeo.datamodules import SegmentationDataModule
from glcgeo.finetune import pretrained_band_stats
from glcgeo.inference import load_segmentation_checkpoint
from glcgeo.losses import GLCNetLoss
from glcgeo.models import GLCNet
from glcgeo.tasks import FinetuneTask

WORLD_SIZE = 2
BATCH = 4  # global batch: 2 images per process
REGIONS = 3
SIZE = 64
#: Fine-tuning data whose test area (34 tiles) two processes share evenly.
FINETUNE_DATA = {
    'images': str(S2_TILES),
    'masks': str(S2_TILES.parent / 'demo_labels' / 's2_pseudo_labels.tif'),
    'patch_size': 64,
    'block_size': 2,
    'eval_batch_size': 4,
}


def global_batch() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(7)
    image1 = torch.randn(BATCH, 4, SIZE, SIZE, generator=generator)
    image2 = torch.randn(BATCH, 4, SIZE, SIZE, generator=generator)
    corner = torch.rand(BATCH, REGIONS, 2, generator=generator) * (SIZE - 16)
    side = 8 + torch.rand(BATCH, REGIONS, 1, generator=generator) * 8
    boxes = torch.cat([corner, corner + side], dim=-1)
    return {
        'image1': image1,
        'image2': image2,
        'boxes1': boxes,
        'boxes2': boxes.flip(1),
    }


def build_model() -> GLCNet:
    torch.manual_seed(0)
    # Eval mode: batch norm uses running statistics and dropout is off, so each
    # process computes exactly what the single process computes for its rows
    # (SyncBatchNorm does not run on CPU).
    return GLCNet(backbone='resnet18', in_channels=4).eval()


def loss_and_gradients(
    model: torch.nn.Module, batch: dict[str, Tensor], decoupled: bool, gather: bool
) -> dict[str, Tensor]:
    model.zero_grad()
    loss = GLCNetLoss(decoupled=decoupled, gather_distributed=gather)(model(**batch))
    loss['loss'].backward()
    named = model.module if isinstance(model, DistributedDataParallel) else model
    result = {f'loss/{k}': v.detach() for k, v in loss.items()}
    result.update({n: p.grad.clone() for n, p in named.named_parameters()})
    return result


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        'gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD_SIZE
    )
    try:
        torch.set_num_threads(1)
        share = BATCH // WORLD_SIZE
        batch = {
            k: v[rank * share : (rank + 1) * share] for k, v in global_batch().items()
        }
        model = DistributedDataParallel(build_model())
        for decoupled in (False, True):
            result = loss_and_gradients(model, batch, decoupled, gather=True)
            torch.save(result, os.path.join(out_dir, f'rank{rank}_{decoupled}.pt'))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path: Path) -> None:
    mp.spawn(
        worker,
        args=(str(tmp_path / 'init'), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    model = build_model()
    batch = global_batch()
    for decoupled in (False, True):
        single = loss_and_gradients(model, batch, decoupled, gather=False)
        ranks = [
            torch.load(tmp_path / f'rank{r}_{decoupled}.pt') for r in range(WORLD_SIZE)
        ]
        # Each process's loss averages its own rows against all negatives, so the
        # global loss is the mean over processes (not each process's value).
        for name in ('loss', 'loss_global', 'loss_local'):
            mean = torch.stack([r[f'loss/{name}'] for r in ranks]).mean()
            torch.testing.assert_close(mean, single[f'loss/{name}'])
        # DDP averages gradients over processes: that average is the gradient of
        # the global batch on one process.
        parameters = [n for n in single if not n.startswith('loss/')]
        assert parameters
        for name in parameters:
            torch.testing.assert_close(ranks[0][name], ranks[1][name])
            torch.testing.assert_close(
                ranks[0][name], single[name], rtol=1e-4, atol=1e-6, msg=name
            )
        assert single['model.encoder.conv1.weight'].abs().sum() > 0


def test_finetune_on_two_processes_is_one_run(tmp_path: Path) -> None:
    """Lightning DDP on CPU: the second process joins the first's claim and checks."""
    out = tmp_path / 'ft'
    data = FINETUNE_DATA
    command = [sys.executable, '-m', 'glcgeo', 'finetune', '--images', data['images'],
               '--masks', data['masks'], '--out', str(out), '--backbone', 'resnet18',
               '--patch-size', '64', '--block-size', '2', '--batch-size', '2',
               '--eval-batch-size', '4', '--length', '4', '--max-steps', '1',
               '--accelerator', 'cpu', '--devices', '2']  # fmt: skip
    outputs = ['checkpoints', 'config.yaml', 'logs', 'metrics.json', 'model.ckpt',
               'split.geojson']  # fmt: skip
    for rerun in ([], ['--overwrite']):
        result = subprocess.run(
            command + rerun, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert 'GLOBAL_RANK: 1, MEMBER: 2/2' in result.stderr + result.stdout
        assert result.stdout.count('model written to') == 1
        assert sorted(os.listdir(out)) == outputs
    # The scores are those of the whole test area, scored in one process.
    with open(out / 'metrics.json') as f:
        metrics = json.load(f)
    assert metrics['tiles']['test'] == 34
    model_path = str(out / 'model.ckpt')
    model, metadata = load_segmentation_checkpoint(model_path)  # as predict does
    task = FinetuneTask(
        backbone='resnet18', in_channels=4, num_classes=metadata.num_classes
    )
    task.model = model
    datamodule = SegmentationDataModule(**data, stats=pretrained_band_stats(model_path))
    trainer = Trainer(
        accelerator='cpu', devices=1, logger=False, enable_progress_bar=False
    )
    (tested,) = trainer.test(task, datamodule=datamodule, verbose=False)
    for key, value in metrics['test'].items():
        assert value == pytest.approx(tested[key]), key
