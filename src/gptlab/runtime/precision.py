"""Numerics of a training step: autocast, the fp16 gradient scaler, matmul precision, and the fused
gradient check that finds the global norm and any inf/NaN with a single reduction."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from gptlab.config import TrainConfig
from gptlab.cpu_kernels import cpu_flags, cpu_matmul, onednn_for, onednn_linear
from gptlab.errors import UserError
from gptlab.files import atomic_write_json, user_cache_dir
from gptlab.rundir import TRAIN_FILE

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Precision:
    name: str  # fp32 | tf32 | fp16 | bf16
    device: torch.device
    scaler: Optional[torch.amp.GradScaler]

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return _AUTOCAST_DTYPES.get(self.name)

    def autocast(self):
        """The one context every forward pass runs under."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


# CPU flags that mean bf16 matmuls run in hardware (x86: AVX512-BF16 or AMX; Arm: the BF16 extension).
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# bf16 must beat fp32 by this factor to be chosen: a tie is not worth bf16's coarser rounding.
BF16_MIN_SPEEDUP = 1.15


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in, and why: printed in the header and recorded in the summary."""

    name: str
    reason: str
    per_machine: bool = False  # decided by this machine's hardware or timing: ranks on different machines may disagree


def bf16_matmul_speedup(width: int, rows: int = 128, repeats: int = 5) -> float:
    """fp32 time / bf16 time of a (rows x width) @ (width x 4 width) matmul, the shape of a block's MLP.

    The width is held between 256 (large enough to time) and 512 (small enough to stay about a second
    where bf16 is emulated, which can be 5-60x slower). After one untimed call each (kernel selection,
    buffers), stops at one bf16 product when that alone is three times slower than fp32.
    """
    width = min(max(width, 256), 512)
    generator = torch.Generator().manual_seed(0)
    a32 = torch.randn(rows, width, generator=generator)
    b32 = torch.randn(width, 4 * width, generator=generator)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    # each dtype on the kernel the model's linear layers use for it (gptlab.cpu_kernels), so that neither is timed on
    # a slower kernel than training would run
    weight32, weight16 = b32.t().contiguous(), b16.t().contiguous()  # oneDNN's weight is (out, in)

    def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if onednn_for(a.dtype):
            return onednn_linear(a, weight32 if a.dtype == torch.float32 else weight16)
        return torch.mm(a, b)

    def best_of(a: torch.Tensor, b: torch.Tensor, count: int) -> float:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            product(a, b)
            times.append(time.perf_counter() - start)
        return min(times)

    best_of(a32, b32, 1)
    fp32_seconds = best_of(a32, b32, repeats)
    best_of(a16, b16, 1)
    bf16_seconds = best_of(a16, b16, 1)
    if bf16_seconds < 3 * fp32_seconds:
        bf16_seconds = min(bf16_seconds, best_of(a16, b16, repeats))
    return fp32_seconds / max(bf16_seconds, 1e-9)


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor()
    return next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")), "")


def speedup_cache_file(width: int) -> Path:
    """Where the bf16 speedup measured on this machine is kept: one file per CPU model and flags, torch version,
    oneDNN ISA limit and probe width, under $XDG_CACHE_HOME/gptlab/precision (default ~/.cache)."""
    identity = {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "flags": sorted(cpu_flags() or ()),
        "torch": torch.__version__,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "cpu_matmul": cpu_matmul()[0],
        "width": min(max(width, 256), 512),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return user_cache_dir("precision") / f"bf16-speedup-{key}.json"


def bf16_speedup_once_per_machine(width: int) -> float:
    """bf16_matmul_speedup, measured once per machine and torch version and then read from the cache, so every run
    (every seed of an experiment) on this machine gets the same answer, however loaded the machine is."""
    path = speedup_cache_file(width)
    try:
        return float(json.loads(path.read_text())["speedup"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    speedup = bf16_matmul_speedup(width)
    try:
        atomic_write_json(path, {"speedup": speedup, "torch": torch.__version__, "cpu": _cpu_model()})
    except OSError:
        pass  # a read-only cache: measured each time, as before
    return speedup


def choose_cpu_precision(
    width: int, flags: Optional[set[str]] = None, measure=bf16_speedup_once_per_machine
) -> PrecisionChoice:
    """fp32, or bf16 where the CPU has native bf16 and a matmul of the model's width measures faster in it (by default
    measured once per machine and torch version, then cached: see speedup_cache_file)."""
    flags = cpu_flags() if flags is None else flags
    machine = platform.machine()
    if flags is not None and not flags & set(NATIVE_BF16_CPU_FLAGS):
        return PrecisionChoice(
            "fp32",
            f"this {machine} CPU has no native bf16 (no {'/'.join(NATIVE_BF16_CPU_FLAGS[:2])} flag), "
            "where bf16 is emulated and several times slower",
            True,
        )
    speedup = measure(width)
    cached = (
        f"; measured once for this CPU and torch {torch.__version__}, kept in {speedup_cache_file(width)}"
        if measure is bf16_speedup_once_per_machine
        else ""
    )
    if speedup >= BF16_MIN_SPEEDUP:
        return PrecisionChoice(
            "bf16",
            f"this CPU has native bf16 and an MLP-shaped matmul measured {speedup:.1f}x faster in bf16 than in fp32"
            + cached,
            True,
        )
    return PrecisionChoice(
        "fp32",
        (
            f"an MLP-shaped matmul measured {1 / speedup:.1f}x slower in bf16 than in fp32 on this CPU "
            f"(bf16 is chosen only when at least {BF16_MIN_SPEEDUP}x faster)"
            if speedup < 1
            else f"an MLP-shaped matmul measured only {speedup:.2f}x faster in bf16 than in fp32 on this CPU "
            f"(bf16 is chosen when at least {BF16_MIN_SPEEDUP}x faster)"
        )
        + cached,
        True,
    )


def choose_precision(train: TrainConfig, device: torch.device, width: int) -> PrecisionChoice:
    """Resolve train.json's precision for this device: explicit values as given, 'auto' and CPU defaults by measurement."""
    if train.precision == "auto" or (train.precision_is_default and device.type == "cpu"):
        asked = "precision 'auto'" if train.precision == "auto" else "no precision or use_amp given"
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return PrecisionChoice("bf16", f"{asked}: this GPU supports bf16", True)
            return PrecisionChoice("fp16", f"{asked}: this GPU has no bf16, so fp16 with a gradient scaler", True)
        choice = choose_cpu_precision(width)
        return PrecisionChoice(choice.name, f"{asked}: {choice.reason}", True)
    if train.precision is not None:
        reason = "train.json: precision"
    elif train.use_amp is not None:
        reason = f"train.json: use_amp {str(train.use_amp).lower()}"
    else:
        reason = "use_amp absent means true in the ddp-base-model-from-scratch harness"
    if train.effective_precision == "fp16" and device.type == "cpu":
        reason += (
            "; warning: fp16 autocast on a CPU is several times slower than fp32 (no fp16 matmul units): "
            "set precision 'auto' to get the faster of fp32 and bf16"
        )
    return PrecisionChoice(train.effective_precision, reason)


def configure_precision(name: str, device: torch.device, source: str = TRAIN_FILE) -> Precision:
    """Set process-wide matmul precision for `name` and build the scaler fp16 needs."""
    if name == "fp16" and device.type == "cpu" and not torch.amp.is_autocast_available("cpu"):
        raise UserError(
            f"{source}: precision: fp16 autocast is not supported on this CPU build of torch; use 'bf16' or 'fp32'"
        )
    # 'highest' keeps float32 matmuls in true float32; 'high' allows TF32 on GPUs that have it.
    torch.set_float32_matmul_precision("highest" if name == "fp32" else "high")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = name != "fp32"
        torch.backends.cudnn.allow_tf32 = name != "fp32"
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name=name, device=device, scaler=scaler)


def global_grad_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """L2 norm over every gradient, as a 0-d tensor on the device; inf or NaN if any gradient holds one.

    One fused per-tensor norm pass and one stack, no host synchronisation: the caller reads it back
    once, together with the loss, to decide whether to step.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    per_tensor = torch._foreach_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack(per_tensor), 2.0)


def clip_to_norm(parameters: list[torch.nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale gradients so their global norm is at most `max_norm`, reusing the norm already computed."""
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=True)
