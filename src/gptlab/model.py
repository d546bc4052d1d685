"""The GPT-2 model of "Build a Large Language Model (from Scratch)", as one plain nn.Module.

Inside, names follow Hugging Face's GPT-2 (`wte`, `h.{i}.attn.c_attn`, `ln_f`, ...) and Q, K and V are
computed by one fused matmul; at the file boundary `gptlab.weights` converts to and from the book's
`GPTModel` layout. This file knows nothing of devices, precision, ranks or files. With model.json's `moe`
each block's MLP is a mixture of experts (gptlab.model_moe, with its CPU kernel and routing statistics).

Shapes: B = batch, T = sequence length, C = emb_dim, H = n_heads, D = head_dim = C / H, V = vocab_size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.config import ModelConfig
from gptlab.cpu_kernels import linear
from gptlab.linear_cross_entropy import linear_cross_entropy
from gptlab.model_moe import MixtureOfExperts

LAYER_NORM_EPS = 1e-5  # the book's LayerNorm epsilon


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.drop_rate = config.drop_rate
        # One (C -> 3C) matmul instead of three (C -> C): rows [0:C] are the book's W_query, [C:2C] W_key, [2C:3C] W_value.
        self.c_attn = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.emb_dim, config.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, width = x.shape
        query, key, value = linear(x, self.c_attn.weight, self.c_attn.bias).split(width, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, H, T, D)
        query = query.view(batch, seq_len, self.n_heads, -1).transpose(1, 2)
        key = key.view(batch, seq_len, self.n_heads, -1).transpose(1, 2)
        value = value.view(batch, seq_len, self.n_heads, -1).transpose(1, 2)
        # is_causal lets the kernel skip the masked half instead of materialising a T x T mask.
        attended = F.scaled_dot_product_attention(
            query, key, value, is_causal=True, dropout_p=self.drop_rate if self.training else 0.0
        )  # (B, H, T, D)
        attended = attended.transpose(1, 2).reshape(batch, seq_len, width)  # (B, T, C)
        return linear(attended, self.c_proj.weight, self.c_proj.bias)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.emb_dim, 4 * config.emb_dim)
        self.c_proj = nn.Linear(4 * config.emb_dim, config.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(linear(x, self.c_fc.weight, self.c_fc.bias), approximate="tanh")
        return linear(hidden, self.c_proj.weight, self.c_proj.bias)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention then MLP (or a mixture of expert MLPs), each on a residual branch."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.emb_dim, eps=LAYER_NORM_EPS)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.emb_dim, eps=LAYER_NORM_EPS)
        self.mlp = MixtureOfExperts(config, expert=MLP) if config.moe is not None else MLP(config)
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(the block's output, its experts' router loss: None without experts or when not asked for)."""
        x = x + self.drop(self.attn(self.ln_1(x)))
        if isinstance(self.mlp, MixtureOfExperts):
            mixed, router_loss = self.mlp(self.ln_2(x), with_router_loss=True)
            return x + self.drop(mixed), router_loss
        return x + self.drop(self.mlp(self.ln_2(x))), None


@dataclass(frozen=True)
class ParameterCounts:
    """`total`: every parameter stored (weights, gradients and optimizer state scale with it); `matmul`:
    weights that take part in a matmul for each token (FLOPs scale with it, gptlab/flops.py). A block whose
    tokens use only part of its weights (mixture of experts) makes the two differ beyond the embeddings."""

    total: int
    matmul: int


