"""Benchmark: window pairs per second through glcgeo's data module loader.

On each mosaic (by default the shipped one, the two overlapping Sentinel-2
tiles, a generated many-file one: 256 touching files of 512 x 512 px, tiled
and deflate-compressed, of Sentinel-2 texture, written once under
$GLCGEO_BENCH_DATA or $TMPDIR/glcgeo-bench; touching tiles: one 4,096 x 4,096
px scene of that texture cut into a grid of 64 files of 512 x 512 px, so that
most views cross file edges; and, where ../shared/data holds it,
a collection in many CRSs: 16 SPARCS Landsat-8 scenes of 1000 x 1000 px in their
own UTM zones, each read in its own CRS; or the mosaics given with --data),
the same seeded pairs (224 px views, default scales and overlap) are read three
ways, each through a DataLoader with the same sampler, batch size and worker
processes:

* glcgeo: the loader of :class:`~glcgeo.datamodules.GLCNetDataModule` itself.
  Its workers read each pair's union window once, in the files' dtype, with the
  pair's geometry and valid fractions (``GeoTiffUnions.read_union``), and
  ``collate_unions`` packs the unions of a batch, unpadded, into one buffer
  (the bytes of the raw reads, plus the geometry). The views are not made
  here: the unions are padded, cut and resized after transfer, on the training
  device (``glcgeo.pairs.cut_views``);
* raw read: the I/O bound through the same loader: a Dataset that only does the
  rasterio ``read(window=...)`` of each pair's union window from the file(s) it
  covers (found by a vectorised test of the bounds of all files of the pair's
  CRS group, every file kept open) and returns the arrays, collated into one
  flat buffer per batch (one transfer a batch to the main process);
* two reads: the naive way, two TorchGeo slice reads per pair
  (``mosaic[xmin:xmax:res, ymin:ymax:res]``, each view at its own resolution).

    python experiments/bench_pairs.py [--data PATH ...] [--pairs 512] [--batch 32]
        [--workers 2] [--cases shipped many touching crs]

Also printed, as context only (not in the RESULT ratios): the raw reads in one
process with no DataLoader (the shipped files are small: after the first round
every tile sits in GDAL's block cache, so this is a copy of cached uint16 pixels,
~0.3 ms a pair, faster than any worker can ship them on a 2-core machine); and
the cost per pair of ``cut_views`` on this machine's CPU (unpacking and padding
the unions included), the work moved out of the workers (on a GPU it is a small
part of a training step).

Last line: ``RESULT pairs_per_s=<x> ratio_vs_raw_read=<r> ratio_vs_two_reads=<s>``
for the first mosaic, then ``many_pairs_per_s``, ``many_ratio_vs_raw_read``,
``many_ratio_vs_two_reads`` for the generated one, ``touching_pairs_per_s`` ...
for the cut scene and ``crs_pairs_per_s`` ... for the many-CRS collection in
the default run (``--cases`` picks some of them; or ``<i>_pairs_per_s`` ... for
the i-th --data mosaic, i >= 2), with x the glcgeo
loader's pairs/s, r = x / raw read through the loader, s = x / two reads
(targets: r >= 0.8 on every mosaic and s >= 1.5).
"""

import argparse
import glob
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.io import DatasetReader
from rasterio.windows import from_bounds
from synthetic_mosaics import (
    clustered_corners,
    default_folder,
    write_cut_scene,
    write_mosaic,
)
from torch.utils.data import DataLoader, Dataset

from glcgeo.collection import (
    GeoTiffCollection,
    GroupedPairSampler,
    mosaic_groups,
    open_mosaic,
    pair_sampler,
)
from glcgeo.datamodules import GLCNetDataModule
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.geometry import PixelGrid
from glcgeo.pairs import GeoTiffUnions, WindowPair, cut_views, unpack_unions
from glcgeo.samplers import PairedWindowSampler

#: A mosaic of one CRS, or a collection of several.
Mosaic = GeoTiffMosaic | GeoTiffCollection[GeoTiffMosaic]

DATA = os.path.join(
    os.path.dirname(__file__), '..', 'tests', 'data', 'sentinel2_10m_tiles'
)
#: SPARCS scenes, each in its own UTM zone (used from ../shared/data only).
SPARCS = os.path.join(
    os.path.dirname(__file__),
    '..',
    '..',
    'shared',
    'data',
    'labeled',
    'sparcs_landsat8',
)


def read_union(
    handles: Sequence[DatasetReader],
    bounds: np.ndarray,
    grid: PixelGrid,
    pair: WindowPair,
) -> list[np.ndarray]:
    """Rasterio reads of a pair's union window from each file it covers.

    Args:
        handles: every file of the mosaic, open.
        bounds: [N, 4] their (left, bottom, right, top).
        grid: the mosaic's grid.
        pair: the pair.
    """
    xmin, ymin, xmax, ymax = grid.window_bounds(pair.union)
    left, bottom, right, top = bounds.T
    covering = (left < xmax) & (xmin < right) & (bottom < ymax) & (ymin < top)
    reads = []
    for i in np.flatnonzero(covering):
        src = handles[i]
        window = from_bounds(
            max(xmin, left[i]),
            max(ymin, bottom[i]),
            min(xmax, right[i]),
            min(ymax, top[i]),
            src.transform,
        )
        reads.append(src.read(window=window.round_offsets().round_lengths()))
    return reads


