"""How much does checking the gradients for inf/NaN cost, compared with a whole training step?

A training step must not apply an update whose gradients hold an inf or a NaN. There are two ways
to find out whether they do:

* fused (gptlab's): `global_grad_norm` computes every gradient's L2 norm in one `torch._foreach_norm`
  pass and the norm of those norms in one more reduction. The result is a 0-d tensor that is inf or
  NaN if any gradient element is, and the trainer reads it back to the host once per step (that read
  is the step's one host synchronisation; it also gives the norm for logging and clipping).
* per-parameter (the users' harness): `all(torch.isfinite(p.grad).all() for p in params)`, a Python
  loop that builds a boolean tensor per parameter and converts each to a Python bool, i.e. one host
  synchronisation per parameter tensor (137 of them for GPT-2 small, untied).

This script builds GPT-2 small (`ModelConfig()` defaults) and measures, on random tokens:

(a) the mean wall time of a full training step as the trainer does it: forward under the precision's
    autocast, cross-entropy, backward, the fused check with its read-back, optimizer step, zero_grad;
(b) after one backward, so that real gradients exist, the mean time of the fused check (including
    the read-back) and of the per-parameter scan, their ratio, and the fused check as a share of the
    step. The target is that the fused check costs under 1% of the step.

It also confirms that the two checks agree: both say "finite" on the real gradients, and both say
"non-finite" once one element of one gradient is set to inf, and again to NaN.

Run from the repository root:

    python benchmarks/nonfinite_check.py                      # fp32 on the CPU
    python benchmarks/nonfinite_check.py --precision bf16
    python benchmarks/nonfinite_check.py --device cuda --precision bf16 --microbatch 12

Exit status: 0 when the two checks agree, 1 when they do not (the timing target is reported as
PASS/FAIL in the output but does not change the exit status).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from gptlab.config import ModelConfig, TrainConfig
from gptlab.runtime.precision import Precision, configure_precision, global_grad_norm
from gptlab.train.host import keep_freed_memory_for_reuse
from gptlab.train.optim import build_optimizer
from gptlab.train.record import environment
from gptlab.weights import build_model

TARGET_PERCENT = 1.0  # the fused check must cost less than this share of a training step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--precision",
        choices=["fp32", "tf32", "fp16", "bf16"],
        default="fp32",
        help="numerics of the training step (default fp32)",
    )
    parser.add_argument("--microbatch", type=int, default=1, help="sequences per step (default 1)")
    parser.add_argument("--context", type=int, default=1024, help="tokens per sequence, at most 1024 (default 1024)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps after one warm-up step (default 3)")
    parser.add_argument("--check-repeats", type=int, default=20, help="times each gradient check is timed (default 20)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default cpu)")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the results to this JSON file"
    )
    args = parser.parse_args(argv)
    for name in ("microbatch", "context", "steps", "check_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.context > ModelConfig().context_length:
        parser.error(f"--context must be at most {ModelConfig().context_length} (GPT-2 small's context length)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch build")
    return args


# --- the two checks ------------------------------------------------------------------------------


def fused_all_finite(parameters: list[torch.nn.Parameter]) -> bool:
    """gptlab's check: one fused norm over all gradients, read back to the host once."""
    return math.isfinite(float(global_grad_norm(parameters)))


def per_parameter_all_finite(parameters: list[torch.nn.Parameter]) -> bool:
    """The users' harness check, the baseline: one isfinite reduction and one host sync per tensor."""
    return all(torch.isfinite(p.grad).all() for p in parameters if p.grad is not None)


# --- timing helpers ------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(function: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call, with the device idle before and after."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


# --- the training step ---------------------------------------------------------------------------