def parameter_counts(config: ModelConfig, vocab_multiple: int = 1) -> ParameterCounts:
    """The one place FLOPs and memory estimates take parameter counts from, computed from the config (a test
    checks them against a built GPT). `vocab_multiple` pads the embedding and head rows as GPT does; the
    padding is stored, so it counts in `total`, never in `matmul`.

    matmul: per block Q, K, V and the attention output (4 C^2) and the MLP (8 C^2), plus the output head
    (V x C). Position embeddings and an untied token embedding are look-ups, not matmuls; a tied model's
    shared matrix counts once, as the head. Biases and LayerNorms (about 0.1% of GPT-2 small) are additions.
    With mixture-of-experts blocks `total` holds every expert and the router (C x E, no bias), and `matmul`
    only the router and num_active_experts experts' MLPs, since a token passes through no other expert.
    """
    width, layers = config.emb_dim, config.n_layers
    padded_vocab = -(-config.vocab_size // vocab_multiple) * vocab_multiple
    attention = width * 3 * width + (3 * width if config.qkv_bias else 0) + width * width + width
    mlp = width * 4 * width + 4 * width + 4 * width * width + width
    mlp_matmul = 8 * width * width
    if config.moe is not None:
        router = width * config.moe.num_experts
        mlp = config.moe.num_experts * mlp + router
        mlp_matmul = config.moe.num_active_experts * mlp_matmul + router
    layer_norms = 2 * 2 * width
    embeddings = padded_vocab * width + config.context_length * width
    head = 0 if config.tie_weights else padded_vocab * width
    total = embeddings + layers * (attention + mlp + layer_norms) + 2 * width + head
    return ParameterCounts(total=total, matmul=layers * (4 * width * width + mlp_matmul) + config.vocab_size * width)


class GPT(nn.Module):
    """`vocab_multiple` pads the embedding and head rows to a multiple (64 suits GPU matmuls); the padding
    rows are never looked up, their logits are -inf, and checkpoints hold only `vocab_size` rows.
    `fused_loss` computes head and cross-entropy a chunk at a time (see linear_cross_entropy.py)."""

    def __init__(self, config: ModelConfig, vocab_multiple: int = 1, fused_loss: bool = False):
        super().__init__()
        self.config = config
        self.padded_vocab_size = -(-config.vocab_size // vocab_multiple) * vocab_multiple
        self.fused_loss = fused_loss
        self.wte = nn.Embedding(self.padded_vocab_size, config.emb_dim)
        self.wpe = nn.Embedding(config.context_length, config.emb_dim)
        self.drop = nn.Dropout(config.drop_rate)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.emb_dim, eps=LAYER_NORM_EPS)
        self.lm_head = nn.Linear(config.emb_dim, self.padded_vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight

    def forward(
        self, token_ids: torch.Tensor, targets: torch.Tensor | None = None, with_router_loss: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, T) token ids -> (B, T, V) logits; with (B, T) targets -> the mean cross-entropy instead.

        `with_router_loss`: (that, the experts' weighted load-balancing and z-losses summed over blocks), the
        second None without experts, outside training or when both coefficients are 0; training adds it to
        the loss it backpropagates."""
        output, router_loss = self._forward(token_ids, targets)
        return (output, router_loss) if with_router_loss else output

    def _forward(
        self, token_ids: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        seq_len = token_ids.shape[1]
        if seq_len > self.config.context_length:
            raise ValueError(f"sequence of {seq_len} tokens is longer than context_length {self.config.context_length}")
        positions = torch.arange(seq_len, device=token_ids.device)
        x = self.drop(self.wte(token_ids) + self.wpe(positions))  # (B, T, C)
        router_losses = []
        for block in self.h:
            x, router_loss = block(x)
            if router_loss is not None:
                router_losses.append(router_loss)
        router_loss = torch.stack(router_losses).sum() if router_losses else None
        return self._head(self.ln_f(x), targets), router_loss

    def _head(self, hidden: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """(B, T, C) final hidden states -> logits, or the mean cross-entropy against targets."""
        vocab_size = self.config.vocab_size
        if targets is None:
            return linear(hidden, self.lm_head.weight)[..., :vocab_size]  # (B, T, V): padding columns cut off
        if self.fused_loss:
            return linear_cross_entropy(hidden.flatten(0, 1), self.lm_head.weight, targets.flatten(), vocab_size)
        logits = linear(hidden, self.lm_head.weight)  # (B, T, V_padded)
        if self.padded_vocab_size > vocab_size:
            logits[..., vocab_size:] = float("-inf")
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def parameter_count(self) -> int:
        """Distinct trainable parameters of the architecture (a tied head counted once, padding rows not at all)."""
        padding = (
            (self.padded_vocab_size - self.config.vocab_size)
            * self.config.emb_dim
            * (1 if self.config.tie_weights else 2)
        )
        return sum(p.numel() for p in self.parameters()) - padding

    def active_parameter_count(self) -> int:
        """Parameters a token passes through: with experts, only num_active_experts of each block's experts count."""
        moe = self.config.moe
        if moe is None:
            return self.parameter_count()
        per_expert = sum(p.numel() for p in self.h[0].mlp.experts[0].parameters())
        return self.parameter_count() - self.config.n_layers * (moe.num_experts - moe.num_active_experts) * per_expert

    def _experts(self) -> list[MixtureOfExperts]:
        return [block.mlp for block in self.h if isinstance(block.mlp, MixtureOfExperts)]

    def take_routing_totals(self) -> torch.Tensor | None:
        """(n_layers, ROUTING_ROWS E + ROUTING_SCALARS) statistics summed since the last call, on the device; None without experts."""
        layers = self._experts()
        return torch.stack([layer.take_routing_totals() for layer in layers]) if layers else None

    @torch.no_grad()
    def init_gpt2(self, generator: torch.Generator | None = None) -> None:
        """GPT-2's initialisation: normal(0, 0.02) weights and embeddings, zero biases, unit LayerNorms,
        and the two projections that write into the residual stream scaled by 1/sqrt(2 * n_layers)."""
        std = 0.02
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual_projection = name.endswith("c_proj")
                module.weight.normal_(0.0, residual_std if is_residual_projection else std, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std, generator=generator)
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        self.wte.weight[self.config.vocab_size :].zero_()
        self.lm_head.weight[self.config.vocab_size :].zero_()
