"""Host-side settings that make CPU training faster."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.lru_cache(maxsize=1)
def keep_freed_memory_for_reuse() -> bool:
    """Stop glibc from returning large freed blocks to the OS after every step.

    A training step allocates and frees the same large buffers (the logits alone are batch x context x
    vocab floats). By default glibc serves each with a fresh mmap and unmaps it on free, so every step
    pays page faults for hundreds of megabytes; on a 2-core CPU that was about a third of the step
    (benchmarks/cpu_allocator.py). Keeping freed memory in the heap removes that cost. Returns whether
    the setting was applied (only on glibc).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )  # never trim: a step frees more than 1 GiB
