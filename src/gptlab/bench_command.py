"""Click command: `gptlab bench`. It parses its arguments, calls one function of `gptlab.bench`, prints its result."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from gptlab.click_types import NON_NEGATIVE, POSITIVE, FiniteFloatRange
from gptlab.errors import UserError
from gptlab.files import strict_json


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("assignments", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--steps", type=POSITIVE, default=10, show_default=True, help="Timed training steps.")
@click.option(
    "--warmup-steps",
    type=NON_NEGATIVE,
    default=3,
    show_default=True,
    help="Untimed steps first (compilation happens here).",
)
@click.option(
    "--phase-steps",
    type=NON_NEGATIVE,
    default=3,
    show_default=True,
    help="Further steps timed phase by phase (data, forward, backward, optimizer); 0 skips them.",
)
@click.option(
    "--synthetic", is_flag=True, help="Random tokens instead of the run's dataset (which then need not exist)."
)
@click.option(
    "--compare",
    is_flag=True,
    help="Benchmark once per KEY=VALUE given after RUN_DIR and print the results side by side, "
    "e.g. --compare precision=fp32 precision=bf16.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config key for every measurement (repeatable).",
)
@click.option(
    "--peak-tflops",
    type=FiniteFloatRange(min=0.0, min_open=True),
    default=None,
    help="Peak TFLOP/s of the device for MFU, instead of the built-in table of GPUs (needed for MFU on a CPU).",
)
@click.option(
    "--find-max-microbatch",
    is_flag=True,
    help="Find the largest microbatch that fits in device memory (doubling, then bisection) instead of timing.",
)
@click.option(
    "--memory-limit-bytes",
    "memory_limit",
    default=None,
    metavar="BYTES",
    help="With --find-max-microbatch: treat the device as having this much memory (e.g. 40GB, 512MiB).",
)
@click.option("--datasets-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="As for `train`.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def bench(
    run_dir: Path,
    assignments: tuple[str, ...],
    steps: int,
    warmup_steps: int,
    phase_steps: int,
    synthetic: bool,
    compare: bool,
    settings: tuple[str, ...],
    peak_tflops: Optional[float],
    find_max_microbatch: bool,
    memory_limit: Optional[str],
    datasets_dir: Optional[Path],
    as_json: bool,
) -> None:
    """Measure the training speed of RUN_DIR's config with the trainer's own step code.

    Prints tokens/s, ms per step, model FLOPs per token, MFU against the GPU's datasheet peak, peak memory,
    and the time spent in data, forward, backward and optimizer. Nothing is written into RUN_DIR.
    Formulas and methods: docs/performance.md.
    """
    from gptlab import bench as throughput
    from gptlab.config import parse_assignments

    if assignments and not compare:
        raise UserError(
            f"{assignments[0]}: KEY=VALUE after RUN_DIR is only for --compare; use --set {assignments[0]} to change the config"
        )
    if memory_limit is not None and not find_max_microbatch:
        raise UserError("--memory-limit-bytes: only applies with --find-max-microbatch")
    if find_max_microbatch and compare:
        raise UserError("--find-max-microbatch and --compare: give one of them")
    overrides = parse_assignments(settings)

    def progress(line: str) -> None:
        click.echo(line, err=True)

    if find_max_microbatch:
        limit = throughput.parse_bytes(memory_limit) if memory_limit is not None else None
        result = throughput.find_max_microbatch(
            run_dir, overrides=overrides, memory_limit_bytes=limit, progress=progress
        )
        lines = throughput.format_max_microbatch(result)
    elif compare:
        result = throughput.compare_speeds(
            run_dir,
            assignments,
            base_overrides=overrides,
            settings=settings,
            progress=progress,
            steps=steps,
            warmup_steps=warmup_steps,
            phase_steps=phase_steps,
            synthetic=synthetic,
            datasets_dir=datasets_dir,
            peak_tflops=peak_tflops,
        )
        lines = throughput.format_comparison(result)
    else:
        result = throughput.bench_run(
            run_dir,
            overrides=overrides,
            settings=settings,
            steps=steps,
            warmup_steps=warmup_steps,
            phase_steps=phase_steps,
            synthetic=synthetic,
            datasets_dir=datasets_dir,
            peak_tflops=peak_tflops,
        )
        lines = throughput.format_bench(result)
    if as_json:
        click.echo(strict_json(result, indent=2))
    else:
        for line in lines:
            click.echo(line)
