"""Benchmark of ``glcgeo predict``: throughput against the model's bound, and memory.

Generates two 4-band uint16 scenes, a small one and one ``--scale`` times wider and
taller (``--scale 4``: 16 times the pixels), and a TorchGeo SemanticSegmentation
checkpoint (Unet, ResNet-18, random weights, glcgeo extras). Each scene is predicted
in its own subprocess, so that the two do not share a peak resident memory; the
subprocess then times the pure model forward over the same number of batches of the
same tile shape (the bound that streaming, blending and writing approach).

With ``--agreement``, prints instead how often tiled prediction agrees with
whole-image prediction on the shipped scenes, for random-weight FCN, Unet and
DeepLabV3+.

Usage::

    python experiments/bench_predict.py [--small 1024] [--scale 4]
    python experiments/bench_predict.py --agreement

The last line is ``RESULT mpix_per_s=<x> ratio_vs_forward=<r>
peak_rss_small_mb=<a> peak_rss_large_mb=<b>`` (targets: r >= 0.85, b <= 1.2 * a).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning
import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window
from torchgeo.tasks import SemanticSegmentation

from glcgeo.inference import (
    load_segmentation_checkpoint,
    predict_raster,
    prediction_grid,
)

TILE_SIZE, OVERLAP, BATCH_SIZE = 512, 128, 4
NUM_CLASSES = 8
DATA = Path(__file__).resolve().parents[1] / 'tests' / 'data'
SENTINEL2 = 'sentinel2_10m_tiles/S2_L1C_18SUH_tileA_B02-B03-B04-B08.tif'
SHIPPED = {
    'sentinel2': DATA / SENTINEL2,
    'landsat-rgb1': DATA / 'landsat7_rgb_quadrants' / 'rgb1.tif',
}


def save_checkpoint(task: SemanticSegmentation, path: Path) -> Path:
    trainer = lightning.Trainer(
        accelerator='cpu',
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


def make_scene(path: Path, size: int, seed: int) -> None:
    """Write a smooth random 4-band uint16 scene (10 m, EPSG:32618), block by block."""
    rng = np.random.default_rng(seed)
    profile = {
        'driver': 'GTiff',
        'width': size,
        'height': size,
        'count': 4,
        'dtype': 'uint16',
        'crs': 'EPSG:32618',
        'transform': from_origin(400000.0, 4200000.0, 10.0, 10.0),
        'tiled': True,
        'blockxsize': 256,
        'blockysize': 256,
        'compress': 'deflate',
    }
    columns = np.arange(size)
    with rasterio.open(path, 'w', **profile) as dst:
        for row in range(0, size, 256):
            rows = np.arange(row, min(row + 256, size))[:, None]
            base = 1000 + 500 * np.sin(rows / 37.0) * np.cos(columns / 53.0)
            noise = rng.normal(0, 100, (4, len(rows), size))
            block = np.clip(base + noise, 0, 65535).astype(np.uint16)
            dst.write(block, window=Window(0, row, size, len(rows)))


class TimedModel(torch.nn.Module):
    """A model that adds up the time spent in its forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        y = self.model(x)
        self.seconds += time.perf_counter() - start
        return y


def worker(scene: Path, checkpoint: Path, out: Path) -> None:
    """Predict one scene, then time the bare forward; print a JSON line."""
    model, metadata = load_segmentation_checkpoint(checkpoint)
    timed = TimedModel(model)
    summary = predict_raster(
        timed,
        metadata,
        scene,
        out,
        tile_size=TILE_SIZE,
        overlap=OVERLAP,
        batch_size=BATCH_SIZE,
        progress=False,
    )
    # ru_maxrss is in KiB on Linux: the peak of predicting, before the bound.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    grid = prediction_grid(summary.height, summary.width, TILE_SIZE, OVERLAP)
    shape = (metadata.in_channels, grid.tile_height, grid.tile_width)
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randn((min(BATCH_SIZE, len(grid) - i), *shape), generator=generator)
        for i in range(0, len(grid), BATCH_SIZE)
    ]
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(batch).softmax(dim=1)
    forward_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                'pixels': summary.width * summary.height,
                'tiles': summary.tiles,
                'predict_s': summary.seconds,
                'forward_s': forward_s,
                'forward_in_predict_s': timed.seconds,
                'peak_rss_mb': peak_mb,
            }
        )
    )


