"""``make demo``: pretrain, fine-tune and map land cover from the repository's own data.

Every step runs the ``glcgeo`` command line (printed before it runs), on data shipped
in the repository only:

1. ``glcgeo pretrain``: GLCNet on the two CC0 Sentinel-2 tiles (no labels used);
2. ``glcgeo export``: the pretrained encoder and decoder as TorchGeo weights;
3. ``glcgeo finetune``: DeepLabV3+ from those weights on 10% of the training tiles of
   ``tests/data/demo_labels/s2_pseudo_labels.tif``, scored on held-out tiles. These
   labels are INDEX-DERIVED PSEUDO-LABELS (NDWI/NDVI thresholds: water, vegetation,
   other land), not human annotation: the scores say how well the network learns the
   index rule, not how accurate a land-cover map is;
4. ``glcgeo predict``: a land-cover map of one Sentinel-2 tile, ``landcover.tif`` (with
   ``landcover.tif.aux.xml`` and ``landcover.qml``: class names for GDAL and QGIS), and
   its class polygons, ``landcover.gpkg``;
5. ``preview.png``: the tile in natural colours beside the map, with a legend.

Settings are scaled down (ResNet-18, 64-pixel tiles, a few dozen steps) to finish in
a few minutes on 2 CPU cores. Run::

    .venv/bin/python experiments/demo.py --out demo_out
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import rasterio
from matplotlib.patches import Patch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TILES = os.path.join(ROOT, 'tests', 'data', 'sentinel2_10m_tiles')
SCENE = os.path.join(TILES, 'S2_L1C_18SUH_tileA_B02-B03-B04-B08.tif')
LABELS = os.path.join(ROOT, 'tests', 'data', 'demo_labels', 's2_pseudo_labels.tif')
CONFIG = os.path.join(ROOT, 'experiments', 'configs', 'finetune_sentinel2_demo.yaml')
#: What the demo writes under --out (and removes first, to start afresh).
OUTPUTS = (
    'pretrain',
    'finetune',
    'landcover.tif',
    'landcover.tif.aux.xml',
    'landcover.qml',
    'landcover.gpkg',
    'preview.png',
)


def step(number: int, title: str) -> None:
    """Announce a step."""
    print(f'\n=== Step {number}/5: {title}', flush=True)


def glcgeo(*args: str) -> None:
    """Run one ``glcgeo`` command, printed first; stop the demo if it fails."""
    command = [sys.executable, '-m', 'glcgeo', *args]
    shown = ' '.join(
        os.path.relpath(a, ROOT) if a.startswith(ROOT + os.sep) else a for a in args
    )
    print(f'$ glcgeo {shown}', flush=True)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, check=False)
    if completed.returncode != 0:
        sys.exit(f'demo: "glcgeo {args[0]}" failed (exit {completed.returncode})')
    print(f'  ({time.perf_counter() - start:.0f} s)', flush=True)


def natural_colours(path: str) -> np.ndarray:
    """B04, B03, B02 of a Sentinel-2 tile, stretched to 2-98 percentiles, [H, W, 3]."""
    with rasterio.open(path) as src:
        rgb = src.read([3, 2, 1]).astype(np.float64)
    low, high = np.percentile(rgb, (2, 98), axis=(1, 2), keepdims=True)
    return np.clip((rgb - low) / (high - low), 0, 1).transpose(1, 2, 0)


def write_preview(scene: str, landcover: str, out: str) -> None:
    """Save the scene beside its land-cover map, with the map's legend."""
    with rasterio.open(landcover) as src:
        classes = src.read(1)
        colormap = src.colormap(1)
        tags = src.tags(1)
        nodata = src.nodata
    present = [int(c) for c in np.unique(classes) if c != nodata]
    lookup = np.zeros((256, 3))
    for value, colour in colormap.items():
        lookup[value] = np.array(colour[:3]) / 255
    # glcgeo predict names the classes in a JSON band tag.
    names = json.loads(tags.get('class_names', '[]'))
    figure, axes = plt.subplots(1, 2, figsize=(12, 6.2), constrained_layout=True)
    axes[0].imshow(natural_colours(scene))
    axes[0].set_title('Sentinel-2 L1C, natural colours (B04, B03, B02)')
    axes[1].imshow(lookup[classes], interpolation='nearest')
    axes[1].set_title('glcgeo land cover (trained on NDWI/NDVI pseudo-labels)')
    for axis in axes:
        axis.set_axis_off()
    axes[1].legend(
        handles=[
            Patch(color=lookup[c], label=names[c] if c < len(names) else str(c))
            for c in present
        ],
        loc='lower left',
        framealpha=0.9,
    )
    figure.savefig(out, dpi=80)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='demo_out', help='output folder')
    parser.add_argument('--pretrain-steps', type=int, default=40)
    parser.add_argument('--finetune-epochs', type=int, default=12)
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    started = time.perf_counter()
    for path in (TILES, LABELS, CONFIG):
        if not os.path.exists(path):
            sys.exit(f'demo: {path} is missing: run the demo from a full checkout')
    print(
        'glcgeo demo: GLCNet pretraining -> fine-tuning -> land-cover map, on the\n'
        "repository's CC0 Sentinel-2 tiles. The labels are pseudo-labels derived\n"
        'from NDWI/NDVI thresholds (tests/data/demo_labels), not human annotation.\n'
        f'Outputs go to {out}.'
    )
    os.makedirs(out, exist_ok=True)
    for name in OUTPUTS:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)

    step(1, 'pretrain GLCNet on the unlabeled Sentinel-2 mosaic (no labels used)')
    pretrain = os.path.join(out, 'pretrain')
    glcgeo(
        'pretrain', '--data', TILES, '--out', pretrain, '--backbone', 'resnet18',
        '--patch-size', '64', '--batch-size', '8',
        '--length', str(8 * args.pretrain_steps), '--max-steps',
        str(args.pretrain_steps), '--num-workers', '0', '--accelerator', 'cpu',
        '--quiet',
    )  # fmt: skip

    step(2, 'export the pretrained encoder and decoder for TorchGeo')
    weights = os.path.join(pretrain, 'weights.ckpt')
    glcgeo(
        'export',
        '--checkpoint',
        os.path.join(pretrain, 'checkpoints', 'last.ckpt'),
        '--out',
        weights,
    )

    step(3, 'fine-tune DeepLabV3+ on 10% of the labelled training tiles')
    finetune = os.path.join(out, 'finetune')
    glcgeo(
        'finetune', '--config', CONFIG, '--weights', weights,
        '--transfer', 'encoder+decoder', '--epochs', str(args.finetune_epochs),
        '--accelerator', 'cpu', '--out', finetune, '--quiet',
    )  # fmt: skip

    step(4, 'predict a land-cover map of a Sentinel-2 tile, and its polygons')
    landcover = os.path.join(out, 'landcover.tif')
    polygons = os.path.join(out, 'landcover.gpkg')
    glcgeo(
        'predict', '--in', SCENE, '--out', landcover,
        '--model', os.path.join(finetune, 'model.ckpt'), '--tile-size', '256',
        '--overlap', '32', '--device', 'cpu', '--polygons', polygons, '--quiet',
    )  # fmt: skip

    step(5, 'write a preview: the scene beside its map, with a legend')
    preview = os.path.join(out, 'preview.png')
    write_preview(SCENE, landcover, preview)
    print(f'  {preview}')
    print(
        f'\nDone in {time.perf_counter() - started:.0f} s. Outputs: '
        f'{landcover} (Cloud Optimized GeoTIFF; opens in QGIS with its legend), '
        f'{polygons} (class polygons), {preview}, '
        f'{os.path.join(finetune, "metrics.json")} (scores against the pseudo-labels).'
    )


if __name__ == '__main__':
    main()
