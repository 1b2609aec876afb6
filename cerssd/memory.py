"""Keep the daemon's memory from ratcheting up after every large stream.

glibc raises its mmap threshold each time a large mmapped block is freed (up to
32 MiB), so after the first backup the 8 MiB parts come from the heap and arenas,
and stay there: measured, the daemon idled at ~140 MiB after a few transfers
instead of returning to ~85. A fixed threshold of 1 MiB keeps every part in its
own mapping, given back to the kernel when freed; two arenas are enough for a
daemon whose threads only move bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_malloc(mmap_threshold: int = 1 << 20, arena_max: int = 2) -> bool:
    """Apply the settings through ``mallopt``; False where libc is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(M_ARENA_MAX, arena_max))
