"""Benchmark of ``glcgeo predict``: throughput against the model's and the I/O bound.

Generates two 4-band uint16 scenes, a small one and one ``--scale`` times wider and
taller (``--scale 4``: 16 times the pixels), and a TorchGeo SemanticSegmentation
checkpoint (Unet, ResNet-18, random weights, glcgeo extras). Each scene is predicted
in its own subprocess, so that the two do not share a peak resident memory; the
subprocess then times the pure model forward over the same number of batches of the
same tile shape (the bound that streaming, blending and writing approach). Batches
are the device's default size (one 512 px tile on a CPU, four on a GPU), and glibc
keeps freed memory (:func:`~glcgeo.allocator.keep_freed_memory`), as in ``glcgeo
predict``; ``GLCGEO_KEEP_FREED_MEMORY=0`` measures glibc's defaults.

Then, on a third scene (``--io-size 2048``: 2048 x 2048, 4 bands), the path around
the network: a 1x1-convolution model (which predict runs in channels-last memory
format on a CPU, where it costs next to nothing) is predicted and
compared with the I/O bound, reading every block of the scene and writing a class
COG of the same size, content and creation options (glcgeo's own writer). Both are
timed ``--repeats`` times, alternately, and the best of each is kept. On a CPU the
softmax, blending and class choice of prediction share the cores with reading and
writing; with ``--device cuda`` they run on the GPU. Last, the tensor passes alone
that predicting this scene makes (:func:`tensor_passes`): added to the I/O bound,
they give ``ratio_passes_only``, the ratio predict would reach if it did nothing
else and did not overlap them with reading and writing.

With ``--agreement``, prints instead how often tiled prediction agrees with
whole-image prediction on the shipped scenes, for random-weight FCN, Unet and
DeepLabV3+.

Usage::

    python experiments/bench_predict.py [--small 1024] [--scale 4] [--device cuda]
    python experiments/bench_predict.py --agreement

The last line is ``RESULT mpix_per_s=<x> ratio_vs_forward=<r>
peak_rss_small_mb=<a> peak_rss_large_mb=<b> pointwise_mpix_per_s=<p>
io_mpix_per_s=<i> ratio_vs_io_bound=<q> ratio_passes_only=<o>`` (targets: r >=
0.85, b <= 1.2 * a, q >= 0.6; o is no target, it shows how far q can go).
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
from typing import Any

import lightning
import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window
from torchgeo.tasks import SemanticSegmentation

from glcgeo.allocator import keep_freed_memory
from glcgeo.inference import (
    CheckpointMetadata,
    PredictionSummary,
    load_segmentation_checkpoint,
    predict_raster,
    prediction_grid,
)
from glcgeo.inference.blending import tile_weights
from glcgeo.inference.predict import (
    GDAL_CACHE_MB,
    default_batch_size,
    model_memory_format,
    resolve_device,
)
from glcgeo.inference.reading import SCENE_MARGIN
from glcgeo.inference.writer import class_writer

TILE_SIZE, OVERLAP = 512, 128
NUM_CLASSES = 8
MEAN, STD = [1000.0] * 4, [400.0] * 4
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


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that timings include it."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def predict(
    model: torch.nn.Module,
    metadata: CheckpointMetadata,
    scene: Path,
    out: Path,
    device: str,
) -> PredictionSummary:
    """``predict_raster`` with the benchmark's tiles, replacing *out*.

    The batch size is the device's default (:func:`default_batch_size`).
    """
    return predict_raster(
        model,
        metadata,
        scene,
        out,
        tile_size=TILE_SIZE,
        overlap=OVERLAP,
        device=device,
        overwrite=True,
        progress=False,
    )


def worker(scene: Path, checkpoint: Path, out: Path, device: str) -> None:
    """Predict one scene, then time the bare forward; print a JSON line."""
    keep_freed_memory()
    model, metadata = load_segmentation_checkpoint(checkpoint)
    timed = TimedModel(model)
    summary = predict(timed, metadata, scene, out, device)
    # ru_maxrss is in KiB on Linux: the peak of predicting, before the bound.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    grid = prediction_grid(summary.height, summary.width, TILE_SIZE, OVERLAP)
    shape = (metadata.in_channels, grid.tile_height, grid.tile_width)
    generator = torch.Generator().manual_seed(0)
    torch_device = next(model.parameters()).device
    batch_size = default_batch_size(torch_device, grid.tile_height * grid.tile_width)
    batches = [
        torch.randn((min(batch_size, len(grid) - i), *shape), generator=generator)
        for i in range(0, len(grid), batch_size)
    ]
    # As predict feeds them: in the model's memory format on this device.
    memory_format = model_memory_format(torch_device) or torch.contiguous_format
    batches = [batch.to(torch_device, memory_format=memory_format) for batch in batches]
    synchronize(torch_device)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(batch).softmax(dim=1)
    synchronize(torch_device)
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


def io_bound(scene: Path, classes: np.ndarray, out: Path, like: Path) -> float:
    """Seconds to read every block of *scene* and write *classes* as *like* is written.

    The class map goes through glcgeo's own writer (same creation options, striped
    file then COG), with the georeferencing and metadata of the map *like*.
    """
    with rasterio.open(like) as dst:
        geo = {k: dst.profile[k] for k in ('width', 'height', 'crs', 'transform')}
        names = json.loads(dst.tags(1)['class_names'])
    metadata = CheckpointMetadata(
        model='io',
        backbone='none',
        in_channels=4,
        num_classes=len(names),
        class_names=tuple(names),
    )
    start = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(scene) as src:
        for _, window in src.block_windows(1):
            src.read(window=window)
    with class_writer(out, metadata, geo, overwrite=True) as writer:
        for row in range(0, classes.shape[0], TILE_SIZE):
            rows = classes[row : row + TILE_SIZE]
            writer.write(rows[None], Window(0, row, classes.shape[1], len(rows)))
        writer.finish()
        writer.commit()
    return time.perf_counter() - start


def tensor_passes(
    model: torch.nn.Module, metadata: CheckpointMetadata, size: int, device: str
) -> float:
    """Seconds of the tensor passes that predicting a *size* px square scene makes.

    Over each tile of predict's grid, once, in tensors allocated beforehand:
    normalising, the model (in :func:`model_memory_format`), the copy of its output
    to classes first, softmax, Hann-weighted scores added into sums over the grid,
    then the class choice over the scene. No reading, writing, nodata masks, row
    band or batching: the least predict can add to the I/O bound with PyTorch's
    operations run one after another.
    """
    torch_device = resolve_device(device)
    model = model.eval().to(torch_device)
    memory_format = model_memory_format(torch_device) or torch.contiguous_format
    model = model.to(memory_format=memory_format)
    grid = prediction_grid(size, size, TILE_SIZE, OVERLAP)
    height, width = grid.tile_height, grid.tile_width
    channels, classes = metadata.in_channels, metadata.num_classes

    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(shape, device=torch_device)

    raw = 2000 * torch.rand((channels, height, width), device=torch_device)
    # Normalising as one multiply-add: (raw - mean) / std = raw / std - mean / std.
    std = torch.tensor(metadata.band_std, device=torch_device)[:, None, None]
    mean = torch.tensor(metadata.band_mean, device=torch_device)[:, None, None]
    scale, shift = 1 / std, -mean / std
    image = zeros(1, channels, height, width).contiguous(memory_format=memory_format)
    logits = zeros(1, classes, height, width)
    probabilities = zeros(1, classes, height, width)
    weighted = zeros(classes, height, width)
    # The class choice needs no sums of weights (they are positive).
    sums = zeros(classes, grid.height, grid.width)
    weights = {
        edges: torch.from_numpy(tile_weights(height, width, edges)).to(torch_device)
        for edges in {tile.edges for tile in grid}
    }
    synchronize(torch_device)
    start = time.perf_counter()
    with torch.inference_mode():
        for tile in grid:
            torch.addcmul(shift, raw, scale, out=image[0])
            logits.copy_(model(image))
            torch.softmax(logits, dim=1, out=probabilities)
            tile_weight = weights[tile.edges]
            torch.mul(probabilities[0], tile_weight, out=weighted)
            rows, cols = tile.window.toslices()
            sums[:, rows, cols] += weighted
        scene = slice(SCENE_MARGIN, SCENE_MARGIN + size)
        sums[:, scene, scene].max(0).indices.to(torch.uint8).cpu()
    synchronize(torch_device)
    return time.perf_counter() - start


def io_worker(scene: Path, folder: Path, device: str, repeats: int) -> None:
    """Predict with a 1x1 convolution and time the I/O bound, alternately.

    Then time :func:`tensor_passes` as often.
    """
    keep_freed_memory()
    torch.manual_seed(0)
    model = torch.nn.Conv2d(4, NUM_CLASSES, kernel_size=1)
    metadata = CheckpointMetadata(
        model='pointwise',
        backbone='none',
        in_channels=4,
        num_classes=NUM_CLASSES,
        band_mean=tuple(MEAN),
        band_std=tuple(STD),
    )
    predict_s, io_s = [], []
    out = folder / 'pointwise-map.tif'
    for _ in range(repeats):
        summary = predict(model, metadata, scene, out, device)
        predict_s.append(summary.seconds)
        with rasterio.open(out) as dst:
            classes = dst.read(1)
        io_s.append(io_bound(scene, classes, folder / 'io-map.tif', like=out))
    pixels = summary.width * summary.height
    passes_s = [
        tensor_passes(model, metadata, summary.width, device) for _ in range(repeats)
    ]
    print(
        json.dumps(
            {
                'pixels': pixels,
                'predict_s': predict_s,
                'io_s': io_s,
                'passes_s': passes_s,
            }
        )
    )


def run_worker(*arguments: object) -> dict[str, Any]:
    """Run this script with *arguments* in a subprocess; its last line, as JSON."""
    command = [sys.executable, __file__, *map(str, arguments)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f'worker failed:\n{result.stderr[-3000:]}')
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
    parser.add_argument('--io-size', type=int, default=2048, help='I/O scene side')
    parser.add_argument('--repeats', type=int, default=2, help='I/O bound timings')
    parser.add_argument('--device', default='auto', help='cpu, cuda, cuda:1 ...')
    parser.add_argument('--agreement', action='store_true')
    parser.add_argument('--worker', nargs=3, help=argparse.SUPPRESS)
    parser.add_argument('--io-worker', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*map(Path, args.worker), device=args.device)
        return
    if args.io_worker:
        scene, folder = map(Path, args.io_worker)
        io_worker(scene, folder, args.device, args.repeats)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.agreement:
            agreement(folder)
            return
        torch.manual_seed(0)
        task = SemanticSegmentation(
            model='unet', backbone='resnet18', in_channels=4, num_classes=NUM_CLASSES
        )
        task.hparams.update({'band_mean': MEAN, 'band_std': STD, 'bands': None})
        checkpoint = save_checkpoint(task, folder / 'unet.ckpt')
        results = {}
        for name, size in [('small', args.small), ('large', args.small * args.scale)]:
            scene = folder / f'{name}.tif'
            make_scene(scene, size, seed=size)
            result = run_worker(
                '--worker', scene, checkpoint, folder / f'{name}-map.tif',
                '--device', args.device,
            )  # fmt: skip
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
        scene = folder / 'io.tif'
        make_scene(scene, args.io_size, seed=args.io_size + 1)
        io = run_worker(
            '--io-worker', scene, folder, '--device', args.device,
            '--repeats', args.repeats,
        )  # fmt: skip
    pointwise_mpix_per_s = io['pixels'] / 1e6 / min(io['predict_s'])
    io_mpix_per_s = io['pixels'] / 1e6 / min(io['io_s'])
    ratio_passes_only = min(io['io_s']) / (min(io['io_s']) + min(io['passes_s']))
    print(
        f'pointwise: {args.io_size} x {args.io_size} px, predict '
        + ', '.join(f'{s:.2f}' for s in io['predict_s'])
        + ' s, I/O bound '
        + ', '.join(f'{s:.2f}' for s in io['io_s'])
        + f' s: {pointwise_mpix_per_s:.2f} vs {io_mpix_per_s:.2f} Mpx/s; its tensor '
        'passes alone ' + ', '.join(f'{s:.2f}' for s in io['passes_s']) + ' s'
    )
    large = results['large']
    mpix_per_s = large['pixels'] / 1e6 / large['predict_s']
    # The bound is the faster of the two forward timings (alone, after predicting;
    # summed inside predicting), so that other processes' load cannot raise it.
    bound_s = min(large['forward_s'], large['forward_in_predict_s'])
    ratio = bound_s / large['predict_s']
    print(
        f'RESULT mpix_per_s={mpix_per_s:.4f} ratio_vs_forward={ratio:.3f} '
        f'peak_rss_small_mb={results["small"]["peak_rss_mb"]:.0f} '
        f'peak_rss_large_mb={large["peak_rss_mb"]:.0f} '
        f'pointwise_mpix_per_s={pointwise_mpix_per_s:.3f} '
        f'io_mpix_per_s={io_mpix_per_s:.3f} '
        f'ratio_vs_io_bound={pointwise_mpix_per_s / io_mpix_per_s:.3f} '
        f'ratio_passes_only={ratio_passes_only:.3f}'
    )


if __name__ == '__main__':
    main()
