"""Are GLCNet's per-pixel embeddings useful? Unsupervised k-means against land cover.

On each labelled scene (``nc``, ``zion``; see ``protocol/datasets.py``), at each
pretraining seed:

1. pretrain GLCNet on the scene's image without its labels, with the protocol's
   settings (``protocol/pretraining.py``: 150 steps, 32 pairs of 64 px views,
   ResNet-18) and export it, and export GLCNet's untrained network at the same
   seed (the protocol's ``zero_step``: the same architecture, random init);
2. embed the scene with ``glcgeo``'s :func:`~glcgeo.inference.embed_raster`
   (decoder features, 256 channels at stride 4, upsampled to pixels);
3. on one fixed seeded sample of the labelled pixels (the same for every run),
   cluster (a) GLCNet's embeddings, (b) the random network's, (c) the raw bands
   normalised by the scene's band statistics, each standardised per channel,
   with k-means (``kornia.contrib.KMeans``, k = number of classes, seeded by the
   pretraining seed), and score the clusters against the labels with normalised
   mutual information (``torchmetrics``, arithmetic mean; nodata left out).

Results are paired by seed: mean +- standard error over the seeds of each
score and of GLCNet's difference with the random network and with raw bands.

    PYTHONPATH=. .venv/bin/python experiments/embedding_nmi.py
    PYTHONPATH=. .venv/bin/python experiments/embedding_nmi.py --steps 3 \\
        --results /tmp/r --work /tmp/w   # a check of the pipeline
"""

import argparse
import csv
import os
import shlex
import sys
import time
from dataclasses import replace

import numpy as np
import rasterio
import torch
from kornia.contrib import KMeans
from protocol.datasets import ROOT, LabelledSet, nc, zion
from protocol.pretraining import PretrainSettings, pretrain_start
from run_protocol import cpu_minutes
from torchmetrics.functional.clustering import normalized_mutual_info_score

from glcgeo.datasets import GeoTiffMosaic
from glcgeo.inference import embed_raster, load_embedding_network
from glcgeo.rasters import valid_pixels
from glcgeo.stats import BandStats, compute_band_stats

RESULTS = os.path.join(ROOT, 'experiments', 'results')
#: The feature sets compared, in table order.
FEATURES = {
    'glcnet': 'GLCNet embeddings (pretrained)',
    'random': 'Random-init embeddings (same network, untrained)',
    'raw': 'Raw bands (normalised)',
}


