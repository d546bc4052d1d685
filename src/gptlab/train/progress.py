"""What the training loop reports: the header, each step's record, the progress bar, the time and cost
estimate, and the summary at the end. Everything printed also goes to train.log."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from gptlab.config import not_yet_applied_notes
from gptlab.rundir import write_summary
from gptlab.train.record import environment, format_summary
from gptlab.train.state import Training

ESTIMATE_AFTER_STEPS = 3  # steps timed before the time and cost of the whole run are estimated


def log_header(run: Training) -> None:
    model_config, train_config, plan = run.config.model, run.config.train, run.plan
    env = environment()
    run.log.line(f"gptlab {env['gptlab']} | Python {env['python']} | torch {env['torch']} | CUDA {env['cuda']} | device {run.device}"
                 + (f" ({env['device_name']})" if "device_name" in env else "") + f" | world size {run.dist.world_size}")
    run.log.line(f"Model: {run.model.parameter_count():,} parameters ({model_config.n_layers} layers, {model_config.emb_dim} wide, "
                 f"{model_config.n_heads} heads, context {model_config.context_length}, tied head: {model_config.tie_weights})")
    run.log.line(f"Data: {run.dataset.directory} | train tokens {plan.train_tokens:,} from token {plan.start_token:,} | "
                 f"{plan.total_steps:,} steps of {plan.global_batch_tokens:,} tokens")
    run.log.line(f"Precision: {run.precision.name} ({run.precision_reason}) | schedule: {train_config.effective_schedule} | peak lr {train_config.learning_rate} | "
                 f"clipping: {train_config.clipping_max_norm or 'off'} | validation: "
                 + (f"{run.validation.batches} batches" if run.validation else "off"))
    if run.validation is None and train_config.validation_batches > 0:
        run.log.line(f"Note: validation_batches is {train_config.validation_batches} but {run.dataset.directory} has no validation split, "
                     f"so validation is off" + (" and 'best' is picked by train loss" if train_config.best_by == "validation" else ""))
    for note in not_yet_applied_notes(run.config):
        run.log.line(f"Note: {note}")


def record_step(run: Training, step: int, learning_rate: float, outcome: dict[str, Any], elapsed: float) -> None:
    """Count the step in the totals and the interval statistics, and add its metrics.jsonl record."""
    run.totals.add_step(learning_rate, outcome["clipped"], outcome["skipped"], outcome["loss"])
    run.interval.add(outcome["loss"], outcome["grad_norm"], outcome["clipped"])
    run.metrics.add({
        "step": step, "loss": json_float(outcome["loss"]), "learning_rate": learning_rate,
        "grad_norm": json_float(outcome["grad_norm"]), "clipped": outcome["clipped"], "skipped": outcome["skipped"],
        "tokens_seen": (step + 1) * run.plan.global_batch_tokens, "elapsed_seconds": round(elapsed, 4),
        "train_seconds": round(run.totals.train_seconds, 4),
    })


def show_progress(run: Training, bar, outcome: dict[str, Any], train_seconds_at_start: float) -> None:
    totals = run.totals
    seconds = max(totals.train_seconds - train_seconds_at_start, 1e-9)
    postfix = {"loss": f"{outcome['loss']:.3f}", "tok/s": f"{throughput(run, seconds, since_start=True):,.0f}"}
    if totals.last_validation_loss is not None:
        postfix["val"] = f"{totals.last_validation_loss:.3f}"
    if run.config.train.cost_per_hour is not None:
        postfix["$"] = f"{totals.train_seconds / 3600 * run.config.train.cost_per_hour:.2f}"
    bar.set_postfix(postfix, refresh=False)


def throughput(run: Training, seconds: float, since_start: bool = False) -> float:
    """Tokens per second over the timed steps (a compiling first step is not one of them)."""
    steps = run.totals.timed_steps - (run.start_timed_steps if since_start else 0)
    return steps * run.plan.global_batch_tokens / seconds if seconds > 0 else 0.0


def log_estimate(run: Training, step: int, train_seconds_at_start: float) -> str:
    """Once the first steps are timed: how long, and what it will cost, to finish."""
    totals = run.totals
    seconds_per_step = (totals.train_seconds - train_seconds_at_start) / max(1, totals.timed_steps - run.start_timed_steps)
    remaining = seconds_per_step * (run.plan.total_steps - step - 1)
    line = f"Estimate from the first {step + 1 - run.start_step} steps: {seconds_per_step:.3f} s/step, {remaining / 3600:.2f} h to go"
    if run.config.train.cost_per_hour is not None:
        total_hours = (totals.train_seconds + remaining) / 3600
        line += f", ${total_hours * run.config.train.cost_per_hour:.2f} for the whole run at ${run.config.train.cost_per_hour}/h"
    run.log.line(line)
    return line


def peak_memory(device: torch.device) -> Optional[int]:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def json_float(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def finish_summary(run: Training) -> dict[str, Any]:
    """The run's summary: written to summary.json and printed (on rank 0), and returned."""
    train_config, totals, plan = run.config.train, run.totals, run.plan
    seconds = totals.train_seconds
    summary = {
        "training_seconds": round(seconds, 3),
        "tokens_seen": plan.train_tokens,
        "tokens_per_second": throughput(run, seconds),
        "final_train_loss": totals.last_train_loss,
        "final_validation_loss": totals.last_validation_loss,
        "steps": plan.total_steps,
        "skipped_steps": totals.skipped_steps,
        "clipped_fraction": totals.clipped_steps / plan.total_steps if train_config.clipping_max_norm is not None else None,
        "peak_learning_rate": totals.peak_learning_rate,
        "precision": run.precision.name,
        "precision_reason": run.precision_reason,
        "parameters": run.model.parameter_count(),
        "world_size": run.dist.world_size,
        "device": str(run.device),
        "peak_memory_bytes": peak_memory(run.device),
        "schedule": train_config.effective_schedule,
        "fast_paths": run.fast_paths,
        "compile_seconds": totals.compile_seconds,
        "cost_per_hour": train_config.cost_per_hour,
        "cost": seconds / 3600 * train_config.cost_per_hour if train_config.cost_per_hour is not None else None,
        "machine": train_config.machine,
        "not_yet_applied": not_yet_applied_notes(run.config),
        "environment": environment(),
        "config": run.config.to_json_dict(),
        "dataset": str(run.dataset.directory),
    }
    if run.dist.is_main:
        write_summary(run.run_dir, summary)
        for line in format_summary(summary):
            run.log.line(line)
    return summary
