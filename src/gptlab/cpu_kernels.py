"""The matmul kernel of the model's linear layers on the CPU: torch's (MKL's sgemm in float32) or oneDNN's
inner product, chosen once per process from the CPU's flags, in `cpu_matmul()`: oneDNN for float32 where the
CPU has AVX-512, and for bf16 too where it also has native bf16 (avx512_bf16 or AMX), torch's matmul elsewhere.

Why: on AVX-512 CPUs oneDNN's float32 kernels run this lab's shapes at about twice MKL's speed (an AMD EPYC
here; MKL, tuned for Intel, reaches about half of its peak there), while with AVX2 only they measured no
faster (docs/performance.md, benchmarks/cpu_kernels.py). The function is that of `F.linear` and its autograd
backward; only the kernel differs. `linear` takes the oneDNN path only for CPU tensors outside
torch.compile, in float32 or under a CPU bf16 autocast; everything else (GPUs, float64, fp16) runs
`F.linear` as before.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

ONEDNN, ONEDNN_FP32, TORCH = "onednn", "onednn-fp32", "torch"  # float32 and bf16 / float32 only / neither
# oneDNN's "avx512_core" level, which its float32 and bf16 inner products need (Xeon Phi's AVX-512 lacks bw/dq/vl)
AVX512_CORE = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})  # oneDNN's bf16 inner product has no emulation without them


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[set[str]]:
    """The CPU's feature flags as Linux reports them; None where they cannot be read (macOS, Windows)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 says "flags", Arm says "Features"
            flags.update(value.split())
    return flags or None


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN's inner product (no autograd), on strided tensors as they are."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def choose_cpu_matmul(
    cpuinfo: Path = Path("/proc/cpuinfo"), available: Optional[bool] = None, isa_limit: Optional[str] = None
) -> tuple[str, str]:
    """(ONEDNN, ONEDNN_FP32 or TORCH, why), from the CPU's flags: oneDNN where the CPU has AVX-512, for bf16 too
    where it has native bf16 (oneDNN's bf16 inner product needs it), torch's matmul elsewhere. `isa_limit`:
    oneDNN's ONEDNN_MAX_CPU_ISA (default: the environment's), which can hold it below what the CPU has."""
    available = onednn_linear_available() if available is None else available
    if not available:
        return TORCH, "this torch has no oneDNN linear kernel"
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return TORCH, "the CPU's flags cannot be read here"
    limit = (os.environ.get("ONEDNN_MAX_CPU_ISA", "") if isa_limit is None else isa_limit).upper()
    if not AVX512_CORE <= flags:
        return TORCH, "the CPU has no AVX-512; with AVX2 only oneDNN measured no faster than torch's matmul"
    if limit and limit != "ALL" and not limit.startswith(("AVX512", "AVX10")):
        return TORCH, f"ONEDNN_MAX_CPU_ISA={limit} holds oneDNN below AVX-512"
    why = "the CPU has AVX-512, where oneDNN's float32 kernels measured about 2x MKL's sgemm"
    if flags & NATIVE_BF16 and limit not in ("AVX512_CORE", "AVX512_CORE_VNNI"):
        return ONEDNN, why + ", and native bf16"
    return ONEDNN_FP32, why + (
        "; bf16 stays on torch's matmul (oneDNN's bf16 inner product needs native bf16"
        + (f", which ONEDNN_MAX_CPU_ISA={limit} holds it below)" if flags & NATIVE_BF16 else ", which this CPU lacks)")
    )


_chosen: Optional[tuple[str, str]] = None


def cpu_matmul() -> tuple[str, str]:
    """The kernel this process's linear layers use on the CPU, and why (chosen on first use, then kept)."""
    global _chosen
    if _chosen is None:
        _chosen = choose_cpu_matmul()
    return _chosen


def onednn_for(dtype: torch.dtype) -> bool:
    """Whether a CPU matmul in `dtype` runs on oneDNN in this process."""
    kernel = cpu_matmul()[0]
    return (kernel == ONEDNN and dtype in (torch.float32, torch.bfloat16)) or (
        kernel == ONEDNN_FP32 and dtype == torch.float32
    )


@contextlib.contextmanager
def using_cpu_matmul(kernel: str) -> Iterator[None]:
    """Within the block, linear layers use `kernel` (ONEDNN, ONEDNN_FP32 or TORCH) on the CPU: for tests and
    benchmarks."""
    global _chosen
    if kernel not in (ONEDNN, ONEDNN_FP32, TORCH):
        raise ValueError(f"kernel {kernel!r}: expected {ONEDNN!r}, {ONEDNN_FP32!r} or {TORCH!r}")
    if kernel != TORCH and not onednn_linear_available():
        raise RuntimeError("this torch has no oneDNN linear kernel")
    before = cpu_matmul()
    _chosen = (kernel, "asked for")
    try:
        yield
    finally:
        _chosen = before


class _OneDNNLinear(torch.autograd.Function):
    """rows @ weight.T + bias for 2-D rows, forward and backward on oneDNN's inner product, in the tensors' own
    dtype. `linear` reshapes around it, so its output is no view made inside the Function (which autograd
    would forbid modifying in place, as the padded head's logits are)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(rows, weight, bias)  # (n, out)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rows, weight = ctx.saved_tensors
        grad_rows = grad_out.contiguous()  # (n, out)
        grad_x = grad_weight = grad_bias = None
        if rows.shape[0] == 0:  # oneDNN refuses an empty inner dimension; the gradients are zero
            grad_x = torch.zeros_like(rows) if ctx.needs_input_grad[0] else None
            grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
            grad_bias = weight.new_zeros(weight.shape[0]) if ctx.has_bias and ctx.needs_input_grad[2] else None
            return grad_x, grad_weight, grad_bias
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(grad_rows, weight.t())  # (n, in) = grad @ weight
        if ctx.needs_input_grad[1]:
            # grad^T @ x, (out, in). oneDNN copies a transposed first operand into rows (the second it reads in
            # place), so the narrower of grad and x goes first: for the head, x (n, C) rather than grad (n, V).
            if weight.shape[0] >= weight.shape[1]:
                grad_weight = onednn_linear(rows.t(), grad_rows.t()).t().contiguous()
            else:
                grad_weight = onednn_linear(grad_rows.t(), rows.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


def _onednn_apply(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    out = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias), on oneDNN's kernel where `cpu_matmul()` chose it and the tensors suit it.

    Under a CPU bf16 autocast the operands are cast to bf16 first, as autocast casts them for F.linear (the
    gradients flow back through the casts to the float32 weights the same way)."""
    if x.device.type != "cpu" or torch.compiler.is_compiling() or cpu_matmul()[0] == TORCH:
        return F.linear(x, weight, bias)
    if torch.is_autocast_enabled("cpu"):
        if torch.get_autocast_dtype("cpu") != torch.bfloat16 or not onednn_for(torch.bfloat16):
            return F.linear(x, weight, bias)
        with torch.autocast("cpu", enabled=False):
            return _onednn_apply(
                x.to(torch.bfloat16), weight.to(torch.bfloat16), None if bias is None else bias.to(torch.bfloat16)
            )
    if x.dtype == weight.dtype and onednn_for(x.dtype) and x.shape[-1] > 0:
        return _onednn_apply(x, weight, bias)
    return F.linear(x, weight, bias)