def labelled_sample(
    data: LabelledSet, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded sample of the pixels holding a label and image data.

    Returns:
        (flat pixel indexes, their class index 0..k-1, the image's [C, n]
        raw values there).
    """
    with rasterio.open(data.images[0]) as src:
        image = src.read()
        holds_data = valid_pixels(torch.from_numpy(image), src.nodata).numpy()
    with rasterio.open(data.masks[0]) as src:
        labels = src.read(1)
    assert labels.shape == holds_data.shape, 'labels must lie on the image grid'
    values = np.asarray(data.class_values)
    labelled = np.isin(labels, values) & (labels != data.mask_nodata) & holds_data
    pixels = np.flatnonzero(labelled)
    chosen = np.sort(
        np.random.default_rng(seed).choice(
            pixels, min(size, len(pixels)), replace=False
        )
    )
    classes = np.searchsorted(values, labels.flat[chosen])
    return chosen, classes, image.reshape(len(image), -1)[:, chosen]


def embedding_sample(
    weights: str, image: str, pixels: np.ndarray, work: str
) -> np.ndarray:
    """Embeddings of a network at the sample's pixels: [256, n] float32."""
    model, metadata = load_embedding_network(weights)
    out = os.path.join(work, f'{os.path.basename(weights)}.embeddings.tif')
    embed_raster(model, metadata, image, out, progress=False, overwrite=True)
    with rasterio.open(out) as src:
        sample = np.stack(
            [src.read(band).flat[pixels] for band in range(1, src.count + 1)]
        ).astype(np.float32)
    os.remove(out)  # 256 float16 bands: hundreds of MB for a large scene
    assert np.isfinite(sample).all(), 'embeddings lack data at labelled pixels'
    return sample


def nmi(features: np.ndarray, classes: np.ndarray, seed: int) -> float:
    """NMI of k-means clusters (k = classes) of standardised [D, n] features."""
    x = torch.from_numpy(features.T).double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    k = int(classes.max()) + 1
    kmeans = KMeans(k, None, tolerance=1e-4, max_iterations=300, seed=seed)
    kmeans.fit(x.float())
    clusters = kmeans.predict(x.float())
    return float(
        normalized_mutual_info_score(clusters, torch.from_numpy(classes).long())
    )


def mean_se(values: list[float]) -> str:
    """Mean +- standard error, as a table cell."""
    array = np.asarray(values)
    se = array.std(ddof=1) / np.sqrt(len(array)) if len(array) > 1 else float('nan')
    return f'{array.mean():.3f} ± {se:.3f}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--datasets', nargs='+', default=['nc', 'zion'])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--steps', type=int, default=PretrainSettings().steps)
    parser.add_argument('--sample', type=int, default=20_000, help='pixels scored')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--work', default=os.path.join(ROOT, 'runs', 'embedding_nmi'))
    parser.add_argument('--results', default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    settings = replace(PretrainSettings(), steps=args.steps)
    rows = []
    for name in args.datasets:
        data = {'nc': nc, 'zion': zion}[name]()
        if isinstance(data, str):
            print(data)
            continue
        folder = os.path.join(args.work, name)
        os.makedirs(folder, exist_ok=True)
        stats = os.path.join(folder, 'stats.json')
        if not os.path.exists(stats):
            compute_band_stats(GeoTiffMosaic(data.images)).save(stats)
        pixels, classes, raw = labelled_sample(data, args.sample, seed=0)
        band_stats = BandStats.load(stats)
        mean = np.asarray(band_stats.mean)[:, None]
        std = np.asarray(band_stats.std)[:, None]
        for seed in args.seeds:
            features = {'raw': (raw - mean) / std}
            for start, method in (('glcnet', 'glcnet'), ('random', 'zero_step')):
                weights = os.path.join(folder, f'{method}_seed{seed}.ckpt')
                if not os.path.exists(weights):
                    weights, _, seconds = pretrain_start(
                        method, data.images, stats, settings, seed, folder
                    )
                    print(f'{name} {method} seed {seed}: {seconds:.0f} s', flush=True)
                features[start] = embedding_sample(
                    weights, data.images[0], pixels, folder
                )
            for start, values in features.items():
                score = nmi(values, classes, seed)
                rows.append(
                    {'dataset': name, 'features': start, 'seed': seed, 'nmi': score}
                )
                print(f'{name} seed {seed} {start}: NMI {score:.3f}', flush=True)
        # After each scene, so that an interrupted run keeps what it scored.
        write_results(args, rows, time.perf_counter() - started)


def write_results(args: argparse.Namespace, rows: list[dict], seconds: float) -> None:
    """The CSV of every score, and the markdown table with the paired differences."""
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, 'embedding_nmi.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=['dataset', 'features', 'seed', 'nmi'])
        writer.writeheader()
        writer.writerows(rows)
    score = {(r['dataset'], r['features'], r['seed']): r['nmi'] for r in rows}
    datasets = list(dict.fromkeys(r['dataset'] for r in rows))
    lines = [
        '# Unsupervised k-means on per-pixel embeddings: NMI with land cover',
        '',
        f'Command: `{shlex.join(["python", *sys.argv])}`; wall time '
        f'{seconds / 60:.1f} min, {cpu_minutes():.1f} core-minutes of CPU '
        f'(pretraining {args.steps} steps of 32 pairs of 64 px views, ResNet-18, '
        f'as experiments/run_protocol.py; seeds {args.seeds}).',
        '',
        f'k-means (k = number of classes) on {args.sample:,} labelled pixels '
        '(one seeded sample per scene, nodata left out), each feature standardised; '
        'normalised mutual information with the labels (arithmetic). Mean ± '
        'standard error over pretraining seeds; differences are paired by seed.',
        '',
        '| scene | ' + ' | '.join(FEATURES.values()) + ' | GLCNet - random | '
        'GLCNet - raw |',
        '|---|' + '---|' * (len(FEATURES) + 2),
    ]
    for name in datasets:
        cells = [mean_se([score[name, f, s] for s in args.seeds]) for f in FEATURES]
        for other in ('random', 'raw'):
            cells.append(
                mean_se(
                    [
                        score[name, 'glcnet', s] - score[name, other, s]
                        for s in args.seeds
                    ]
                )
            )
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    with open(os.path.join(args.results, 'embedding_nmi.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