def open_all(files: Sequence[str]) -> tuple[list[DatasetReader], np.ndarray]:
    """Open every file; the handles and their bounds."""
    handles = [rasterio.open(f) for f in files]
    return handles, np.array([tuple(h.bounds) for h in handles])


class RawReads(Dataset[list[np.ndarray]]):
    """The I/O bound: each pair's union window read by rasterio, nothing more."""

    def __init__(self, mosaic: Mosaic) -> None:
        self.groups = [(group.files, group.grid) for group in mosaic_groups(mosaic)]
        self.handles: dict[int, list[tuple[list[DatasetReader], np.ndarray]]] = {}

    def __getitem__(self, pair: WindowPair) -> list[np.ndarray]:
        # Files opened once per worker process (a forked handle is not shareable).
        opened = self.handles.get(os.getpid())
        if opened is None:
            opened = self.handles[os.getpid()] = [
                open_all(files) for files, _ in self.groups
            ]
        return read_union(*opened[pair.group], self.groups[pair.group][1], pair)


def one_buffer(samples: list[list[np.ndarray]]) -> torch.Tensor:
    """Collate a batch of raw reads into one flat tensor (one transfer a batch)."""
    return torch.from_numpy(np.concatenate([a.ravel() for s in samples for a in s]))


class TwoReads(Dataset[dict[str, Any]]):
    """The naive pair reader: one TorchGeo read per view, at the view's resolution."""

    def __init__(self, mosaic: Mosaic) -> None:
        self.groups = mosaic_groups(mosaic)

    def __len__(self) -> int:
        return sum(len(group) for group in self.groups)

    def __getitem__(self, pair: WindowPair) -> dict[str, Any]:
        sample = {}
        mosaic = self.groups[pair.group]
        for k, window in ((1, pair.view1), (2, pair.view2)):
            affine = mosaic.grid.window_transform(window, pair.size)
            res = affine.a
            xmax = affine.c + pair.size * res
            ymin = affine.f - pair.size * res
            read = mosaic[affine.c : xmax : res, ymin : affine.f : res]
            sample[f'image{k}'] = read['image']
            sample[f'transform{k}'] = read['transform']
        return sample


def sampler(
    mosaic: Mosaic, args: argparse.Namespace
) -> PairedWindowSampler | GroupedPairSampler:
    """The benchmark's pairs: the same for every path (same seed)."""
    return pair_sampler(
        mosaic,
        size=args.size,
        length=args.pairs,
        generator=torch.Generator().manual_seed(args.seed),
    )


def time_loader(loader: DataLoader[Any], batch_size: int) -> float:
    """Pairs per second through a DataLoader, after its first two batches."""
    count, start = 0, 0.0
    for i, _ in enumerate(loader):
        if i == 1:  # workers started and warm: time from here
            start = time.perf_counter()
        elif i > 1:
            count += batch_size
    return count / (time.perf_counter() - start)


def time_glcgeo(datamodule: GLCNetDataModule, args: argparse.Namespace) -> float:
    """Pairs per second through the data module's own training loader."""
    dataset = datamodule.train_dataset
    assert isinstance(dataset, GeoTiffMosaic | GeoTiffCollection)
    # A fresh seeded sampler: the pairs the other paths read.
    datamodule.train_sampler = sampler(dataset, args)
    return time_loader(datamodule.train_dataloader(), args.batch)


def time_raw_reads(mosaic: Mosaic, pairs: list[WindowPair]) -> float:
    """Pairs per second of rasterio reads of the union windows, one process."""
    groups = mosaic_groups(mosaic)
    opened = [open_all(group.files) for group in groups]
    try:
        start = time.perf_counter()
        for pair in pairs:
            read_union(*opened[pair.group], groups[pair.group].grid, pair)
        return len(pairs) / (time.perf_counter() - start)
    finally:
        for handles, _ in opened:
            for src in handles:
                src.close()


def time_cut(
    datamodule: GLCNetDataModule, args: argparse.Namespace
) -> tuple[float, float]:
    """Milliseconds per pair of cutting both views of a batch on this CPU.

    Returns:
        (cut_views in all, of which unpacking and padding the unions), each the
        best of a few runs.
    """
    dataset = datamodule.train_dataset
    assert isinstance(dataset, GeoTiffUnions | GeoTiffCollection)
    pairs = list(sampler(dataset, args))[: args.batch]
    batch = datamodule.collate_fn(dataset.read_pairs(pairs))
    cut_views(batch, args.size)  # warm up
    cut, unpack = math.inf, math.inf
    for _ in range(3):
        start = time.perf_counter()
        cut_views(batch, args.size)
        cut = min(cut, time.perf_counter() - start)
        start = time.perf_counter()
        unpack_unions(batch['union'], batch['union_shape'])
        unpack = min(unpack, time.perf_counter() - start)
    return cut / len(pairs) * 1000, unpack / len(pairs) * 1000