def run_worker(scene: Path, checkpoint: Path, out: Path) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        '--worker',
        str(scene),
        str(checkpoint),
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def agreement(folder: Path) -> None:
    """Print tiled vs whole-image agreement on the shipped scenes."""
    for model_name in ('fcn', 'unet', 'deeplabv3+'):
        for scene_name, scene in SHIPPED.items():
            with rasterio.open(scene) as src:
                data = src.read().reshape(src.count, -1).astype(np.float64)
                count = src.count
            data = data[:, (data != 0).any(axis=0)]
            torch.manual_seed(0)
            task = SemanticSegmentation(
                model=model_name,
                backbone='resnet18',
                in_channels=count,
                num_classes=6,
                num_filters=16,
            )
            if model_name == 'fcn':
                # He init: TorchGeo's default makes a random FCN predict one class.
                for module in task.modules():
                    if isinstance(module, torch.nn.Conv2d):
                        torch.nn.init.kaiming_normal_(module.weight)
                        torch.nn.init.zeros_(module.bias)
            path = save_checkpoint(task, folder / f'{model_name}{count}.ckpt')
            model, metadata = load_segmentation_checkpoint(path)
            metadata = metadata.replace(
                band_mean=data.mean(axis=1).tolist(), band_std=data.std(axis=1).tolist()
            )
            maps = {}
            for tile_size, overlap in [(10_000, 0), (512, 128), (333, 97), (160, 40)]:
                out = folder / f'{model_name}-{scene_name}-{tile_size}.tif'
                predict_raster(
                    model,
                    metadata,
                    scene,
                    out,
                    tile_size=tile_size,
                    overlap=overlap,
                    overwrite=True,
                    progress=False,
                )
                with rasterio.open(out) as dst:
                    maps[tile_size, overlap] = dst.read(1)
            whole = maps.pop((10_000, 0))
            figures = ', '.join(
                f'tile {t} overlap {o}: {100 * (m == whole).mean():.2f}%'
                for (t, o), m in maps.items()
            )
            print(f'agreement {model_name} {scene_name}: {figures}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--small', type=int, default=1024, help='small scene side')
    parser.add_argument('--scale', type=int, default=4, help='large side / small side')
    parser.add_argument('--agreement', action='store_true')
    parser.add_argument('--worker', nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*map(Path, args.worker))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.agreement:
            agreement(folder)
            return
        mean, std = [1000.0] * 4, [400.0] * 4
        torch.manual_seed(0)
        task = SemanticSegmentation(
            model='unet', backbone='resnet18', in_channels=4, num_classes=NUM_CLASSES
        )
        task.hparams.update({'band_mean': mean, 'band_std': std, 'bands': None})
        checkpoint = save_checkpoint(task, folder / 'unet.ckpt')
        results = {}
        for name, size in [('small', args.small), ('large', args.small * args.scale)]:
            scene = folder / f'{name}.tif'
            make_scene(scene, size, seed=size)
            result = run_worker(scene, checkpoint, folder / f'{name}-map.tif')
            results[name] = result
            speed = result['pixels'] / 1e6 / result['predict_s']
            print(
                f'{name}: {size} x {size} px, {result["tiles"]} tiles, '
                f'predict {result["predict_s"]:.1f} s ({speed:.3f} Mpx/s), '
                f'forward only {result["forward_s"]:.1f} s '
                f'(inside predict: {result["forward_in_predict_s"]:.1f} s), '
                f'peak RSS {result["peak_rss_mb"]:.0f} MB'
            )
            os.remove(scene)
    large = results['large']
    mpix_per_s = large['pixels'] / 1e6 / large['predict_s']
    # The bound is the faster of the two forward timings (alone, after predicting;
    # summed inside predicting), so that other processes' load cannot raise it.
    bound_s = min(large['forward_s'], large['forward_in_predict_s'])
    ratio = bound_s / large['predict_s']
    print(
        f'RESULT mpix_per_s={mpix_per_s:.4f} ratio_vs_forward={ratio:.3f} '
        f'peak_rss_small_mb={results["small"]["peak_rss_mb"]:.0f} '
        f'peak_rss_large_mb={large["peak_rss_mb"]:.0f}'
    )


if __name__ == '__main__':
    main()
