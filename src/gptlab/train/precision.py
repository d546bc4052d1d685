"""Numerics of a training step: autocast, the fp16 gradient scaler, matmul precision, and the fused
gradient check that finds the global norm and any inf/NaN with a single reduction."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from gptlab.errors import UserError

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


def configure_precision(name: str, device: torch.device, source: str = "train.json") -> Precision:
    """Set process-wide matmul precision for `name` and build the scaler fp16 needs."""
    if name == "fp16" and device.type == "cpu" and not torch.amp.is_autocast_available("cpu"):
        raise UserError(f"{source}: precision: fp16 autocast is not supported on this CPU build of torch; use 'bf16' or 'fp32'")
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

