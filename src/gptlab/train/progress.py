"""What the training loop reports: the header, each step's record, the progress bar, a log line every
log_interval steps (and at most every LOG_LINE_SECONDS), validation results, the time and cost estimate,
and the summary at the end. Everything printed also goes to train.log; the same numbers go to the
trackers of train.json's `loggers` (gptlab.train.loggers)."""

from __future__ import annotations

import datetime
import functools
import math
import resource
import sys
import time
from typing import Any, Optional

import torch

from gptlab.flops import flops_per_token, lookup_peak_tflops
from gptlab.rundir import write_summary
from gptlab.train.record import device_name, environment, format_summary, set_fitting_postfix
from gptlab.train.state import Training
from gptlab.words import counted, step_label

ESTIMATE_AFTER_STEPS = 3  # steps timed before the time and cost of the whole run are estimated
LOG_LINE_SECONDS = 10.0  # a log line at most this often: on a CPU the step values are read back every step


def log_header(run: Training) -> None:
    model_config, train_config, plan = run.config.model, run.config.train, run.plan
    env = environment()
    run.log.line(
        f"gptlab {env['gptlab']} | Python {env['python']} | torch {env['torch']} | CUDA {env['cuda']} | device {run.device}"
        + (f" ({env['device_name']})" if "device_name" in env else "")
        + f" | world size {run.dist.world_size}"
        + (f" | CPU matmul: {env['cpu_matmul']} ({env['cpu_matmul_reason']})" if run.device.type == "cpu" else "")
    )
    experts = model_config.moe
    run.log.line(
        f"Model: {run.model.parameter_count():,} parameters ({counted(model_config.n_layers, 'layer')}, {model_config.emb_dim} wide, "
        f"{counted(model_config.n_heads, 'head')}, context {model_config.context_length}, tied head: {model_config.tie_weights})"
        + (
            f"; mixture of experts: {experts.num_active_experts} of {experts.num_experts} per token, "
            f"{run.model.active_parameter_count():,} active parameters"
            if experts is not None
            else ""
        )
    )
    run.log.line(
        f"Data: {run.dataset.directory} | train tokens {plan.train_tokens:,} from token {plan.start_token:,} | "
        f"{plan.total_steps:,} steps of {plan.global_batch_tokens:,} tokens"
    )
    run.log.line(
        f"Precision: {run.precision.name} ({run.precision_reason}) | schedule: {train_config.effective_schedule} | peak lr {train_config.learning_rate} | "
        f"clipping: {train_config.clipping_max_norm or 'off'} | validation: "
        + (f"{run.validation.batches} batches" if run.validation else "off")
    )
    if run.validation is None and train_config.validation_batches > 0:
        run.log.line(
            f"Note: validation_batches is {train_config.validation_batches} but {run.dataset.directory} has no validation split, "
            f"so validation is off"
            + (" and 'best' is picked by train loss" if train_config.best_by == "validation" else "")
        )


def record_step(run: Training, step: int, learning_rate: float, outcome: dict[str, Any], elapsed: float) -> None:
    """Count the step in the totals and the interval statistics, and add its metrics.jsonl record."""
    run.totals.add_step(learning_rate, outcome["clipped"], outcome["skipped"], outcome["loss"])
    run.interval.add(outcome["loss"], outcome["grad_norm"], outcome["clipped"])
    run.metrics.add(
        {
            "step": step,
            "loss": json_float(outcome["loss"]),
            "learning_rate": learning_rate,
            "grad_norm": json_float(outcome["grad_norm"]),
            "clipped": outcome["clipped"],
            "skipped": outcome["skipped"],
            "tokens_seen": (step + 1) * run.plan.global_batch_tokens,
            "elapsed_seconds": round(elapsed, 4),
            "train_seconds": round(run.totals.train_seconds, 4),
        }
    )
    run.loggers.scalars(
        step,
        {"loss/train": outcome["loss"], "train/learning_rate": learning_rate, "train/grad_norm": outcome["grad_norm"]},
    )


