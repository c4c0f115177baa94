"""The C library's memory allocator, for processes that run large tensors on a CPU.

glibc maps requests above its threshold (128 KiB at first, raised to the size of
each mapped block freed, up to 32 MiB) fresh from the kernel and unmaps them when
they are freed, and gives the top of its heap back once more than twice that
threshold is free there. A model's forward passes free and request the same
large blocks over and over, so each pass has the kernel map and zero much of the
same memory again: on the 2-core AMD CI machine, a U-Net ResNet-18's forward
passes over 512 px tiles took 1.4 times as long inside a prediction as in a loop of
forward passes alone, and the process had 6 times the page faults it has once
freed memory is kept.

:func:`keep_freed_memory` tells glibc to keep freed memory for reuse instead.
It is a setting of the whole process, so glcgeo's library functions never make
it: the ``glcgeo predict`` command does, and scripts may.
"""

import ctypes
import os
import platform

__all__ = ['keep_freed_memory']

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The largest mmap threshold glibc takes on 64-bit systems (bytes).
_LARGEST_MMAP_THRESHOLD = 32 * 2**20
#: The most free memory (bytes) mallopt lets the heap's top keep: INT_MAX.
_KEEP_ALL = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse rather than hand it back to the kernel.

    Requests of up to 32 MiB (a 512 px tile's activations, even a ResNet-50's)
    come from the heap, and no free memory at its top is given back, so that
    repeated forward passes reuse the memory of the ones before them; larger
    requests are mapped as before. (Mapping none of them would keep those too,
    but glibc cannot reuse a freed block for an aligned request of the same size
    once a small allocation sits after it, and PyTorch aligns its tensors: a loop
    of such requests grew by each of them.) The process then holds the peak of
    its heap until it exits. Call it once, early, before the large tensors.

    Nothing is changed where the C library is not glibc, where the environment
    variable ``GLCGEO_KEEP_FREED_MEMORY`` is ``0`` (glibc's defaults, for the
    least memory), or where ``GLIBC_TUNABLES`` sets any ``glibc.malloc.``
    tunable: the user has chosen the allocator's settings. (Setting any of
    glibc's thresholds, even to its default value, also stops glibc raising its
    threshold as blocks are freed: ``glibc.malloc.mmap_max=65536`` made a U-Net
    prediction twice as slow.)

    Returns:
        whether the setting was made.
    """
    if platform.libc_ver()[0] != 'glibc':
        return False
    if os.environ.get('GLCGEO_KEEP_FREED_MEMORY') == '0':
        return False
    if 'glibc.malloc.' in os.environ.get('GLIBC_TUNABLES', ''):
        return False
    libc = ctypes.CDLL(None)
    # mallopt returns 1 on success.
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_ALL)
    )
