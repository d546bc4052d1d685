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
    checkpoint: str = DEFAULT_CHECKPOINT,
    split: Optional[str] = None,
    start_token: int = 0,
    batches: Optional[int] = None,
    batch_size: Optional[int] = None,
    precision: str = "fp32",
    datasets_dir: Optional[PathLike] = None,
    save: bool = False,
    task: str = "loss",
    file: Optional[PathLike] = None,
    limit: Optional[int] = None,
) -> dict[str, Any]:
    """`gptlab eval RUN_DIR --json [--save]`: mean cross-entropy of a checkpoint on a named slice of tokens;
    with `task="hellaswag"` (`gptlab eval --task hellaswag`), HellaSwag accuracy on `file` (default: the cached
    validation file), its first `limit` items."""
    from gptlab.evaluate.loss import evaluate_run
    from gptlab.rundir import write_evaluation

    if task == "hellaswag":
        from gptlab.evaluate.hellaswag import evaluate_hellaswag_run
        from gptlab.rundir import write_hellaswag_evaluation

        if split is not None or start_token or batches is not None or datasets_dir is not None:
            raise UserError("task='hellaswag': split, start_token, batches and datasets_dir are for the loss")
        result = evaluate_hellaswag_run(
            Path(run_dir), checkpoint, Path(file) if file else None, limit, batch_size, precision
        )
        return write_hellaswag_evaluation(Path(run_dir), result, checkpoint) if save else result
    if task != "loss" or file is not None or limit is not None:
        raise UserError(f"task={task!r}: 'loss' or 'hellaswag'; file and limit are for 'hellaswag'")

    result = evaluate_run(
        Path(run_dir),
        checkpoint,
        split,
        start_token,
        batches,
        batch_size,
        precision,
        Path(datasets_dir) if datasets_dir else None,
    )
    return write_evaluation(Path(run_dir), result, checkpoint) if save else result


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
