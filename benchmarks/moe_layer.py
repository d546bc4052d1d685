"""One mixture-of-experts feed-forward layer, forward and backward: gptlab's against the users' loop, in one run.

The users' layer (written here from issue 18's description, on the book package's `FeedForward`) masks all
but the top-k router logits with -inf, takes a softmax, and for each expert gathers its tokens with a
boolean mask, runs the expert and adds the weighted result back through the mask. gptlab's
(`gptlab.model_moe.MixtureOfExperts`) sorts the (token, expert) slots by expert, runs each expert once over a
contiguous slice, and adds the results back with one index_add_; on the CPU in float32 its experts' matmuls
run on oneDNN rather than torch's default (MKL's sgemm, about half as fast on AMD CPUs). A third row,
`gptlab_torch_matmul`, is gptlab's layer with that turned off: the grouping alone, on the users' kernels.
All hold the same weights; the outputs are checked to agree before timing. They are timed in alternating
rounds so that a machine shared with other work slows all alike; the median round of each is reported.

Run from the repository root (prints a table and one JSON line):

    python benchmarks/moe_layer.py                                  # GPT-2 small width, 6 experts, 2 active, 4,096 tokens
    python benchmarks/moe_layer.py --tokens 1024 --rounds 3         # smaller, for a busy machine
    python benchmarks/moe_layer.py --threads 1 --profile            # where the time goes: matmul, GELU, the rest
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn as nn
from llms_from_scratch.ch04 import FeedForward

from gptlab.config import ModelConfig
from gptlab.cpu_kernels import TORCH, using_cpu_matmul
from gptlab.model import MLP
from gptlab.model_moe import MixtureOfExperts


class UsersMoE(nn.Module):
    """The users' layer: top-k logits kept, the rest -inf, softmax, a boolean-mask gather per expert."""

    def __init__(self, cfg: dict, num_experts: int, num_active: int):
        super().__init__()
        self.num_active = num_active
        self.router = nn.Linear(cfg["emb_dim"], num_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(cfg) for _ in range(num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router(x)
        kept, chosen = torch.topk(logits, self.num_active, dim=-1)
        weights = torch.softmax(torch.full_like(logits, float("-inf")).scatter(-1, chosen, kept), dim=-1)
        out = torch.zeros_like(x)
        for j, expert in enumerate(self.experts):
            mask = (chosen == j).any(-1)
            if mask.any():
                out[mask] += weights[mask][:, j : j + 1] * expert(x[mask])
        return out


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class OnTorchMatmul(nn.Module):
    """`layer` with every linear layer on torch's matmul, whatever gptlab.cpu_kernels chose for this CPU (the
    experts' fallback is the dense MLP, whose linears follow that choice)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with using_cpu_matmul(TORCH):  # the forward's choice of function fixes the backward's kernel too
            return self.layer(x)


def time_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    layer.zero_grad(set_to_none=True)
    started = time.perf_counter()
    layer(x).backward(grad)
    return time.perf_counter() - started


# torch.profiler's operator names, sorted into the parts of a step: the matmuls (the same FLOPs in every layer
# here), the GELU (the book's is tanh, pow and mul; gptlab's one gelu kernel) with the expert weighting's mul,
# and everything else (router softmax and top-k, gathers, scatters, copies, bias sums).
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise"}
GELU_AND_MUL = {"aten::gelu", "aten::gelu_backward", "aten::tanh", "aten::tanh_backward", "aten::pow", "aten::mul"}


def profile_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, steps: int = 2) -> dict[str, float]:
    """Self CPU milliseconds per step (forward + backward) of matmul, GELU and mul, and the rest."""
    from torch.profiler import ProfilerActivity, profile

    time_step(layer, x, grad)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            time_step(layer, x, grad)
    parts = {"matmul": 0.0, "gelu_and_mul": 0.0, "other": 0.0}
    for event in profiler.key_averages():
        part = "matmul" if event.key in MATMULS else "gelu_and_mul" if event.key in GELU_AND_MUL else "other"
        parts[part] += event.self_cpu_time_total / 1e3 / steps
    return {name: round(value, 1) for name, value in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emb-dim", type=int, default=768)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--active", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per step (batch x context)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each, alternating")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default: torch's")
    parser.add_argument(
        "--profile", action="store_true", help="also torch.profiler's self CPU time per part of a step, per layer"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = ModelConfig(
        emb_dim=args.emb_dim,
        n_heads=1,
        drop_rate=0.0,
        moe={"num_experts": args.experts, "num_active_experts": args.active},
    )
    theirs = UsersMoE(config.model_dump(), args.experts, args.active)
    layers = {
        "users_loop": theirs,
        "gptlab": MixtureOfExperts(config, expert=MLP),
        "gptlab_torch_matmul": MixtureOfExperts(config, expert=MLP),
    }
    layers["gptlab_torch_matmul"].onednn_matmuls = False
    x = torch.randn(1, args.tokens, args.emb_dim)
    grad = torch.randn_like(x)
    for name in ("gptlab", "gptlab_torch_matmul"):
        layers[name].load_state_dict(
            {
                key.replace("layers.0", "c_fc").replace("layers.2", "c_proj"): tensor
                for key, tensor in theirs.state_dict().items()
            }
        )
        with torch.no_grad():
            torch.testing.assert_close(layers[name](x), theirs(x), rtol=1e-4, atol=1e-5)

    layers["gptlab_torch_matmul"] = OnTorchMatmul(layers["gptlab_torch_matmul"])
    for layer in layers.values():  # warm-up: allocator and thread pool
        time_step(layer, x, grad)
    seconds: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(args.rounds):
        for name, layer in layers.items():
            seconds[name].append(time_step(layer, x, grad))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "emb_dim": args.emb_dim,
        "experts": args.experts,
        "active": args.active,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "tokens_per_second": {name: round(args.tokens / value, 1) for name, value in median.items()},
        "speedup": round(median["users_loop"] / median["gptlab"], 3),
        "speedup_torch_matmul": round(median["users_loop"] / median["gptlab_torch_matmul"], 3),
        "seconds": {name: [round(v, 4) for v in values] for name, values in seconds.items()},
    }
    print(
        f"{result['cpu']} | torch {result['torch']} | {result['threads']} threads | width {args.emb_dim}, "
        f"{args.experts} experts, {args.active} active, {args.tokens} tokens, forward + backward, median of {args.rounds} rounds"
    )
    for name, rate in result["tokens_per_second"].items():
        print(f"  {name:>19}: {rate:12,.0f} tokens/s")
    print(f"  gptlab / users' loop: {result['speedup']:.2f}x")
    print(f"  gptlab_torch_matmul / users' loop: {result['speedup_torch_matmul']:.2f}x")
    if args.profile:
        result["profile_ms_per_step"] = {}
        for name, layer in layers.items():
            parts = profile_step(layer, x, grad)
            result["profile_ms_per_step"][name] = parts
            total = sum(parts.values())
            shares = ", ".join(f"{part} {ms:,.0f} ms ({ms / total:.0%})" for part, ms in parts.items())
            print(f"  profile {name:>19}: {total:,.0f} ms per step: {shares}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