def measure(paths: list[str], args: argparse.Namespace) -> tuple[float, float, float]:
    """Pairs/s of the three paths on one mosaic, the best of --rounds rounds.

    Returns:
        (glcgeo loader, raw reads through the loader, two reads per pair).
    """
    datamodule = GLCNetDataModule(
        paths,
        batch_size=args.batch,
        patch_size=args.size,
        length=args.pairs,
        num_workers=args.workers,
    )
    datamodule.setup('fit')
    mosaic = open_mosaic(GeoTiffMosaic, paths)
    pairs = list(sampler(mosaic, args))

    def loader(dataset: Any, **kwargs: Any) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=args.batch,
            sampler=sampler(mosaic, args),
            num_workers=args.workers,
            **kwargs,
        )

    print(
        f'mosaic: {len(mosaic.files)} files in {len(mosaic_groups(mosaic))} CRS(s), '
        f'{mosaic.num_bands} bands, '
        f'{args.pairs} pairs of {args.size} px, batch {args.batch}, '
        f'{args.workers} workers, {torch.get_num_threads()} torch threads'
    )
    # Rounds alternate the paths; the best round of each is kept, so that a
    # burst of other work on the machine does not decide the ratios.
    raw, single, glcgeo, naive = 0.0, 0.0, 0.0, 0.0
    for round_ in range(1, args.rounds + 1):
        raw = max(
            raw,
            time_loader(loader(RawReads(mosaic), collate_fn=one_buffer), args.batch),
        )
        single = max(single, time_raw_reads(mosaic, pairs))
        glcgeo = max(glcgeo, time_glcgeo(datamodule, args))
        naive = max(naive, time_loader(loader(TwoReads(mosaic)), args.batch))
        print(
            f'round {round_}: best pairs/s so far: raw rasterio union reads '
            f'{raw:.1f} (1 process, no loader: {single:.1f}), glcgeo data module '
            f'loader {glcgeo:.1f}, two TorchGeo reads per pair {naive:.1f}',
            flush=True,
        )
    cut, unpack = time_cut(datamodule, args)
    print(
        f'views cut after transfer (cut_views, both views, on this CPU with '
        f'{torch.get_num_threads()} threads): {cut:.2f} ms a pair, of which '
        f'unpacking and padding the unions {unpack:.2f} ms'
    )
    return glcgeo, raw, naive


def many_files() -> list[str]:
    """The generated many-file mosaic: 256 touching files in clusters of 16 x 16."""
    return write_mosaic(
        default_folder('pairs_256x512'),
        clustered_corners(256, 512 * 10.0, cluster=16),
        side=512,
        res=10.0,
    )


def crs_scenes() -> list[str]:
    """16 SPARCS scenes in their own UTM zones, or none where they are absent."""
    return sorted(glob.glob(os.path.join(SPARCS, '*_img.tif')))[:16]


#: The default mosaics: case name -> its files.
CASES = {
    'shipped': lambda: [DATA],
    'many': many_files,
    'touching': lambda: write_cut_scene(default_folder('cut_4096_into_512')),
    'crs': crs_scenes,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--data',
        nargs='+',
        action='append',
        help='a mosaic (files, folders, globs); repeat for several (default: '
        'the shipped Sentinel-2 tiles and a generated 256-file mosaic)',
    )
    parser.add_argument(
        '--pairs', type=int, default=512, help='pairs per path (a multiple of batch)'
    )
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument(
        '--workers', type=int, default=2, help="glcgeo's default data loader workers"
    )
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--rounds', type=int, default=3, help='timing rounds')
    parser.add_argument(
        '--cases',
        nargs='+',
        choices=CASES,
        default=list(CASES),
        help='the default mosaics to measure (without --data): all by default',
    )
    args = parser.parse_args()
    if args.pairs % args.batch or args.pairs < 3 * args.batch:
        parser.error('--pairs must be a multiple of --batch, at least 3 batches')
    # (prefix of the RESULT keys, paths) of each mosaic.
    mosaics: list[tuple[str, list[str]]]
    if args.data:
        mosaics = [('' if i == 0 else f'{i + 1}_', d) for i, d in enumerate(args.data)]
    else:
        mosaics = []
        for case in args.cases:
            paths = CASES[case]()
            if paths:
                mosaics.append(('' if case == 'shipped' else f'{case}_', paths))
            else:
                print(f'no SPARCS scenes in {SPARCS}: the many-CRS case is skipped')
    results = []
    for prefix, paths in mosaics:
        print(f'== {prefix or "first "}mosaic: {paths[0]} ... ==', flush=True)
        glcgeo, raw, naive = measure(paths, args)
        results.append(
            f'{prefix}pairs_per_s={glcgeo:.1f} '
            f'{prefix}ratio_vs_raw_read={glcgeo / raw:.2f} '
            f'{prefix}ratio_vs_two_reads={glcgeo / naive:.2f}'
        )
    print('RESULT ' + ' '.join(results))


if __name__ == '__main__':
    main()
