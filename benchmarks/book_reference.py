"""A plain trainer written the way the book (and the users' harness built on it) writes one: the speed
reference gptlab is measured against.

- Model: the book's own `llms_from_scratch.ch04.GPTModel`: attention as a manual masked softmax over
  a materialised T x T score matrix, separate Q, K and V projections, hand-written LayerNorm and GELU.
- Optimizer: `torch.optim.AdamW(model.parameters(), lr, weight_decay)`, letting torch pick its
  implementation, one parameter group, as the users' harness builds it.
- Step: forward (under `torch.autocast` in bf16 or fp16 when asked, as the harness wraps its forward
  and loss; fp16 adds the harness's `GradScaler` and TF32), `F.cross_entropy(logits.flatten(0, 1),
  targets.flatten())`, `backward()`, the per-parameter non-finite scan `all(torch.isfinite(p.grad).all() ...)`,
  `optimizer.step()`, `zero_grad()`, and `loss.item()` every step. fp32 keeps TF32 off.

No gptlab code is imported, so nothing gptlab sets process-wide (its glibc malloc setting, for one)
applies unless `--tuned-malloc` asks for the same setting, to measure that effect alone.

Run from the repository root (prints one JSON line; `benchmarks/cpu_vs_reference.py` drives it):

    python benchmarks/book_reference.py --precision bf16 --steps 5
    python benchmarks/book_reference.py --device cuda --model gpt2-small --batch-size 12 --precision bf16 --steps 10 --warmup-steps 3
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
from llms_from_scratch.ch04 import GPTModel

# The comparison's configuration: 4 layers, 256 wide, 4 heads, context 256, batch 8, GPT-2's vocabulary, untied head.
SMALL_CONFIG = {
    "vocab_size": 50257,
    "context_length": 256,
    "emb_dim": 256,
    "n_heads": 4,
    "n_layers": 4,
    "drop_rate": 0.1,
    "qkv_bias": False,
}
BATCH_SIZE = 8
GPT2_SMALL = {
    "vocab_size": 50257,
    "context_length": 1024,
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
}
# A few million parameters (nearly all in the vocabulary-sized head): what benchmarks/gpu_check.py --small runs on a CPU.
TINY_CONFIG = {
    "vocab_size": 50257,
    "context_length": 32,
    "emb_dim": 32,
    "n_heads": 2,
    "n_layers": 2,
    "drop_rate": 0.1,
    "qkv_bias": False,
}
PRESETS = {"tiny": TINY_CONFIG, "small": SMALL_CONFIG, "gpt2-small": GPT2_SMALL}


def random_batches(
    count: int, batch_size: int, context_length: int, vocab_size: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` (inputs, targets) pairs of uniformly random token ids, the same for every trainer given the same seed."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        tokens = torch.randint(0, vocab_size, (batch_size, context_length + 1), generator=generator)
        batches.append((tokens[:, :-1], tokens[:, 1:]))
    return batches


def build(
    config: dict, learning_rate: float = 0.0004, weight_decay: float = 0.1, seed: int = 42, device: str = "cpu"
) -> tuple[GPTModel, torch.optim.AdamW]:
    torch.manual_seed(seed)
    model = GPTModel(config)
    if config.get("tie_weights"):
        model.out_head.weight = model.tok_emb.weight  # as the users' harness ties it
    model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    return model, optimizer


def train_step(
    model: GPTModel,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    autocast_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One step as the book's loop takes it; returns the loss read back to the host."""
    if autocast_dtype is not None:
        with torch.autocast(device_type=inputs.device.type, dtype=autocast_dtype):
            logits = model(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    else:
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # the scaler skips the step itself when it finds inf/NaN
        scaler.update()
    else:
        loss.backward()
        if all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
            optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def tune_malloc_like_gptlab() -> bool:
    """The same glibc setting gptlab applies on the CPU (gptlab.train.host), written out here so this file imports no gptlab code."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    return bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, 1 << 30))  # M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 1 GiB


# Kinds of work in a step, for the profile summary: name -> the aten ops that do it.
OP_KINDS = {
    "matmuls": ("aten::mm", "aten::addmm", "aten::bmm"),
    "loss log-softmax fwd+bwd": (
        "aten::_log_softmax",
        "aten::_log_softmax_backward_data",
        "aten::nll_loss_forward",
        "aten::nll_loss_backward",
    ),
    "dtype casts (copy_)": ("aten::copy_",),
    "zero fills (fill_)": ("aten::fill_", "aten::zero_"),
    "AdamW": (
        "aten::_fused_adamw_",
        "aten::lerp_",
        "aten::addcmul_",
        "aten::addcdiv_",
        "aten::sqrt",
        "aten::mul_",
        "aten::div_",
        "aten::_foreach_lerp_",
        "aten::_foreach_mul_",
        "aten::_foreach_addcmul_",
        "aten::_foreach_sqrt",
        "aten::_foreach_div_",
        "aten::_foreach_addcdiv_",
        "aten::_foreach_add_",
    ),
    "non-finite check": (
        "aten::abs",
        "aten::ne",
        "aten::eq",
        "aten::isfinite",
        "aten::all",
        "aten::logical_and",
        "aten::isinf",
        "aten::isnan",
        "aten::_foreach_norm",
        "aten::linalg_vector_norm",
        "aten::_local_scalar_dense",
    ),
}


def profile_table(step, steps: int = 2, row_limit: int = 18) -> str:
    """Run `step()` `steps` times under torch.profiler: the ops with the most self CPU time, then self CPU
    seconds per step summed by kind of work (OP_KINDS), with everything else in one line."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    averages = profiler.key_averages()
    seconds = {event.key: event.self_cpu_time_total / 1e6 / steps for event in averages}
    lines = [
        averages.table(sort_by="self_cpu_time_total", row_limit=row_limit),
        f"self CPU seconds per step (mean of {steps}), by kind of work:",
    ]
    counted = set()
    for kind, ops in OP_KINDS.items():
        lines.append(f"  {kind:<26} {sum(seconds.get(op, 0.0) for op in ops):.3f}")
        counted.update(ops)
    lines.append(f"  {'everything else':<26} {sum(value for op, value in seconds.items() if op not in counted):.3f}")
    lines.append(f"  {'total':<26} {sum(seconds.values()):.3f}")
    return "\n".join(lines)


def measure(
    precision: str,
    steps: int,
    warmup_steps: int,
    config: dict = SMALL_CONFIG,
    batch_size: int = BATCH_SIZE,
    device: str = "cpu",
    profile: bool = False,
) -> dict:
    # The users' harness: fp32 means TF32 off; use_amp (fp16) means autocast + GradScaler + "high" (TF32).
    torch.set_float32_matmul_precision("highest" if precision == "fp32" else "high")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
        torch.backends.cudnn.allow_tf32 = precision != "fp32"
    model, optimizer = build(config, device=device)
    batches = [
        (x.to(device), y.to(device))
        for x, y in random_batches(warmup_steps + steps, batch_size, config["context_length"], config["vocab_size"])
    ]
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device) if precision == "fp16" else None
    for inputs, targets in batches[:warmup_steps]:
        train_step(model, optimizer, inputs, targets, autocast_dtype, scaler)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_seconds = []
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for inputs, targets in batches[warmup_steps:]:
        started = time.perf_counter()
        train_step(model, optimizer, inputs, targets, autocast_dtype, scaler)  # .item() waits for the device
        step_seconds.append(time.perf_counter() - started)
    page_faults_per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) // steps
    if profile:
        inputs, targets = batches[-1]
        print(
            profile_table(lambda: train_step(model, optimizer, inputs, targets, autocast_dtype, scaler)),
            file=sys.stderr,
        )
    tokens_per_step = batch_size * config["context_length"]
    return {
        "trainer": "book reference",
        "precision": precision,
        "device": device,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "batch_size": batch_size,
        "step_ms": [round(s * 1e3, 2) for s in step_seconds],
        "tokens_per_second": tokens_per_step * steps / sum(step_seconds),
        "parameters": sum(p.numel() for p in model.parameters()),
        "page_faults_per_step": page_faults_per_step,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the book-style reference trainer on random tokens.")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument(
        "--model",
        choices=sorted(PRESETS),
        default="small",
        help="'small': the CPU comparison's config; 'gpt2-small': context 1024; 'tiny': gpu_check.py --small",
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--tie-weights", action="store_true")
    parser.add_argument("--drop-rate", type=float, default=None, help="default: the preset's 0.1")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--tuned-malloc", action="store_true", help="apply gptlab's glibc malloc setting first")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after timing, print where two more steps spend their time (torch.profiler)",
    )
    args = parser.parse_args()
    tuned = tune_malloc_like_gptlab() if args.tuned_malloc else False
    config = {**PRESETS[args.model], "tie_weights": args.tie_weights}
    if args.drop_rate is not None:
        config["drop_rate"] = args.drop_rate
    result = measure(args.precision, args.steps, args.warmup_steps, config, args.batch_size, args.device, args.profile)
    print(json.dumps({**result, "tuned_malloc": tuned, "config": config}))


if __name__ == "__main__":
    main()
