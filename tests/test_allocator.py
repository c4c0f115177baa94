"""glibc keeps freed memory for reuse once told (glcgeo.allocator)."""

import ctypes
import json
import os
import platform
import subprocess
import sys

import pytest

from glcgeo.allocator import keep_freed_memory

#: Requests three 16 MiB tensors and frees them, 20 times, as forward passes do
#: with their activations; prints whether the setting was made and the page
#: faults of the last 10 times.
FORWARD_PASSES = """
import json, resource
import torch
from glcgeo.allocator import keep_freed_memory
made = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def forward():
    return [torch.ones(2 << 20, dtype=torch.float64) for _ in range(3)]
for _ in range(10):
    forward()
start = faults()
for _ in range(10):
    forward()
print(json.dumps({'made': made, 'faults': faults() - start}))
"""


class FakeLibc:
    """Records the mallopt calls made through ctypes."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    """glibc's mallopt, recorded rather than called; neither variable set."""
    fake = FakeLibc()
    monkeypatch.setattr(ctypes, 'CDLL', lambda name: fake)
    monkeypatch.setattr(platform, 'libc_ver', lambda: ('glibc', '2.36'))
    monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
    monkeypatch.delenv('GLCGEO_KEEP_FREED_MEMORY', raising=False)
    return fake


def test_blocks_up_to_32_mib_stay_in_the_untrimmed_heap(libc: FakeLibc) -> None:
    assert keep_freed_memory() is True
    # M_MMAP_THRESHOLD at glibc's largest, M_TRIM_THRESHOLD at INT_MAX.
    assert libc.calls == [(-3, 32 * 2**20), (-1, 2**31 - 1)]


@pytest.mark.parametrize(
    ('variable', 'value'),
    [('GLCGEO_KEEP_FREED_MEMORY', '0'), ('GLIBC_TUNABLES', 'glibc.malloc.perturb=0')],
)
def test_the_user_can_keep_glibcs_defaults(
    libc: FakeLibc, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert keep_freed_memory() is False
    assert libc.calls == []


def test_nothing_is_set_outside_glibc(
    libc: FakeLibc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform, 'libc_ver', lambda: ('', ''))
    assert keep_freed_memory() is False
    assert libc.calls == []


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_forward_passes_reuse_the_memory_of_the_ones_before() -> None:
    names = ('GLIBC_TUNABLES', 'GLCGEO_KEEP_FREED_MEMORY')
    result = subprocess.run(
        [sys.executable, '-c', FORWARD_PASSES],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in names},
        check=True,
    )
    passes = json.loads(result.stdout)
    assert passes['made'] is True
    # glibc's defaults often hand 32 MiB back each time: 8,192 pages of 4 KiB.
    assert passes['faults'] < 1_000
