"""The Python API: `import gptlab; gptlab.train("runs/x")`. docs/python-api.md documents it.

Each function is a thin wrapper over the function the matching `gptlab` sub-command calls, with the same
defaults; results are the plain dicts the commands print with `--json`. Bad input raises
`gptlab.UserError` (its `.lines` are what the command would print), so a notebook shows one clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from gptlab.config import merge_overrides, overrides_from_mapping
from gptlab.errors import UserError
from gptlab.rundir import DEFAULT_CHECKPOINT

PathLike = Union[str, Path]


def _overrides(overrides: Optional[dict[str, Any]]) -> Optional[dict]:
    """{"learning_rate": 0.001} or {"model": {...}, "train": {...}}, as an experiment's intervention takes them."""
    if not overrides:
        return None
    problems: list[str] = []
    parsed = overrides_from_mapping("overrides", overrides, problems)
    if problems:
        raise UserError(*problems)
    return merge_overrides(parsed)


def prepare(
    source: str,
    out_dir: PathLike,
    *,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_by: str = "auto",
    split_rule: Optional[str] = None,
    seed: int = 1234,
    text_field: str = "text",
    max_tokens: Optional[int] = None,
    context_length: int = 256,
    workers: Optional[int] = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """`gptlab prepare SOURCE OUT_DIR`: tokenise a corpus into a token dataset; returns its meta.json."""
    from gptlab.data.prepare import SplitFractions, prepare_dataset
    from gptlab.data.sources import SourceOptions

    return prepare_dataset(
        source,
        Path(out_dir),
        SplitFractions(validation_fraction, test_fraction),
        seed,
        text_field,
        overwrite,
        show_progress=progress,
        split_by=split_by,
        split_rule=split_rule,
        workers=workers,
        max_tokens=max_tokens,
        context_length=context_length,
        source_options=SourceOptions(text_field=text_field),
    )


def init(run_dir: PathLike, preset: str, dataset: Optional[str] = None) -> dict[str, Any]:
    """`gptlab init RUN_DIR --preset NAME`: write model.json and train.json; never overwrites them."""
    from gptlab.presets import init_run

    return init_run(Path(run_dir), preset, dataset)


def plan(
    run_dir: PathLike,
    *,
    world_size: int = 1,
    overrides: Optional[dict[str, Any]] = None,
    datasets_dir: Optional[PathLike] = None,
    bench_file: Optional[PathLike] = None,
    mfu: Optional[float] = None,
) -> dict[str, Any]:
    """`gptlab train RUN_DIR --dry-run --json`: the plan of a run; writes nothing."""
    from gptlab.bench.plan import plan_run

    return plan_run(
        Path(run_dir),
        world_size=world_size,
        datasets_dir=Path(datasets_dir) if datasets_dir else None,
        overrides=_overrides(overrides),
        bench_file=Path(bench_file) if bench_file else None,
        mfu=mfu,
    )


def train(
    run_dir: PathLike,
    *,
    overrides: Optional[dict[str, Any]] = None,
    resume: Optional[str] = None,
    datasets_dir: Optional[PathLike] = None,
    progress: bool = False,
) -> dict[str, Any]:
    """`gptlab train RUN_DIR [--set KEY=VALUE ...] [--resume CHECKPOINT]`: train; returns summary.json's content."""
    from gptlab.train.loop import train_run

    return train_run(
        Path(run_dir),
        Path(datasets_dir) if datasets_dir else None,
        _overrides(overrides),
        resume,
        show_progress=progress,
    )


def evaluate(
    run_dir: PathLike,
    *,
    task: str = "loss",
    checkpoint: str = DEFAULT_CHECKPOINT,
    precision: str = "fp32",
    save: bool = False,
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """`gptlab eval RUN_DIR --task TASK --json [--save]`: one evaluation task's result. `options` are the
    task's flags with underscores: the loss takes split, start_token, batches, batch_size and datasets_dir;
    hellaswag file, limit and batch_size; ift file, batch_size, learning_rate, seed, dropout, max_epochs, ...
    (`gptlab eval --help` lists them all)."""
    from gptlab.evaluate.tasks import run_task

    paths = {key: Path(value) for key in ("file", "datasets_dir", "out_dir") if (value := options.get(key)) is not None}
    return run_task(
        task,
        Path(run_dir),
        checkpoint=checkpoint,
        precision=precision,
        save=save,
        show_progress=progress,
        **{**options, **paths},
    )


def generate(
    run_dir: PathLike,
    prompt: str = "Every effort moves you",
    *,
    max_new_tokens: int = 20,
    temperature: float = 1.0,
    top_k: Optional[int] = 25,
    seed: Optional[int] = None,
    checkpoint: str = DEFAULT_CHECKPOINT,
) -> dict[str, Any]:
    """`gptlab generate RUN_DIR --json`: continue a prompt (the smoke test's top-k, temperature, draw)."""
    from gptlab.evaluate.sample import generate_from_run

    return generate_from_run(Path(run_dir), prompt, max_new_tokens, temperature, top_k, seed, checkpoint)


def compare(
    run_dirs: list[PathLike],
    *,
    baseline: Optional[PathLike] = None,
    datasets_dir: Optional[PathLike] = None,
    output_format: Optional[str] = None,
    columns: Optional[list[str]] = None,
    budget: Optional[str] = None,
    cost_per_hour: Optional[dict[str, float]] = None,
) -> Union[dict[str, Any], str]:
    """`gptlab compare RUN_DIR... [--baseline DIR] [--columns ...] [--budget time|cost|tokens] [--cost-per-hour
    RUN=PRICE]`: runs by test loss against seed noise, and with `budget` at the cheapest run's time, money or tokens
    (`cost_per_hour`: {run directory or group label: dollars per hour}). Returns the `--format json` data (with a
    `budget` key when asked), or the rendered text when `output_format` is 'terminal', 'markdown' or 'csv'
    (`columns`: which, in that order)."""
    from gptlab.experiments.budget import compare_with_budget, comparison_data, parse_prices, render_comparison
    from gptlab.experiments.tables import check_columns

    if output_format is not None or columns is not None:
        check_columns(columns, output_format or "json")
    prices = parse_prices(f"{run}={price}" for run, price in (cost_per_hour or {}).items())
    comparison, found = compare_with_budget(
        [Path(run) for run in run_dirs],
        Path(baseline) if baseline else None,
        Path(datasets_dir) if datasets_dir else None,
        lambda line: None,
        kind=budget,
        prices=prices if cost_per_hour is not None else None,
        price_words="cost_per_hour",
    )
    if output_format is None:
        return comparison_data(comparison, found)
    return render_comparison(comparison, found, output_format, columns)
