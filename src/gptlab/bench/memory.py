"""Memory: peak tensor bytes on the CPU (op by op), out-of-memory errors, host memory, and byte counts in words."""

from __future__ import annotations

import gc
import os
import re
import weakref
from pathlib import Path
from typing import Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gptlab.errors import UserError


class MemoryLimitExceeded(RuntimeError):
    """A step's tensors would take more than the simulated device memory (`--memory-limit-bytes` on a CPU)."""


class TensorBytesTracker(TorchDispatchMode):
    """Counts the bytes of tensor storage alive, op by op, on any device.

    Every op's outputs pass through `__torch_dispatch__` (below autograd and autocast, so forward,
    backward, casts and optimizer updates alike); a storage seen for the first time is added, and a
    finalizer subtracts it when the storage is freed. Tensors alive at the start (parameters, gradients,
    optimizer state) are registered up front, so `peak` is the most tensor memory a step held at once:
    what `torch.cuda.max_memory_allocated` reports on a GPU, without the allocator's rounding. Scratch
    buffers inside a kernel and tensors a compiled graph allocates itself are not seen.

    With `limit` set, the op that takes the total over it raises `MemoryLimitExceeded`, as an
    allocation on a device of that size would fail.
    """

    def __init__(self, already_alive: list[torch.Tensor], limit: Optional[int] = None):
        super().__init__()
        self.limit = limit
        self.alive = 0
        self.peak = 0
        self._finalizers: dict[int, weakref.finalize] = {}
        for tensor in already_alive:
            self._add(tensor, check=False)
        self.at_start = self.alive

    def _freed(self, key: int, size: int) -> None:
        self.alive -= size
        self._finalizers.pop(key, None)

    def _add(self, tensor: torch.Tensor, check: bool = True) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested)
            return
        key = storage._cdata
        if key in self._finalizers:
            return
        size = storage.nbytes()
        self._finalizers[key] = weakref.finalize(storage, self._freed, key, size)
        self.alive += size
        self.peak = max(self.peak, self.alive)
        if check and self.limit is not None and self.alive > self.limit:
            raise MemoryLimitExceeded(
                f"gptlab bench: simulated out of memory: {self.alive:,} tensor bytes alive, limit {self.limit:,}"
            )

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        outputs = func(*args, **(kwargs or {}))
        for value in tree_flatten(outputs)[0]:
            if isinstance(value, torch.Tensor):
                self._add(value)
        return outputs

    def __exit__(self, *exc_info):
        for finalizer in self._finalizers.values():
            finalizer.detach()
        self._finalizers.clear()
        return super().__exit__(*exc_info)


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory, the CPU allocator failing, or the simulated limit."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryLimitExceeded)):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in message
        for marker in ("out of memory", "can't allocate", "not enough memory", "simulated out of memory")
    )


def minor_page_faults() -> Optional[int]:
    """Minor page faults of this process so far (None where `resource` is missing). Many per step on a CPU
    mean freed memory goes back to the kernel and is faulted in again (see gptlab.train.host)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def available_host_memory() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else total physical memory, else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str, option: str = "--memory-limit-bytes") -> int:
    """'40GB', '38GiB', '500000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS or float(match.group(1)) * _SIZE_UNITS[unit] < 1:
        raise UserError(
            f"{option} {text}: expected a positive number of bytes, optionally with a unit (KB, MB, GB, KiB, MiB, GiB), e.g. 40GB"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_bytes(count: Optional[int]) -> str:
    if count is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"