def random_batch(
    microbatch: int, context: int, vocab_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(vocab_size, (microbatch, context + 1), device=device)
    return tokens[:, :-1], tokens[:, 1:]


def forward_backward(
    model: torch.nn.Module, precision: Precision, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    with precision.autocast():
        logits = model(inputs)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    (precision.scaler.scale(loss) if precision.scaler is not None else loss).backward()
    return loss.detach()


def training_step(model, optimizer, precision: Precision, parameters, inputs, targets) -> bool:
    """One step as gptlab's trainer takes it; returns whether the gradients were finite."""
    loss = forward_backward(model, precision, inputs, targets)
    if precision.scaler is not None:
        precision.scaler.unscale_(optimizer)
    grad_norm = global_grad_norm(parameters)
    loss_value, norm_value = torch.stack([loss, grad_norm.to(loss.device)]).tolist()  # the one host sync
    finite = math.isfinite(loss_value) and math.isfinite(norm_value)
    if finite:
        optimizer.step()
    if precision.scaler is not None:
        precision.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return finite


# --- agreement -----------------------------------------------------------------------------------


def checks_agree(parameters: list[torch.nn.Parameter]) -> list[dict]:
    """Both checks on the real gradients, then with one element of one gradient set to inf and to NaN."""
    results = [
        {
            "case": "real gradients",
            "expected": True,
            "fused": fused_all_finite(parameters),
            "per_parameter": per_parameter_all_finite(parameters),
        }
    ]
    with_grads = [p for p in parameters if p.grad is not None]
    victim = with_grads[len(with_grads) // 2].grad.view(-1)  # a middle tensor, a middle element
    index = victim.numel() // 2
    original = victim[index].item()
    for label, value in (("one element = inf", math.inf), ("one element = NaN", math.nan)):
        victim[index] = value
        results.append(
            {
                "case": label,
                "expected": False,
                "fused": fused_all_finite(parameters),
                "per_parameter": per_parameter_all_finite(parameters),
            }
        )
    victim[index] = original
    for row in results:
        row["fused"], row["per_parameter"] = bool(row["fused"]), bool(row["per_parameter"])
        row["ok"] = row["fused"] == row["per_parameter"] == row["expected"]
    return results


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory_for_reuse()  # as the trainer does on the CPU
    torch.manual_seed(0)

    env = environment()
    device_name = env.get("device_name", "") if device.type == "cuda" else "cpu"
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", sys.argv[0], *argv])
    print(
        f"gptlab {env['gptlab']} | python {env['python']} | torch {env['torch']} | cuda {env['cuda']} | "
        f"device {args.device} ({device_name}) | cpu threads {env['cpu_threads']}"
    )
    print(f"command: {command}")

    model_config = ModelConfig(init="gpt2")  # GPT-2 small, untied; the gpt2 initialiser is the quick one
    train_config = TrainConfig(
        dataset="random-tokens", microbatch_size=args.microbatch, precision=args.precision, device=args.device
    )
    precision = configure_precision(args.precision, device, source="--precision")
    model = build_model(model_config, device)
    model.train()
    optimizer = build_optimizer(model, train_config, device)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    n_params = sum(p.numel() for p in parameters)
    print(
        f"model: GPT-2 small, {n_params / 1e6:.1f}M parameters in {len(parameters)} tensors; "
        f"precision {args.precision}; microbatch {args.microbatch} x context {args.context}"
    )

    inputs, targets = random_batch(args.microbatch, args.context, model_config.vocab_size, device)

    # (a) full training steps: one untimed warm-up, then --steps timed.
    def step() -> None:
        training_step(model, optimizer, precision, parameters, inputs, targets)

    warmup_seconds = time_call(step, device)
    step_seconds = [time_call(step, device) for _ in range(args.steps)]
    step_mean = statistics.mean(step_seconds)
    print(f"warm-up step {warmup_seconds:.2f} s; timed steps " + ", ".join(f"{s:.2f}" for s in step_seconds) + " s")

    # (b) the two checks, on the gradients of one more backward (not applied, not zeroed).
    forward_backward(model, precision, inputs, targets)
    if precision.scaler is not None:
        precision.scaler.unscale_(optimizer)  # the trainer checks unscaled gradients
    fused_all_finite(parameters)  # warm both up once, untimed
    per_parameter_all_finite(parameters)
    fused_seconds = [time_call(lambda: fused_all_finite(parameters), device) for _ in range(args.check_repeats)]
    per_param_seconds = [
        time_call(lambda: per_parameter_all_finite(parameters), device) for _ in range(args.check_repeats)
    ]
    fused_ms = statistics.mean(fused_seconds) * 1e3
    per_param_ms = statistics.mean(per_param_seconds) * 1e3
    ratio = per_param_ms / fused_ms
    fused_percent = fused_ms / (step_mean * 1e3) * 100
    per_param_percent = per_param_ms / (step_mean * 1e3) * 100
    target_met = fused_percent < TARGET_PERCENT

    agreement = checks_agree(parameters)
    all_agree = all(row["ok"] for row in agreement)

    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| training step (mean of {args.steps}) | {step_mean:.3f} s |")
    print(f"| fused check + read-back (mean of {args.check_repeats}) | {fused_ms:.3f} ms |")
    print(f"| per-parameter scan (mean of {args.check_repeats}) | {per_param_ms:.3f} ms |")
    print(f"| ratio per-parameter / fused | {ratio:.2f}x |")
    print(f"| fused check, share of step | {fused_percent:.4f} % |")
    print(f"| per-parameter scan, share of step | {per_param_percent:.4f} % |")
    print()
    print("| gradients | expected all finite | fused says | per-parameter says | agree |")
    print("|---|---|---|---|---|")
    for row in agreement:
        print(
            f"| {row['case']} | {row['expected']} | {row['fused']} | {row['per_parameter']} | {'yes' if row['ok'] else 'NO'} |"
        )
    print()
    print(
        f"{'PASS' if target_met else 'FAIL'}: fused check is {fused_percent:.4f} % of a training step (target < {TARGET_PERCENT:g} %)"
    )
    print(f"{'PASS' if all_agree else 'FAIL'}: both checks agree on finite, inf and NaN gradients")

    if args.json is not None:
        results = {
            "command": command,
            "environment": env,
            "device": args.device,
            "device_name": device_name,
            "precision": args.precision,
            "microbatch": args.microbatch,
            "context": args.context,
            "parameters": n_params,
            "parameter_tensors": len(parameters),
            "warmup_step_s": warmup_seconds,
            "step_s": step_seconds,
            "step_mean_s": step_mean,
            "fused_check_s": fused_seconds,
            "fused_check_mean_ms": fused_ms,
            "per_parameter_check_s": per_param_seconds,
            "per_parameter_check_mean_ms": per_param_ms,
            "ratio_per_parameter_over_fused": ratio,
            "fused_percent_of_step": fused_percent,
            "per_parameter_percent_of_step": per_param_percent,
            "target_percent": TARGET_PERCENT,
            "target_met": target_met,
            "agreement": agreement,
            "checks_agree": all_agree,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 0 if all_agree else 1


if __name__ == "__main__":
    sys.exit(main())
