"""Benchmark: starting on regional mosaics costs the data, not the bounding box.

Three generated mosaics (EPSG:32618, 1 m pixels, Sentinel-2 texture; written
once under $GLCGEO_BENCH_DATA or $TMPDIR/glcgeo-bench):

* one: a 512 x 512 file;
* far: that file and another 250 km east and 250 km south of it (a bounding
  box of 6.25e10 pixels for 5.2e5 pixels of data);
* many: --files files of 256 x 256 (default 10,000) in clusters of 10 x 10
  touching files, the clusters 10 km apart (100 km across for 10,000 files);
  the files have a nodata tag, so that every file's mask is read.

Each run is a fresh child process (so its peak memory, /proc VmHWM, is its own),
side by side in one run:

* start: ``GeoTiffUnions`` (the index), ``PairedWindowSampler`` (224 px views;
  its coverage) and the first batch of 32 pairs read in the union form and
  collated, as the pretraining loader does;
* stats: ``glcgeo stats --windows 8 --window-size 64``.

Times are from after the imports; memory is the child's peak, imports
included, and the 'extra' figures are the far mosaic's minus the one file's.

    python experiments/bench_mosaic.py [--files 10000]

Last line: ``RESULT far_extra_s=<s> far_extra_mb=<m> far_stats_extra_s=<s>
far_stats_extra_mb=<m> many_files=<n> many_start_s=<s> many_peak_mb=<m>``
(targets: far extras < 1 s and < 300 MB; many: < 60 s and < 2000 MB).
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

from synthetic_mosaics import ORIGIN, clustered_corners, default_folder, write_mosaic


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError('no VmHWM in /proc/self/status')


def child(task: str, paths: list[str]) -> None:
    """Run one task in this (child) process and print its figures as JSON."""
    import torch

    from glcgeo.cli import main
    from glcgeo.pairs import GeoTiffUnions, collate_unions
    from glcgeo.samplers import PairedWindowSampler

    # The stats command imports its modules when it runs: import them before the
    # clock starts, as the start task's are.
    importlib.import_module('glcgeo.cli.stats')
    baseline = peak_mb()
    start = time.perf_counter()
    if task == 'start':
        unions = GeoTiffUnions(paths)
        sampler = PairedWindowSampler(
            unions, size=224, length=32, generator=torch.Generator().manual_seed(0)
        )
        collate_unions(unions.read_pairs(list(sampler)))
    else:
        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, 'stats.json')
            argv = ['stats', '--data', *paths, '--out', out]
            status = main([*argv, '--windows', '8', '--window-size', '64'])
            assert status == 0
    seconds = time.perf_counter() - start
    print(json.dumps({'s': seconds, 'mb': peak_mb(), 'imports_mb': baseline}))


def run_child(task: str, paths: list[str]) -> dict[str, float]:
    """Run a task in a fresh process; its figures."""
    if len(paths) > 100:
        # A long list goes through a file rather than the command line.
        handle, listing = tempfile.mkstemp(suffix='.txt')
        with os.fdopen(handle, 'w') as f:
            f.write('\n'.join(paths))
        arguments = ['--list', listing]
    else:
        arguments = paths
    result = subprocess.run(
        [sys.executable, __file__, '--child', task, *arguments],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        raise SystemExit(f'{task} on {len(paths)} files failed:\n{result.stderr}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--files', type=int, default=10_000, help='many-file count')
    parser.add_argument('--child', nargs='+', help=argparse.SUPPRESS)
    parser.add_argument('--list', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task, *paths = args.child
        if args.list:
            with open(args.list) as f:
                paths = f.read().split('\n')
        child(task, paths)
        return

    far = write_mosaic(
        default_folder('far_250km'),
        [ORIGIN, (ORIGIN[0] + 250_000, ORIGIN[1] - 250_000)],
        side=512,
        res=1.0,
    )
    print('writing the many-file mosaic (once) ...', flush=True)
    many = write_mosaic(
        default_folder(f'many_{args.files}'),
        clustered_corners(args.files, 256.0),
        side=256,
        res=1.0,
        nodata=0,
    )
    figures = {}
    for name, paths in (('one', far[:1]), ('far', far)):
        for task in ('start', 'stats'):
            figures[name, task] = result = run_child(task, paths)
            print(
                f'{name} ({len(paths)} file(s)), {task}: {result["s"]:.2f} s, peak '
                f'{result["mb"]:.0f} MB (imports {result["imports_mb"]:.0f} MB)',
                flush=True,
            )
    many_start = run_child('start', many)
    print(
        f'many ({len(many)} files of 256 px in clusters 10 km apart), start: '
        f'{many_start["s"]:.2f} s, peak {many_start["mb"]:.0f} MB'
    )
    extra = {
        task: (
            figures['far', task]['s'] - figures['one', task]['s'],
            figures['far', task]['mb'] - figures['one', task]['mb'],
        )
        for task in ('start', 'stats')
    }
    print(
        f'RESULT far_extra_s={extra["start"][0]:.2f} '
        f'far_extra_mb={extra["start"][1]:.0f} '
        f'far_stats_extra_s={extra["stats"][0]:.2f} '
        f'far_stats_extra_mb={extra["stats"][1]:.0f} many_files={len(many)} '
        f'many_start_s={many_start["s"]:.1f} many_peak_mb={many_start["mb"]:.0f}'
    )


if __name__ == '__main__':
    main()
