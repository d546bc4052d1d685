"""The largest microbatch that fits in device memory: doubling, then bisection, each trial two real steps."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from gptlab.bench.harness import check_single_process, prepared_run, step_peak_memory
from gptlab.bench.memory import (
    MemoryLimitExceeded,
    available_host_memory,
    format_bytes,
    is_out_of_memory,
    release_memory,
)
from gptlab.config import RunConfig, load_run_config
from gptlab.errors import UserError
from gptlab.rundir import TRAIN_FILE
from gptlab.train.record import device_name, environment

TRIAL_STEPS = 2  # a microbatch trial runs two steps: AdamW's state only exists from the first step's end
MAX_MICROBATCH_SEARCHED = 1 << 16


@dataclass
class Trial:
    microbatch: int
    fits: bool
    outcome: str  # "fits", "over the memory limit" or "out of memory"
    peak_memory_bytes: Optional[int]
    seconds: float


def _predicted_fit(trials: list[Trial], limit: int) -> Optional[int]:
    """The largest microbatch a straight line through the two largest fitting trials' peaks keeps under `limit`."""
    fitting = sorted((t for t in trials if t.fits and t.peak_memory_bytes is not None), key=lambda t: t.microbatch)[-2:]
    if len(fitting) < 2:
        return None
    (small, large) = fitting
    per_sequence = (large.peak_memory_bytes - small.peak_memory_bytes) / (large.microbatch - small.microbatch)
    if per_sequence <= 0:
        return None
    return large.microbatch + int((limit - large.peak_memory_bytes) // per_sequence)


def search_max_microbatch(
    attempt: Callable[[int], Trial], limit: Optional[int] = None, upper: int = MAX_MICROBATCH_SEARCHED
) -> tuple[int, list[Trial]]:
    """Double from 1 until a microbatch does not fit, then bisect between the last fit and the first failure.

    When the memory limit is known, the first two probes of the bisection go where a straight line through
    the measured peaks predicts the largest fit and one above it, which usually settles it; midpoints
    follow if not, and at once if the predicted fit does not fit. Assumes memory grows with the microbatch. Returns (largest fit, 0 if none; trials).
    """
    trials: list[Trial] = []

    def fits(microbatch: int) -> bool:
        trials.append(attempt(microbatch))
        return trials[-1].fits

    largest_fit, microbatch = 0, 1
    while microbatch <= upper and fits(microbatch):
        largest_fit, microbatch = microbatch, microbatch * 2
    if largest_fit == 0 or microbatch > upper:
        return largest_fit, trials
    smallest_failure = microbatch
    guided_probes = 2 if limit is not None else 0
    while smallest_failure - largest_fit > 1:
        probe = (largest_fit + smallest_failure) // 2
        predicted = _predicted_fit(trials, limit) if guided_probes else None
        if predicted is not None:
            probe, guided_probes = min(max(predicted, largest_fit + 1), smallest_failure - 1), guided_probes - 1
        if fits(probe):
            largest_fit = probe
        else:
            smallest_failure = probe
            # A straight line that overshot stays wrong one below (on an H200 the allocator's overhead near the
            # card's limit made 397 and then 396 fail where 390 was the answer): bisect from here.
            guided_probes = 0
    return largest_fit, trials


def try_microbatch(config: RunConfig, microbatch: int, limit: Optional[int]) -> Trial:
    """Two training steps at `microbatch` on random tokens; out-of-memory errors become a failed trial."""
    trial_config = config.model_copy(update={"train": config.train.model_copy(update={"microbatch_size": microbatch})})
    device = None
    started = time.perf_counter()
    outcome, peak = "fits", None
    try:
        with prepared_run(trial_config, TRIAL_STEPS) as run:
            device = run.device
            peak = max(step_peak_memory(run, step, limit)[0] for step in range(TRIAL_STEPS))
            del run
    except Exception as error:  # noqa: BLE001 - only out-of-memory is caught; everything else is re-raised
        if not is_out_of_memory(error):
            raise
        outcome = "over the memory limit" if isinstance(error, MemoryLimitExceeded) else "out of memory"
    release_memory(device or torch.device("cpu"))
    return Trial(microbatch, outcome == "fits", outcome, peak, round(time.perf_counter() - started, 3))


def find_max_microbatch(
    run_dir: Path,
    *,
    overrides: Optional[dict[str, dict]] = None,
    memory_limit_bytes: Optional[int] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """The largest microbatch of the run's config that trains (two steps, random tokens) within device memory.

    On a GPU the limit is the device (a real out-of-memory error); with `memory_limit_bytes` the process
    is also capped at that many bytes (`torch.cuda.set_per_process_memory_fraction`), as on a smaller card.
    On the CPU a trial fails when the tensor bytes alive would exceed the limit: `memory_limit_bytes`, else
    the memory available when the search starts.
    """
    check_single_process()
    if memory_limit_bytes is not None and memory_limit_bytes < 1:
        raise UserError(f"--memory-limit-bytes {memory_limit_bytes}: must be a positive number of bytes")
    run_dir = Path(run_dir)
    config = load_run_config(run_dir, overrides)
    from gptlab.train.distributed import from_environment, pick_device

    device = pick_device(config.train.device, from_environment())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{run_dir / TRAIN_FILE}: device: 'cuda' was asked for but torch sees no CUDA device")
    release_memory(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        limit = memory_limit_bytes if memory_limit_bytes is not None else free
        limit_source = (
            "--memory-limit-bytes (per-process memory fraction)"
            if memory_limit_bytes is not None
            else "free device memory at start"
        )
        if memory_limit_bytes is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, memory_limit_bytes / total), device)
        cpu_limit = None
    else:
        limit = memory_limit_bytes if memory_limit_bytes is not None else available_host_memory()
        limit_source = "--memory-limit-bytes (simulated)" if memory_limit_bytes is not None else "MemAvailable at start"
        cpu_limit = limit

    def attempt(microbatch: int) -> Trial:
        trial = try_microbatch(config, microbatch, cpu_limit)
        if progress is not None:
            progress(
                f"microbatch {microbatch}: {trial.outcome}"
                + (f" (peak {format_bytes(trial.peak_memory_bytes)})" if trial.fits else "")
                + f", {trial.seconds:.1f} s"
            )
        return trial

    try:
        largest, trials = search_max_microbatch(attempt, limit)
    finally:
        if device.type == "cuda" and memory_limit_bytes is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {
        "run_dir": str(run_dir),
        "max_microbatch": largest,
        "trials": [asdict(trial) for trial in trials],
        "trial_count": len(trials),
        "hit_search_bound": largest >= MAX_MICROBATCH_SEARCHED,
        "memory_limit_bytes": limit,
        "memory_limit_source": limit_source,
        "peak_memory_method": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "tensor bytes alive, tracked op by op (TensorBytesTracker)",
        "device": str(device),
        "device_name": device_name(device),
        "precision": config.train.effective_precision,
        "context_length": config.model.context_length,
        "gradient_accumulation_steps": config.train.gradient_accumulation_steps,
        "trial_steps": TRIAL_STEPS,
        "config": config.to_json_dict(),
        "environment": environment(),
    }
