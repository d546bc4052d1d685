"""Where a GPT-2-small training step spends its GPU time: torch.profiler over a few steps of the trainer's
own step (`bench.harness.train_step`), for one or more settings, printed as the top kernels by self CUDA
time, with the step time and TorchDynamo's graph and graph-break counts.

Written after the first GPU check (H200, bf16 at microbatch 12: 29.6% MFU, forward 20 ms vs backward
14 ms) to see what the forward pass spends its time on. Run from the repository root on the GPU machine:

    PYTHONPATH=src:/tmp/site python3 benchmarks/gpu_profile.py --out $OUT/gpu_profile.json \
        --variant precision=bf16 --variant precision=bf16,drop_rate=0

or on the CPU, to check the script (tiny model): python benchmarks/gpu_profile.py --small
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptlab.bench.harness import prepared_run, synchronize, train_step
from gptlab.config import load_run_config, parse_assignments
from gptlab.presets import USERS_MODEL, USERS_TRAIN


def profile_variant(run_dir: Path, assignments: list[str], warmup: int, steps: int, top: int) -> dict:
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    config = load_run_config(run_dir, parse_assignments(tuple(assignments)))
    total = warmup + 2 * steps
    with prepared_run(config, total) as run:
        started = time.perf_counter()
        for step in range(warmup):
            train_step(run, step)
        synchronize(run.device)
        warmup_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for step in range(warmup, warmup + steps):
            train_step(run, step)
        synchronize(run.device)
        step_ms = (time.perf_counter() - started) / steps * 1e3
        activities = [torch.profiler.ProfilerActivity.CPU]
        if run.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            for step in range(warmup + steps, warmup + 2 * steps):
                train_step(run, step)
            synchronize(run.device)
    sort_key = "self_device_time_total" if len(activities) == 2 else "self_cpu_time_total"
    averages = profiler.key_averages()
    table = averages.table(sort_by=sort_key, row_limit=top, max_name_column_width=90)
    rows = []
    for event in sorted(averages, key=lambda e: getattr(e, sort_key, 0), reverse=True)[:top]:
        rows.append(
            {
                "name": event.key,
                "calls": event.count,
                "self_device_ms": getattr(event, "self_device_time_total", 0) / 1e3 / steps,
                "self_cpu_ms": event.self_cpu_time_total / 1e3 / steps,
            }
        )
    counters = {
        group: dict(values) for group, values in dynamo_utils.counters.items() if group in ("stats", "graph_break")
    }
    return {
        "assignments": assignments,
        "warmup_seconds": round(warmup_seconds, 2),
        "ms_per_step": round(step_ms, 3),
        "tokens_per_second": round(config.train.microbatch_size * config.model.context_length / step_ms * 1e3, 1),
        "dynamo": counters,
        "top": rows,
        "table": table,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help="comma-separated KEY=VALUE settings")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--small", action="store_true", help="tiny model on the CPU, to check the script")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    model, train = dict(USERS_MODEL), dict(USERS_TRAIN)
    if args.small:
        model.update(context_length=32, emb_dim=32, n_heads=2, n_layers=2)
        train.update(microbatch_size=2)
    variants = [v.split(",") for v in args.variant] or [["precision=bf16"]]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        (run_dir / "model.json").write_text(json.dumps(model))
        (run_dir / "train.json").write_text(json.dumps(train))
        for assignments in variants:
            try:
                result = profile_variant(run_dir, assignments, args.warmup, args.steps, args.top)
            except Exception as error:  # one failing variant must not cost the others' figures
                result = {"assignments": assignments, "error": f"{type(error).__name__}: {error}"}
            results.append(result)
            print(
                f"== {','.join(assignments)}: {result.get('ms_per_step')} ms/step, {result.get('tokens_per_second')} tokens/s, "
                f"warm-up {result.get('warmup_seconds')} s, dynamo {result.get('dynamo')}",
                flush=True,
            )
            print(result.get("table") or result.get("error"), flush=True)
            if args.out:
                args.out.write_text(json.dumps({"torch": torch.__version__, "variants": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
