"""Output head and cross-entropy in one step, a chunk of tokens at a time.

The plain path materialises batch x context x vocab logits, a float32 copy of them for the loss, and
the same again for their gradient: for GPT-2 small at microbatch 12 that is several GB, and on a CPU
the log-softmax over it was a third of the step. Here each chunk's logits live only while that chunk
is processed: the loss and the gradients with respect to the hidden states and the head's weight are
computed in the forward pass (the softmax is already at hand there) and handed back in backward.

Numerics match `F.cross_entropy(hidden @ weight.T, targets)`: the matmul runs in the autocast dtype
when autocast is on (as the plain path's would), the softmax and the loss in float32.
"""

from __future__ import annotations

from typing import Optional

import torch

from gptlab.cpu_kernels import onednn_for, onednn_linear

# Tokens per chunk: keeps a chunk's float32 logits around 50 MB for the GPT-2 vocabulary.
DEFAULT_CHUNK_TOKENS = 256


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(tensor.device.type):
        return torch.get_autocast_dtype(tensor.device.type)
    return tensor.dtype


def _on_onednn(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a product of these CPU tensors runs on oneDNN (where gptlab.cpu_kernels chose it); elsewhere torch's."""
    return a.device.type == "cpu" and a.dtype == b.dtype and min(a.shape) > 0 and onednn_for(a.dtype)


def _matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T."""
    return onednn_linear(a, b) if _on_onednn(a, b) else a @ b.T


def _grad_weight(grad_logits: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """grad_logits^T @ chunk, (V, C); on oneDNN as (chunk^T @ grad_logits)^T, since oneDNN copies a transposed
    first operand and chunk (n, C) is the narrow one."""
    if _on_onednn(grad_logits, chunk):
        return onednn_linear(chunk.T, grad_logits.T).T
    return grad_logits.T @ chunk


def _masked_logits(hidden_chunk: torch.Tensor, weight: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(n, C) @ (V_padded, C)^T in the compute dtype, then float32, padded columns set to -inf."""
    logits = _matmul_nt(hidden_chunk, weight).float()  # (n, V_padded)
    if logits.shape[1] > vocab_size:
        logits[:, vocab_size:] = float("-inf")  # padding rows of the head never win and never enter the loss
    return logits


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        vocab_size: int,
        chunk_tokens: int,
        compute_dtype: torch.dtype,
    ) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            count = hidden.shape[0]
            compute_weight = weight.to(compute_dtype)
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, count, chunk_tokens):
                stop = min(start + chunk_tokens, count)
                chunk = hidden[start:stop].to(compute_dtype)
                chunk_targets = targets[start:stop]
                logits = _masked_logits(chunk, compute_weight, vocab_size)
                log_normaliser = torch.logsumexp(logits, dim=1)  # (n,)
                loss_sum += (log_normaliser - logits.gather(1, chunk_targets[:, None]).squeeze(1)).sum()
                # d(mean loss)/d(logits) = (softmax - one_hot(target)) / count, built in place over the logits.
                probabilities = logits.sub_(log_normaliser[:, None]).exp_()
                probabilities[torch.arange(stop - start, device=hidden.device), chunk_targets] -= 1.0
                grad_logits = probabilities.div_(count).to(compute_dtype)  # (n, V_padded)
                grad_hidden[start:stop] = (
                    onednn_linear(grad_logits, compute_weight.T)
                    if _on_onednn(grad_logits, compute_weight)
                    else grad_logits @ compute_weight
                )
                grad_weight += _grad_weight(grad_logits, chunk).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss_sum / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_loss.to(grad_hidden.dtype),
            (grad_weight * grad_loss).to(ctx.weight_dtype),
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: Optional[int] = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, never holding all the logits.

    hidden: (N, C); weight: (V_padded, C); targets: (N,) ids below vocab_size (default: all rows of weight).
    Without gradients (evaluation) only the loss is computed, chunk by chunk.
    """
    vocab_size = weight.shape[0] if vocab_size is None else vocab_size
    compute_dtype = _compute_dtype(hidden)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, vocab_size, chunk_tokens, compute_dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        compute_weight = weight.to(compute_dtype)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            logits = _masked_logits(hidden[start : start + chunk_tokens].to(compute_dtype), compute_weight, vocab_size)
            picked = logits.gather(1, targets[start : start + chunk_tokens, None]).squeeze(1)
            loss_sum += (torch.logsumexp(logits, dim=1) - picked).sum()
        return loss_sum / hidden.shape[0]
