"""Fully sharded training (FSDP2) and activation checkpointing, applied to a built GPT from the training side.

`fully_shard` is applied to each transformer block (`model.h[i]`) and then to the root, so that only about
two blocks' full weights exist at once on a rank; weights, gradients and AdamW state are each split across
the ranks. Checkpoints stay what users read: the full weights are gathered to rank 0
(`torch.distributed.checkpoint.state_dict` with full_state_dict and cpu_offload), so a checkpoint of a
sharded run holds the same book-layout model.safetensors; its resume state (weights and AdamW state) is
written sharded, each rank its own part, by runtime.checkpoint.save_sharded_resume_state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from gptlab.model import GPT
from gptlab.runtime.precision import Precision

_MIXED_PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def checkpoint_activations(model: GPT) -> None:
    """Each block keeps only its input in the forward pass and recomputes itself in the backward pass.

    The block's own forward is replaced on the instance, so parameter names (and checkpoints) do not change.
    """
    for block in model.h:
        forward = block.forward

        def recomputed(x: torch.Tensor, forward=forward) -> torch.Tensor:
            if not torch.is_grad_enabled():  # validation and generation keep nothing to recompute
                return forward(x)
            return checkpoint(forward, x, use_reentrant=False)

        block.forward = recomputed


def shard(model: GPT, precision_name: str) -> GPT:
    """FSDP2 per block, then the root (embeddings, final LayerNorm and head); in place, returns the model.

    bf16/fp16 gather the weights in that type for the matmuls and reduce gradients in float32; the
    sharded float32 weights stay the master copy the optimizer updates.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = _MIXED_PRECISION_DTYPES.get(precision_name)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    for block in model.h:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def with_sharded_scaler(precision: Precision) -> Precision:
    """fp16 under FSDP: a rank sees only its gradient shards, so ShardedGradScaler all-reduces `found inf` in
    unscale_; every rank then lowers its scale together (the step's skip is already decided on the global norm)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    return dataclasses.replace(precision, scaler=ShardedGradScaler(precision.device.type))


def is_sharded(model: torch.nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def global_grad_norm(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """The L2 norm over every rank's gradient shards (one all-reduce of the local squared norm); inf/NaN propagate."""
    grads = [_local(p.grad) for p in parameters if p.grad is not None]
    local = torch.zeros((), dtype=torch.float32)
    if grads:
        local = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0).float()
    squared = local.square()
    dist.all_reduce(squared, op=dist.ReduceOp.SUM)
    return squared.sqrt()


@torch.no_grad()
def clip_to_norm(parameters: list[torch.nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale each rank's gradient shards so the global norm is at most max_norm (the coefficient clamped to 1)."""
    grads = [_local(p.grad) for p in parameters if p.grad is not None]
    if grads:
        coefficient = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coefficient.to(grads[0].device))


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gathered_model(model: GPT, rank: int) -> Optional[GPT]:
    """A collective: the full weights in a plain CPU GPT on rank 0 (for the existing checkpoint writer), None elsewhere."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_full_options())
    if rank != 0:
        return None
    plain = plain_model(model)
    plain.load_state_dict(full)
    return plain


def plain_model(model: GPT) -> GPT:
    """An unsharded CPU GPT of the same shape (the padded vocabulary as its own multiple gives the same rows)."""
    return GPT(model.config, vocab_multiple=model.padded_vocab_size)


# Resuming a checkpoint a sharded run wrote before its resume state was sharded (optimizer.pt held it whole).
def load_full_weights(model: GPT, plain: GPT) -> None:
    """Every rank loads its shards from a plain model holding the full weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, plain.state_dict(), options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(model: GPT, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
