"""Host-side settings that make CPU training faster, and how much memory the host has left."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path
from typing import Optional

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


def available_memory_bytes() -> Optional[int]:
    """Memory this process could still get on the host: MemAvailable, lowered to a container's cgroup limit
    (v2 memory.max, v1 limit_in_bytes) less what the cgroup uses. None where neither can be read."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit, usage = Path(limit_file).read_text().strip(), int(Path(usage_file).read_text())
            if limit != "max" and int(limit) < 2**60:  # v1 writes a huge number for "no limit"
                found.append(max(0, int(limit) - usage))
        except (OSError, ValueError):
            pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)
