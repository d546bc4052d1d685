"""The users' mixture-of-experts feed-forward layer (model.json's `moe`), its CPU kernel, and the routing
statistics it sums while training. `gptlab.model` puts one in each block in place of the MLP.

Shapes: N = B x T tokens, C = emb_dim, E = num_experts, K = num_active_experts.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.config import ModelConfig
from gptlab.cpu_kernels import onednn_for
from gptlab.cpu_kernels import onednn_linear as _onednn_linear
from gptlab.cpu_kernels import onednn_linear_available as _onednn_linear_available  # noqa: F401  (tests ask it)


class _OneDNNExpertMLP(torch.autograd.Function):
    """An expert's MLP, c_proj(gelu_tanh(c_fc(x))), forward and backward with oneDNN's float32 matmuls.

    Why: torch's float32 matmul on CPU is MKL's sgemm, which on this lab's AMD EPYC runs about half as fast as
    oneDNN's AVX-512 inner product (benchmarks/moe_layer.py, docs/performance.md); the function and FLOPs are
    those of the dense model's `MLP.forward` (gptlab.model) and its autograd backward, only the kernel
    differs. Used for float32 CPU tensors outside autocast (see `MixtureOfExperts._expert`); everything else
    runs the expert as written.
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

    def __init__(self, config: ModelConfig, expert: Callable[[ModelConfig], nn.Module]):
        """`expert` builds one expert: the dense model's MLP (c_fc, GELU with tanh, c_proj), which the oneDNN
        kernel computes too."""
        super().__init__()
        moe = config.moe
        self.num_active = moe.num_active_experts
        self.aux_loss_coef, self.router_z_loss_coef = moe.aux_loss_coef, moe.router_z_loss_coef
        self.router = nn.Linear(config.emb_dim, moe.num_experts, bias=False)
        self.experts = nn.ModuleList(expert(config) for _ in range(moe.num_experts))
        # Routing statistics summed over training forwards since the last `take_routing_totals`; a plain
        # attribute, not a buffer, so DDP does not overwrite each rank's own counts with rank 0's.
        self.routing_totals: torch.Tensor | None = None
        # the process's CPU kernel choice (gptlab.cpu_kernels); a plain attribute: benchmarks turn it off to compare
        self.onednn_matmuls = onednn_for(torch.float32)

    def forward(
        self, x: torch.Tensor, with_router_loss: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The layer's output; `with_router_loss`: (output, the weighted balance and z-losses), the loss None
        outside training or when both coefficients are 0."""
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

        router_loss = None
        if self.training:
            router_loss = self._routing(logits, kept_experts, kept_weights, tokens_per_expert)
        output = mixed.view(batch, seq_len, width)
        return (output, router_loss) if with_router_loss else output

    def _expert(self, expert: nn.Module, x: torch.Tensor) -> torch.Tensor:
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
    ) -> Optional[torch.Tensor]:
        """Sum this forward's routing statistics (no host synchronisation); return the weighted router losses
        when a coefficient asks for them."""
        num_tokens, num_experts = logits.shape
        logits = _at_least_float32(logits)
        probabilities = F.softmax(logits, dim=-1)  # (N, E) over all logits
        routing_weight = probabilities.mean(0)  # (E,)
        slot_share = tokens_per_expert.to(logits.dtype) / (num_tokens * self.num_active)  # (E,) sums to 1
        balance_loss = num_experts * (slot_share * routing_weight).sum()  # Switch Transformer; 1 when balanced
        z_loss = torch.logsumexp(logits, dim=-1).square().mean()
        router_loss = None
        if self.aux_loss_coef or self.router_z_loss_coef:
            router_loss = self.aux_loss_coef * balance_loss + self.router_z_loss_coef * z_loss
        with torch.no_grad():
            kept = (
                torch.zeros_like(probabilities).scatter_(1, kept_experts, kept_weights.to(logits.dtype)).mean(0)
            )  # (E,)
            entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-30))).sum(-1).mean()
            scalars = torch.stack([entropy, balance_loss.detach(), z_loss.detach(), torch.ones_like(entropy)])
            totals = torch.cat([torch.stack([routing_weight, kept, slot_share]).flatten(), scalars])
            self.routing_totals = totals if self.routing_totals is None else self.routing_totals + totals
        return router_loss

    def take_routing_totals(self) -> torch.Tensor:
        """The summed statistics since the last call ((ROUTING_ROWS E + ROUTING_SCALARS,) on the device), then reset."""
        totals = self.routing_totals
        self.routing_totals = None
        if totals is None:
            totals = torch.zeros(ROUTING_ROWS * len(self.experts) + ROUTING_SCALARS, device=self.router.weight.device)
        return totals


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
