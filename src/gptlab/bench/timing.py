"""`gptlab bench`: tokens/s, ms per step, model FLOPs per token, MFU, peak memory and phase times of a run's
configuration, once or once per `--compare` column."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from gptlab.bench.harness import (
    check_single_process,
    dataset_for,
    prepared_run,
    step_peak_memory,
    step_tokens,
    synchronize,
    time_phases,
    train_step,
)
from gptlab.bench.memory import minor_page_faults, release_memory
from gptlab.config import ModelConfig, RunConfig, TrainConfig, load_run_config, merge_overrides, parse_assignments
from gptlab.errors import UserError
from gptlab.flops import flops_per_token, lookup_peak_tflops, matmul_parameters
from gptlab.train.record import device_name, environment

RESULT_FIELDS = (
    "run_dir",
    "overrides",
    "device",
    "device_name",
    "precision",
    "parameters",
    "active_parameters",
    "matmul_parameters",
    "flops_per_token",
    "microbatch_size",
    "gradient_accumulation_steps",
    "context_length",
    "tokens_per_step",
    "tokens",
    "warmup_steps",
    "warmup_seconds",
    "steps",
    "step_ms",
    "ms_per_step",
    "tokens_per_second",
    "model_tflops_per_second",
    "peak_tflops",
    "peak_tflops_source",
    "mfu",
    "peak_memory_bytes",
    "peak_memory_method",
    "page_faults_per_step",
    "phase_steps",
    "phases_ms",
    "config",
    "environment",
)


def measure(
    config: RunConfig,
    *,
    steps: int = 10,
    warmup_steps: int = 3,
    phase_steps: int = 3,
    dataset_dir: Optional[Path] = None,
    peak_tflops: Optional[float] = None,
    measure_memory: bool = True,
) -> dict[str, Any]:
    """Time `steps` training steps of `config` after `warmup_steps` untimed ones (which include any
    compilation); then `phase_steps` steps timed phase by phase, then one step for peak memory on the CPU."""
    memory_steps = 1 if measure_memory else 0
    total = warmup_steps + steps + phase_steps + memory_steps
    with prepared_run(config, total, dataset_dir) as run:
        device = run.device
        started = time.perf_counter()
        for step in range(warmup_steps):
            train_step(run, step)
        synchronize(device)
        warmup_seconds = time.perf_counter() - started
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        step_ends = []
        faults_before = minor_page_faults()
        started = time.perf_counter()
        for step in range(warmup_steps, warmup_steps + steps):
            train_step(run, step)
            step_ends.append(time.perf_counter())
        synchronize(device)
        elapsed = time.perf_counter() - started
        faults = minor_page_faults()
        page_faults_per_step = (
            (faults - faults_before) // steps if faults is not None and faults_before is not None else None
        )
        step_ms = [round((end - begin) * 1e3, 3) for begin, end in zip([started] + step_ends[:-1], step_ends)]

        peak_memory, memory_method = None, None
        if measure_memory and device.type == "cuda":
            peak_memory, memory_method = (
                torch.cuda.max_memory_allocated(device),
                "torch.cuda.max_memory_allocated over the timed steps",
            )
        first_phase_step = warmup_steps + steps
        phases = time_phases(run, range(first_phase_step, first_phase_step + phase_steps)) if phase_steps else None
        if measure_memory and device.type != "cuda":
            peak_memory, memory_method = step_peak_memory(run, first_phase_step + phase_steps)
        name = device_name(device)
        precision = run.precision.name
        parameters = run.model.parameter_count()
        active_parameters = run.model.active_parameter_count()

    tokens_per_step = step_tokens(config)
    tokens_per_second = tokens_per_step * steps / elapsed
    flops = flops_per_token(config.model)
    achieved = tokens_per_second * flops / 1e12
    if peak_tflops is not None:
        peak, peak_source = peak_tflops, "--peak-tflops"
    else:
        peak, peak_source = (
            (lookup_peak_tflops(name, precision) or (None, None)) if device.type == "cuda" else (None, None)
        )
    return {
        "device": str(device),
        "device_name": name,
        "precision": precision,
        "parameters": parameters,
        "active_parameters": active_parameters,
        "matmul_parameters": matmul_parameters(config.model),
        "flops_per_token": flops,
        "microbatch_size": config.train.microbatch_size,
        "gradient_accumulation_steps": config.train.gradient_accumulation_steps,
        "context_length": config.model.context_length,
        "tokens_per_step": tokens_per_step,
        "tokens": str(dataset_dir) if dataset_dir is not None else "synthetic",
        "warmup_steps": warmup_steps,
        "warmup_seconds": round(warmup_seconds, 3),
        "steps": steps,
        "step_ms": step_ms,
        "ms_per_step": round(elapsed / steps * 1e3, 3),
        "tokens_per_second": round(tokens_per_second, 1),
        "model_tflops_per_second": float(f"{achieved:.6g}"),
        "peak_tflops": peak,
        "peak_tflops_source": peak_source,
        "mfu": float(f"{achieved / peak:.6g}") if peak else None,
        "peak_memory_bytes": peak_memory,
        "peak_memory_method": memory_method,
        "page_faults_per_step": page_faults_per_step,
        "phase_steps": phase_steps,
        "phases_ms": phases,
        "config": config.to_json_dict(),
    }


def _check_options(steps: int, warmup_steps: int, phase_steps: int, peak_tflops: Optional[float]) -> None:
    if steps < 1:
        raise UserError(f"--steps {steps}: must be at least 1")
    if warmup_steps < 0 or phase_steps < 0:
        raise UserError(f"--warmup-steps {warmup_steps} / --phase-steps {phase_steps}: must be 0 or more")
    if peak_tflops is not None and not (peak_tflops > 0 and math.isfinite(peak_tflops)):
        raise UserError(
            f"--peak-tflops {peak_tflops}: must be a positive number of TFLOP/s, e.g. 989 for an H100 in bf16"
        )


def bench_run(
    run_dir: Path,
    *,
    overrides: Optional[dict[str, dict]] = None,
    settings: tuple[str, ...] = (),
    steps: int = 10,
    warmup_steps: int = 3,
    phase_steps: int = 3,
    synthetic: bool = False,
    datasets_dir: Optional[Path] = None,
    peak_tflops: Optional[float] = None,
) -> dict[str, Any]:
    """Benchmark the run in `run_dir` (with `overrides` applied; `settings` are their KEY=VALUE spelling, for the record)."""
    check_single_process()
    _check_options(steps, warmup_steps, phase_steps, peak_tflops)
    run_dir = Path(run_dir)
    config = load_run_config(run_dir, overrides)
    total = warmup_steps + steps + phase_steps + 1
    dataset_dir = None if synthetic else dataset_for(config, run_dir, datasets_dir, total)
    result = {"run_dir": str(run_dir), "overrides": list(settings)}
    result.update(
        measure(
            config,
            steps=steps,
            warmup_steps=warmup_steps,
            phase_steps=phase_steps,
            dataset_dir=dataset_dir,
            peak_tflops=peak_tflops,
        )
    )
    result["environment"] = environment()
    return {key: result[key] for key in RESULT_FIELDS}


def compare_speeds(
    run_dir: Path,
    assignments: tuple[str, ...],
    *,
    base_overrides: Optional[dict[str, dict]] = None,
    settings: tuple[str, ...] = (),
    progress: Optional[Callable[[str], None]] = None,
    **options: Any,
) -> dict[str, Any]:
    """`bench_run` once per KEY=VALUE in `assignments`, each on top of `base_overrides`, in that order."""
    if not assignments:
        raise UserError(
            "--compare: give one KEY=VALUE per column after RUN_DIR, e.g. --compare precision=fp32 precision=bf16"
        )
    columns_overrides = []
    for assignment in assignments:
        column = parse_assignments((assignment,), option="--compare")
        try:
            load_run_config(Path(run_dir), merge_overrides(base_overrides, column))
        except UserError as error:
            raise UserError(*[f"--compare {assignment}: {line}" for line in error.lines]) from None
        if column.get("train", {}).get("parallelism") == "fsdp":
            raise UserError(
                f"--compare {assignment}: gptlab bench runs in one process, where FSDP has nothing to shard, so its column "
                "would time DDP's code again; measure the cost of sharding under torchrun with "
                "`python benchmarks/fsdp_memory.py` (DDP and FSDP on 2 processes: tokens/s and bytes per rank)"
            )
        columns_overrides.append(column)
    columns = []
    for index, (assignment, column) in enumerate(zip(assignments, columns_overrides), start=1):
        if progress is not None:
            progress(f"[{index}/{len(assignments)}] {assignment}")
        result = bench_run(
            run_dir, overrides=merge_overrides(base_overrides, column), settings=(*settings, assignment), **options
        )
        columns.append({"column": assignment, **result})
        release_memory(torch.device(result["device"]))
    return {"run_dir": str(run_dir), "columns": columns, "environment": environment()}


def seconds_per_step(
    model_config: ModelConfig,
    train_config: TrainConfig,
    steps: int = 3,
    warmup_steps: int = 1,
    device: torch.device | str = "cpu",
) -> float:
    """Mean wall time of one optimizer step (all microbatches) after `warmup_steps` untimed ones, on random tokens."""
    device = torch.device(device)
    config = RunConfig(model=model_config, train=train_config.model_copy(update={"device": device.type}))
    result = measure(config, steps=steps, warmup_steps=warmup_steps, phase_steps=0, measure_memory=False)
    return result["ms_per_step"] / 1e3
