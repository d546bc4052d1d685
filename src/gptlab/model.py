"""The GPT-2 model of "Build a Large Language Model (from Scratch)", as one plain nn.Module.

Inside, names follow Hugging Face's GPT-2 (`wte`, `h.{i}.attn.c_attn`, `ln_f`, ...) and Q, K and V are
computed by one fused matmul; at the file boundary `gptlab.weights` converts to and from the book's
`GPTModel` layout. This file knows nothing of devices, precision, ranks or files (beyond one kernel choice:
mixture-of-experts experts in float32 on the CPU run their matmuls on oneDNN).

Shapes: B = batch, T = sequence length, C = emb_dim, H = n_heads, D = head_dim = C / H, V = vocab_size;
for mixture-of-experts blocks N = B x T tokens, E = num_experts, K = num_active_experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.config import ModelConfig
from gptlab.linear_cross_entropy import linear_cross_entropy

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
        query, key, value = self.c_attn(x).split(width, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, H, T, D)
        query = query.view(batch, seq_len, self.n_heads, -1).transpose(1, 2)
        key = key.view(batch, seq_len, self.n_heads, -1).transpose(1, 2)
        value = value.view(batch, seq_len, self.n_heads, -1).transpose(1, 2)
        # is_causal lets the kernel skip the masked half instead of materialising a T x T mask.
        attended = F.scaled_dot_product_attention(
            query, key, value, is_causal=True, dropout_p=self.drop_rate if self.training else 0.0
        )  # (B, H, T, D)
        attended = attended.transpose(1, 2).reshape(batch, seq_len, width)  # (B, T, C)
        return self.c_proj(attended)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.emb_dim, 4 * config.emb_dim)
        self.c_proj = nn.Linear(4 * config.emb_dim, config.emb_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN's inner product (no autograd), on strided tensors as they are."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _OneDNNExpertMLP(torch.autograd.Function):
    """An expert's MLP, c_proj(gelu_tanh(c_fc(x))), forward and backward with oneDNN's float32 matmuls.

    Why: torch's float32 matmul on CPU is MKL's sgemm, which on this lab's AMD EPYC runs about half as fast as
    oneDNN's AVX-512 inner product (benchmarks/moe_layer.py, docs/performance.md); the function and FLOPs are
    those of `MLP.forward` and its autograd backward, only the kernel differs. Used for float32 CPU tensors
    outside autocast (see `MixtureOfExperts._expert`); everything else takes the plain `MLP`.
    """

    @staticmethod
    def forward(ctx, x, fc_weight, fc_bias, proj_weight, proj_bias):
        hidden = _onednn_linear(x, fc_weight, fc_bias)  # (n, 4C)
        activated = F.gelu(hidden, approximate="tanh")
        ctx.save_for_backward(x, hidden, activated, fc_weight, proj_weight)
        return _onednn_linear(activated, proj_weight, proj_bias)  # (n, C)

    @staticmethod
    def backward(ctx, grad_out):
        x, hidden, activated, fc_weight, proj_weight = ctx.saved_tensors
        if x.shape[0] == 0:  # no tokens: oneDNN refuses an empty inner dimension, and the gradients are zero
            return (
                torch.zeros_like(x),
                torch.zeros_like(fc_weight),
                hidden.new_zeros(hidden.shape[1]),
                torch.zeros_like(proj_weight),
                x.new_zeros(proj_weight.shape[0]),
            )
        grad_out = grad_out.contiguous()
        grad_proj_weight = _onednn_linear(grad_out.t(), activated.t())  # (C, 4C) = grad_out^T @ activated
        grad_activated = _onednn_linear(grad_out, proj_weight.t())  # (n, 4C) = grad_out @ proj_weight
        grad_hidden = torch.ops.aten.gelu_backward(grad_activated, hidden, approximate="tanh")
        grad_fc_weight = _onednn_linear(grad_hidden.t(), x.t())  # (4C, C) = grad_hidden^T @ x
        grad_x = _onednn_linear(grad_hidden, fc_weight.t()) if ctx.needs_input_grad[0] else None  # (n, C)
        return grad_x, grad_fc_weight, grad_hidden.sum(0), grad_proj_weight, grad_out.sum(0)


# Per expert, what MixtureOfExperts.routing_totals sums while training (rows of a (ROUTING_ROWS, E) tensor),
# and per block the scalars in its last column block: see `routing_statistics`.
ROUTING_ROWS = 3  # routing weight (softmax over all logits), kept top-k weight, routed token slots
ROUTING_SCALARS = 4  # router entropy, balance loss, z-loss (each summed over forwards), forwards


def _at_least_float32(values: torch.Tensor) -> torch.Tensor:
    """Softmaxes and router losses in float32 under a bf16 or fp16 autocast, in float64 when the model is."""
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


class MixtureOfExperts(nn.Module):
    """The users' mixture-of-experts feed-forward layer: router, top-K logits kept, softmax, weighted sum.

    Each token's K (token, expert) slots are sorted by expert, so each expert runs one matmul over all of
    its tokens and the results are added back with index_add_, instead of one boolean-mask gather per
    expert. An expert that gets no tokens still runs on an empty slice, so every expert's parameters
    receive a gradient (zero) in every step, as DDP requires without find_unused_parameters. On the CPU in
    float32 the experts' matmuls run on oneDNN (see _OneDNNExpertMLP).

    The split sizes are read back to the host once per layer and forward (a synchronisation on GPUs). Kept
    because the sync-free alternative, one grouped matmul with the offsets on the device, needs the experts'
    weights stacked into one (E, ...) tensor: copied every forward, or stored stacked behind state_dict hooks
    that keep the users' per-expert names; and on the CPU torch's grouped matmul is MKL-speed, about half of
    the oneDNN path's, so it would be a CUDA-only path that no CPU test exercises.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        moe = config.moe
        self.num_active = moe.num_active_experts
        self.aux_loss_coef, self.router_z_loss_coef = moe.aux_loss_coef, moe.router_z_loss_coef
        self.router = nn.Linear(config.emb_dim, moe.num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(config) for _ in range(moe.num_experts))
        # Routing statistics summed over training forwards since the last `take_routing_totals`; a plain
        # attribute, not a buffer, so DDP does not overwrite each rank's own counts with rank 0's.
        self.routing_totals: torch.Tensor | None = None
        self.router_loss: torch.Tensor | None = None  # the weighted balance and z-losses of the last training forward
        self.onednn_matmuls = _onednn_linear_available()  # a plain attribute: benchmarks turn it off to compare

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, width = x.shape
        tokens = x.reshape(-1, width)  # (N, C)
        logits = self.router(tokens)  # (N, E)
        # torch.topk keeps exactly K per token, also when the K-th largest logit is tied; a softmax over the kept
        # logits is the users' softmax over the logits with the others set to -inf.
        kept_logits, kept_experts = logits.topk(self.num_active, dim=-1)  # (N, K) each
        kept_weights = F.softmax(_at_least_float32(kept_logits), dim=-1).to(x.dtype)  # (N, K)

        slot_experts = kept_experts.flatten()  # (N K,): slot s is token s // K's choice s % K
        order = slot_experts.argsort(stable=True)  # slots grouped by expert, in token order within each
        slot_tokens = order // self.num_active  # (N K,) the token of each grouped slot
        tokens_per_expert = torch.bincount(slot_experts, minlength=len(self.experts))  # (E,)
        grouped = tokens.index_select(0, slot_tokens)  # (N K, C)
        outputs = torch.cat(
            [
                self._expert(expert, part)
                for expert, part in zip(self.experts, grouped.split(tokens_per_expert.tolist()))
            ]
        )
        weighted = outputs * kept_weights.flatten()[order].unsqueeze(1)  # (N K, C)
        mixed = torch.zeros_like(tokens).index_add_(0, slot_tokens, weighted)  # (N, C)

        if self.training:
            self._routing(logits, kept_experts, kept_weights, tokens_per_expert)
        return mixed.view(batch, seq_len, width)

    def _expert(self, expert: MLP, x: torch.Tensor) -> torch.Tensor:
        """expert(x), on oneDNN's matmuls for float32 on the CPU (see _OneDNNExpertMLP), else as written (and
        under torch.compile, which chooses its own kernels)."""
        if (
            self.onednn_matmuls
            and x.device.type == "cpu"
            and x.dtype == expert.c_fc.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
        ):
            return _OneDNNExpertMLP.apply(
                x, expert.c_fc.weight, expert.c_fc.bias, expert.c_proj.weight, expert.c_proj.bias
            )
        return expert(x)

    def _routing(
        self,
        logits: torch.Tensor,
        kept_experts: torch.Tensor,
        kept_weights: torch.Tensor,
        tokens_per_expert: torch.Tensor,
    ) -> None:
        """Sum this forward's routing statistics (no host synchronisation), and keep the router losses when asked for."""
        num_tokens, num_experts = logits.shape
        logits = _at_least_float32(logits)
        probabilities = F.softmax(logits, dim=-1)  # (N, E) over all logits
        routing_weight = probabilities.mean(0)  # (E,)
        slot_share = tokens_per_expert.to(logits.dtype) / (num_tokens * self.num_active)  # (E,) sums to 1
        balance_loss = num_experts * (slot_share * routing_weight).sum()  # Switch Transformer; 1 when balanced
        z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        self.router_loss = None
        if self.aux_loss_coef or self.router_z_loss_coef:
            self.router_loss = self.aux_loss_coef * balance_loss + self.router_z_loss_coef * z_loss
        with torch.no_grad():
            kept = (
                torch.zeros_like(probabilities).scatter_(1, kept_experts, kept_weights.to(logits.dtype)).mean(0)
            )  # (E,)
            entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-30))).sum(-1).mean()
            scalars = torch.stack([entropy, balance_loss.detach(), z_loss.detach(), torch.ones_like(entropy)])
            totals = torch.cat([torch.stack([routing_weight, kept, slot_share]).flatten(), scalars])
            self.routing_totals = totals if self.routing_totals is None else self.routing_totals + totals

    def take_routing_totals(self) -> torch.Tensor:
        """The summed statistics since the last call ((ROUTING_ROWS E + ROUTING_SCALARS,) on the device), then reset."""
        totals = self.routing_totals
        self.routing_totals = None
        if totals is None:
            totals = torch.zeros(ROUTING_ROWS * len(self.experts) + ROUTING_SCALARS, device=self.router.weight.device)
        return totals


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention then MLP (or a mixture of expert MLPs), each on a residual branch."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.emb_dim, eps=LAYER_NORM_EPS)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.emb_dim, eps=LAYER_NORM_EPS)
        self.mlp = MixtureOfExperts(config) if config.moe is not None else MLP(config)
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        x = x + self.drop(self.mlp(self.ln_2(x)))
        return x


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

    def forward(self, token_ids: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits; with (B, T) targets -> the mean cross-entropy instead."""
        seq_len = token_ids.shape[1]
        if seq_len > self.config.context_length:
            raise ValueError(f"sequence of {seq_len} tokens is longer than context_length {self.config.context_length}")
        positions = torch.arange(seq_len, device=token_ids.device)
        x = self.drop(self.wte(token_ids) + self.wpe(positions))  # (B, T, C)
        for block in self.h:
            x = block(x)
        hidden = self.ln_f(x)  # (B, T, C)
        vocab_size = self.config.vocab_size
        if targets is None:
            return self.lm_head(hidden)[..., :vocab_size]  # (B, T, V): padding columns cut off
        if self.fused_loss:
            return linear_cross_entropy(hidden.flatten(0, 1), self.lm_head.weight, targets.flatten(), vocab_size)
        logits = self.lm_head(hidden)  # (B, T, V_padded)
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

    def take_router_loss(self) -> torch.Tensor | None:
        """The weighted load-balancing and z-losses of the last training forward, summed over blocks; None when both are off."""
        losses = [layer.router_loss for layer in self._experts() if layer.router_loss is not None]
        for layer in self._experts():
            layer.router_loss = None
        return torch.stack(losses).sum() if losses else None

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


def routing_statistics(totals: torch.Tensor) -> list[dict[str, object]]:
    """`GPT.take_routing_totals()` (already on the host, possibly averaged over ranks) -> one record per layer:
    mean routing weight per expert (softmax over all logits), mean kept top-K weight per expert (0 where not
    chosen), share of the routed (token, expert) slots per expert (sums to 1), the router's mean entropy in
    nats, and the mean balance loss and z-loss (unweighted)."""
    records = []
    for layer, row in enumerate(totals.tolist()):
        forwards = row[-1]
        if forwards == 0:
            continue
        num_experts = (len(row) - ROUTING_SCALARS) // ROUTING_ROWS
        per_expert = [
            [value / forwards for value in row[i * num_experts : (i + 1) * num_experts]] for i in range(ROUTING_ROWS)
        ]
        entropy, balance, z_loss = (value / forwards for value in row[ROUTING_ROWS * num_experts : -1])
        records.append(
            {
                "layer": layer,
                "mean_routing_weight": per_expert[0],
                "mean_topk_weight": per_expert[1],
                "token_fraction": per_expert[2],
                "router_entropy": entropy,
                "balance_loss": balance,
                "router_z_loss": z_loss,
            }
        )
    return records