def show_progress(
    run: Training, bar, step: int, learning_rate: float, outcome: dict[str, Any], train_seconds_at_start: float
) -> None:
    """After the step values are read back: the bar's numbers, speed, cost and memory to the trackers, and a log line when
    log_interval steps and LOG_LINE_SECONDS have both passed since the last one (and always after the last step).
    The log line goes to train.log, and to the console too when there is no progress bar on a terminal."""
    totals = run.totals
    seconds = max(totals.train_seconds - train_seconds_at_start, 1e-9)
    tokens_per_second = throughput(run, seconds, since_start=True)
    postfix = {"loss": f"{outcome['loss']:.3f}"}  # most important first: narrow terminals drop from the end
    if totals.last_validation_loss is not None:
        postfix["val"] = f"{totals.last_validation_loss:.3f}"
    postfix["tok/s"] = f"{tokens_per_second:,.0f}"
    if run.config.train.cost_per_hour is not None:
        postfix["$"] = f"{cost_so_far(run):.2f}"
    set_fitting_postfix(bar, postfix)

    utilisation = mfu(run, tokens_per_second)
    run.loggers.scalars(
        step,
        {  # each step's loss, learning rate and gradient norm went with its record
            "speed/tokens_per_second": tokens_per_second,
            "speed/mfu": utilisation,
            "usage/cost_dollars": cost_so_far(run),
            "memory/peak_allocated_gib": _gib(peak_memory(run.device)),
            "memory/host_peak_rss_gib": _gib(host_peak_rss()),
        },
    )
    last_logged_step, last_logged_at = run.last_log_line
    now = time.monotonic()
    due = (
        step - last_logged_step >= run.fast_paths["log_interval"] and now - last_logged_at >= LOG_LINE_SECONDS
    ) or step == run.plan.total_steps - 1
    if not due:
        return
    run.last_log_line = (step, now)
    steps_timed = max(1, totals.timed_steps - run.start_timed_steps)
    remaining = seconds / steps_timed * (run.plan.total_steps - step - 1)
    parts = [step_label(step, run.plan.total_steps), f"loss {outcome['loss']:.4f}"]
    if totals.last_validation_loss is not None:
        parts.append(f"val {totals.last_validation_loss:.4f}")
    parts += [f"lr {learning_rate:.3e}", f"grad norm {outcome['grad_norm']:.3f}", f"{tokens_per_second:,.0f} tok/s"]
    if utilisation is not None:
        parts.append(f"MFU {utilisation:.1%}")
    parts += [f"elapsed {_clock(totals.train_seconds)}", f"ETA {_clock(remaining)}"]
    if run.config.train.cost_per_hour is not None:
        parts.append(f"${cost_so_far(run):.2f}")
    run.log.line(" | ".join(parts), console=not run.show_progress)


def show_validation(run: Training, step: int, loss: float) -> None:
    """A validation result as its own line, on the console whether or not a progress bar runs."""
    run.log.line(
        f"{step_label(step, run.plan.total_steps)} | validation loss {loss:.4f} | perplexity {math.exp(min(loss, 700)):,.2f}"
    )
    run.loggers.scalars(step, {"loss/validation": loss, "validation/perplexity": math.exp(min(loss, 700))})


def cost_so_far(run: Training) -> Optional[float]:
    per_hour = run.config.train.cost_per_hour
    return run.totals.train_seconds / 3600 * per_hour if per_hour is not None else None


def mfu(run: Training, tokens_per_second: float) -> Optional[float]:
    """Model FLOPs utilisation against the datasheet peak of every process's GPU; None off a known GPU."""
    peak = _peak_flops(str(run.device), run.precision.name)
    if peak is None:
        return None
    return tokens_per_second * flops_per_token(run.config.model) / (peak * run.dist.world_size)


@functools.lru_cache(maxsize=None)
def _peak_flops(device: str, precision: str) -> Optional[float]:
    if not device.startswith("cuda"):
        return None
    found = lookup_peak_tflops(device_name(torch.device(device)), precision)
    return found[0] * 1e12 if found else None


def host_peak_rss() -> Optional[int]:
    """This process's peak resident memory in bytes (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _gib(size: Optional[int]) -> Optional[float]:
    return size / 2**30 if size is not None else None


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def throughput(run: Training, seconds: float, since_start: bool = False) -> float:
    """Tokens per second over the timed steps (a compiling first step is not one of them)."""
    steps = run.totals.timed_steps - (run.start_timed_steps if since_start else 0)
    return steps * run.plan.global_batch_tokens / seconds if seconds > 0 else 0.0


def log_estimate(run: Training, step: int, train_seconds_at_start: float) -> str:
    """Once the first steps are timed: how long, and what it will cost, to finish."""
    totals = run.totals
    seconds_per_step = (totals.train_seconds - train_seconds_at_start) / max(
        1, totals.timed_steps - run.start_timed_steps
    )
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
        "clipped_fraction": totals.clipped_steps / plan.total_steps
        if train_config.clipping_max_norm is not None
        else None,
        "peak_learning_rate": totals.peak_learning_rate,
        "precision": run.precision.name,
        "precision_reason": run.precision_reason,
        "parameters": run.model.parameter_count(),
        "active_parameters": run.model.active_parameter_count(),
        "world_size": run.dist.world_size,
        "device": str(run.device),
        "peak_memory_bytes": peak_memory(run.device),
        "schedule": train_config.effective_schedule,
        "fast_paths": run.fast_paths,
        "compile_seconds": totals.compile_seconds,
        "validation_seconds": round(totals.validation_seconds, 3),
        "checkpoint_blocked_seconds": round(totals.checkpoint_blocked_seconds, 3),
        "checkpoint_save_seconds": round(totals.checkpoint_save_seconds, 3),
        "cost_per_hour": train_config.cost_per_hour,
        "cost": seconds / 3600 * train_config.cost_per_hour if train_config.cost_per_hour is not None else None,
        "machine": train_config.machine,
        "environment": environment(),
        "config": run.config.to_json_dict(),
        "dataset": str(run.dataset.directory),
    }
    if run.dist.is_main:
        write_summary(run.run_dir, summary)
        for line in format_summary(summary):
            run.log.line(line)
    run.loggers.finish(summary)
    return summary
