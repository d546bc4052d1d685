"""Kernel choices for the dense model's CPU training step, A/B in one process: the matmul kernel of its linear
layers (torch's, i.e. MKL's sgemm in float32, against oneDNN's inner product: gptlab/cpu_kernels.py) and
the loss (the whole 2,048 x 50,257 logits at once against the chunked head and cross-entropy of
gptlab/linear_cross_entropy.py), each variant a full training step: forward, backward, fused AdamW.

One model and optimizer; the variants take turns step by step within each round, the order flipping every
round, so load from other processes falls on all of them alike: the ratios between variants are meaningful
even on a busy machine, the absolute tokens/s are not. Same configuration as benchmarks/cpu_vs_reference.py
(4 layers, 256 wide, context 256, batch 8, GPT-2's vocabulary, untied, dropout 0.1).

    python benchmarks/cpu_kernels.py                          # fp32 and bf16, every variant
    python benchmarks/cpu_kernels.py --precisions bf16 --rounds 5 --variants torch/plain,onednn/chunked
    python benchmarks/cpu_kernels.py --shapes                 # each matmul of the step alone, torch against oneDNN

`--shapes` times, for every linear layer of the model at 2,048 tokens (Q/K/V, attention output, MLP in and
out, the 50,257-row head), the three products of its training step (forward, input gradient, weight
gradient) as gptlab.cpu_kernels computes them on oneDNN and as torch's matmul does, alternating.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
VARIANTS = ("torch/plain", "onednn/plain", "torch/chunked", "onednn/chunked")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round (default 2)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    parser.add_argument("--chunk-tokens", type=int, default=None, help="tokens per chunk of the chunked loss")
    parser.add_argument("--shapes", action="store_true", help="time each matmul shape alone instead of whole steps")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from book_reference import BATCH_SIZE, SMALL_CONFIG, random_batches

    from gptlab import cpu_kernels, linear_cross_entropy
    from gptlab.bench import device_name
    from gptlab.config import ModelConfig
    from gptlab.model import GPT
    from gptlab.runtime.precision import cpu_flags
    from gptlab.train.host import keep_freed_memory_for_reuse

    if args.chunk_tokens:
        linear_cross_entropy.DEFAULT_CHUNK_TOKENS = args.chunk_tokens
    keep_freed_memory_for_reuse()
    flags = cpu_flags() or set()
    print(
        f"CPU {device_name(torch.device('cpu'))}; flags: "
        + ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("avx512f", "avx512_bf16", "amx_bf16"))
        + f"; torch {torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"this process's choice: {cpu_kernels.cpu_matmul()}", flush=True)
    if args.shapes:
        time_shapes(args.rounds, args.precisions.split(","))
        return
    torch.manual_seed(0)
    model = GPT(ModelConfig(**SMALL_CONFIG, tie_weights=False))
    model.init_gpt2()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1, fused=True)
    batches = random_batches(4, BATCH_SIZE, SMALL_CONFIG["context_length"], SMALL_CONFIG["vocab_size"])
    tokens = BATCH_SIZE * SMALL_CONFIG["context_length"]

    def step(variant: str, precision: str, index: int) -> float:
        kernel, loss_kind = variant.split("/")
        model.fused_loss = loss_kind == "chunked"
        inputs, targets = batches[index % len(batches)]
        started = time.perf_counter()
        with cpu_kernels.using_cpu_matmul(kernel):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(inputs, targets)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    variants = args.variants.split(",")
    for precision in args.precisions.split(","):
        for variant in variants:  # warm-up: one step each
            step(variant, precision, 0)
        seconds: dict[str, list[float]] = {variant: [] for variant in variants}
        for round_index in range(args.rounds):
            order = variants if round_index % 2 == 0 else variants[::-1]
            for variant in order:
                for index in range(args.steps):
                    seconds[variant].append(step(variant, precision, index))
        base = statistics.median(seconds[variants[0]])
        for variant in variants:
            median = statistics.median(seconds[variant])
            print(
                f"{precision} {variant:<16} {tokens / median:>7,.0f} tokens/s  median step {median * 1e3:7.0f} ms  "
                f"{base / median:.2f}x {variants[0]}  (steps ms {[round(s * 1e3) for s in seconds[variant]]})",
                flush=True,
            )
    print(f"load average at end {os.getloadavg()[0]:.2f}")


def time_shapes(rounds: int, precisions: list[str]) -> None:
    from gptlab.cpu_kernels import onednn_linear

    tokens, width, vocab = 2048, 256, 50257
    layers = {
        "qkv": (3 * width, width),
        "attention out": (width, width),
        "mlp in": (4 * width, width),
        "mlp out": (width, 4 * width),
        "head": (vocab, width),
    }
    for precision in precisions:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        for name, (out_features, in_features) in layers.items():
            x = torch.randn(tokens, in_features, dtype=dtype)
            weight = torch.randn(out_features, in_features, dtype=dtype) * 0.02
            grad = torch.randn(tokens, out_features, dtype=dtype)
            wide = out_features >= in_features  # as _OneDNNLinear.backward orders the weight gradient's operands
            products = {
                "forward": (lambda: x @ weight.t(), lambda: onednn_linear(x, weight)),
                "input grad": (lambda: grad @ weight, lambda: onednn_linear(grad, weight.t())),
                "weight grad": (
                    lambda: grad.t() @ x,
                    (lambda: onednn_linear(x.t(), grad.t()).t().contiguous())
                    if wide
                    else (lambda: onednn_linear(grad.t(), x.t())),
                ),
            }
            repeats = 1 if name == "head" else 5
            for product, pair in products.items():
                best = {"torch": float("inf"), "onednn": float("inf")}
                for kernel, function in zip(best, pair):
                    function()  # warm-up: kernel selection, buffers
                for round_index in range(rounds):
                    for kernel, function in (
                        zip(best, pair) if round_index % 2 == 0 else reversed(list(zip(best, pair)))
                    ):
                        for _ in range(repeats):
                            started = time.perf_counter()
                            function()
                            best[kernel] = min(best[kernel], time.perf_counter() - started)
                flops = 2 * tokens * in_features * out_features
                print(
                    f"{precision} {name:<14} {product:<12} torch {best['torch'] * 1e3:8.1f} ms "
                    f"({flops / best['torch'] / 1e9:5.0f} GFLOP/s)  oneDNN {best['onednn'] * 1e3:8.1f} ms "
                    f"({flops / best['onednn'] / 1e9:5.0f} GFLOP/s)  {best['torch'] / best['onednn']:.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
