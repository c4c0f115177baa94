"""Benchmark: window pairs per second through glcgeo's read-once DataLoader path.

On a shipped mosaic (the two overlapping Sentinel-2 tiles), the same seeded pairs
(224 px views, default scales and overlap) are read three ways:

* glcgeo: ``DataLoader(mosaic, sampler=PairedWindowSampler(...), num_workers=W)``,
  each pair's union window read once and both views cut (and resized) from it;
* raw read: rasterio ``read(window=...)`` of each pair's union window from the
  file(s) it covers, single process, no cutting or resizing: the I/O bound;
* two reads: the naive way, two TorchGeo slice reads per pair
  (``mosaic[xmin:xmax:res, ymin:ymax:res]``, each view at its own resolution)
  through the same DataLoader setup.

    python experiments/bench_pairs.py [--pairs 512] [--batch 32] [--workers 2]

The shipped files are small: after the first round every tile sits in GDAL's
block cache, so the raw read is a copy of cached uint16 pixels (~0.3 ms a pair),
while the other paths also make two float32 224 x 224 views (resized), their
geometry, and pass them through the DataLoader's workers.

Last line: ``RESULT pairs_per_s=<x> ratio_vs_raw_read=<r> ratio_vs_two_reads=<s>``
(target: r >= 0.8 and s >= 1.5).
"""

import argparse
import os
import time
from collections.abc import Iterable
from typing import Any

import rasterio
import torch
from rasterio.windows import from_bounds
from torch.utils.data import DataLoader, Dataset

from glcgeo.datasets import GeoTiffMosaic
from glcgeo.samplers import PairedWindowSampler, WindowPair

DATA = os.path.join(
    os.path.dirname(__file__), '..', 'tests', 'data', 'sentinel2_10m_tiles'
)


class TwoReads(Dataset[dict[str, Any]]):
    """The naive pair reader: one TorchGeo read per view, at the view's resolution."""

    def __init__(self, mosaic: GeoTiffMosaic) -> None:
        self.mosaic = mosaic

    def __len__(self) -> int:
        return len(self.mosaic)

    def __getitem__(self, pair: WindowPair) -> dict[str, Any]:
        sample = {}
        for k, window in ((1, pair.view1), (2, pair.view2)):
            affine = self.mosaic.grid.window_transform(window, pair.size)
            res = affine.a
            xmax = affine.c + pair.size * res
            ymin = affine.f - pair.size * res
            read = self.mosaic[affine.c : xmax : res, ymin : affine.f : res]
            sample[f'image{k}'] = read['image']
            sample[f'transform{k}'] = read['transform']
        return sample


def sampler(mosaic: GeoTiffMosaic, args: argparse.Namespace) -> PairedWindowSampler:
    """The benchmark's pairs: the same for every path (same seed)."""
    return PairedWindowSampler(
        mosaic,
        size=args.size,
        length=args.pairs,
        generator=torch.Generator().manual_seed(args.seed),
    )


def time_loader(
    dataset: Any, pairs: Iterable[WindowPair], args: argparse.Namespace
) -> float:
    """Pairs per second through a DataLoader, after its first two batches."""
    loader = DataLoader(
        dataset, batch_size=args.batch, sampler=pairs, num_workers=args.workers
    )
    count, start = 0, 0.0
    for i, batch in enumerate(loader):
        if i == 1:  # workers started and warm: time from here
            start = time.perf_counter()
        elif i > 1:
            count += len(batch['image1'])
    return count / (time.perf_counter() - start)


def time_raw_reads(mosaic: GeoTiffMosaic, pairs: list[WindowPair]) -> float:
    """Pairs per second of rasterio reads of the union windows, one process."""
    grid = mosaic.grid
    handles = [rasterio.open(f) for f in mosaic.files]
    try:
        start = time.perf_counter()
        for pair in pairs:
            union = pair.union
            xmin, ymax = grid.to_map(union.col_off, union.row_off)
            xmax, ymin = grid.to_map(
                union.col_off + union.width, union.row_off + union.height
            )
            for src in handles:
                b = src.bounds
                left, right = max(xmin, b.left), min(xmax, b.right)
                bottom, top = max(ymin, b.bottom), min(ymax, b.top)
                if left < right and bottom < top:
                    window = from_bounds(left, bottom, right, top, src.transform)
                    src.read(window=window.round_offsets().round_lengths())
        return len(pairs) / (time.perf_counter() - start)
    finally:
        for src in handles:
            src.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pairs', type=int, default=512, help='pairs per path')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument(
        '--workers', type=int, default=2, help="glcgeo's default data loader workers"
    )
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--rounds', type=int, default=3, help='timing rounds')
    args = parser.parse_args()

    mosaic = GeoTiffMosaic(DATA)
    pairs = list(sampler(mosaic, args))
    print(
        f'mosaic: {len(mosaic.files)} files, {mosaic.num_bands} bands, '
        f'{args.pairs} pairs of {args.size} px, batch {args.batch}, '
        f'{args.workers} workers, {torch.get_num_threads()} torch threads'
    )
    # Rounds alternate the paths; the best round of each is kept, so that a
    # burst of other work on the machine does not decide the ratios.
    raw, glcgeo, naive = 0.0, 0.0, 0.0
    for round_ in range(1, args.rounds + 1):
        raw = max(raw, time_raw_reads(mosaic, pairs))
        glcgeo = max(glcgeo, time_loader(mosaic, sampler(mosaic, args), args))
        naive = max(naive, time_loader(TwoReads(mosaic), sampler(mosaic, args), args))
        print(
            f'round {round_}: best pairs/s so far: raw rasterio union reads '
            f'(1 process) {raw:.1f}, glcgeo read-once DataLoader {glcgeo:.1f}, '
            f'two TorchGeo reads per pair {naive:.1f}'
        )
    print(
        f'RESULT pairs_per_s={glcgeo:.1f} ratio_vs_raw_read={glcgeo / raw:.2f} '
        f'ratio_vs_two_reads={glcgeo / naive:.2f}'
    )


if __name__ == '__main__':
    main()
