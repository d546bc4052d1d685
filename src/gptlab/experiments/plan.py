"""From an experiment file to run directories: one per (variant, seed), with fully resolved configs.

Runs are ordered seed by seed (every variant at the first seed, then every variant at the next), so an
experiment stopped half-way already holds comparable runs of every variant.

Common random numbers: a new experiment's runs train with `random_streams: true` (each parameter initialised from its
own stream, see gptlab/random_streams.py), so an intervention that adds or reshapes parameters leaves every other
parameter's initial values as the baseline seed's, and per-seed differences measure the intervention, not another
initialisation (docs/experiments.md has the measurement). An experiment whose runs started before keeps what they
trained with; the file's `random_streams` key, or the baseline's train.json, decides explicitly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab.config import TrainConfig, apply_overrides, validate_run_config
from gptlab.errors import UserError
from gptlab.experiments.spec import BASELINE, Experiment
from gptlab.files import atomic_write_json, read_json
from gptlab.rundir import CHECKPOINTS, MODEL_FILE, TRAIN_FILE, has_summary


@dataclass(frozen=True)
class PlannedRun:
    variant: str
    seed: int
    run_dir: Path
    model: dict[str, Any]
    train: dict[str, Any]
    changes: str  # the variant's overrides in words, "-" for the baseline


def run_dir_for(experiment: Experiment, variant: str, seed: int) -> Path:
    return experiment.runs_dir / variant / f"seed-{seed}"


def describe_changes(overrides: dict[str, dict[str, Any]]) -> str:
    parts = [
        f"{key}={json.dumps(value)}" for file_name in ("model", "train") for key, value in overrides[file_name].items()
    ]
    return ", ".join(parts) or "-"


def _dataset_seen_from(run_dir: Path, baseline_dir: Path, dataset: Any) -> Any:
    """The baseline's `dataset`, rewritten so that it still points at the same folder from `run_dir`."""
    if not isinstance(dataset, str) or Path(dataset).is_absolute() or not (baseline_dir / dataset).is_dir():
        return dataset
    return os.path.relpath((baseline_dir / dataset).resolve(), run_dir.resolve())


def plan_runs(experiment: Experiment) -> list[PlannedRun]:
    """Every (variant, seed) run with its validated, fully resolved model and train configs; writes nothing."""
    base_model = read_json(experiment.baseline_dir / MODEL_FILE)
    base_train = read_json(experiment.baseline_dir / TRAIN_FILE)
    resolved: dict[str, tuple[dict, dict]] = {}
    problems: list[str] = []
    for variant, overrides in experiment.variants.items():
        label = f"{experiment.path} [{variant} over {experiment.baseline_dir}]"
        try:
            model_data, train_data = apply_overrides(base_model, base_train, overrides)
            config = validate_run_config(
                Path(f"{label} model.json"), model_data, Path(f"{label} train.json"), train_data
            )
        except UserError as error:
            problems += error.lines
            continue
        resolved[variant] = (config.model.model_dump(mode="json"), config.train.model_dump(mode="json"))
    if problems:
        raise UserError(*problems)
    streams = random_streams(experiment)
    planned = []
    for seed in experiment.seeds:
        for variant, (model, train) in resolved.items():
            run_dir = run_dir_for(experiment, variant, seed)
            train = {
                **train,
                **(
                    {"random_streams": streams} if "random_streams" not in experiment.variants[variant]["train"] else {}
                ),
                "random_seed": seed,
                "dataset": _dataset_seen_from(run_dir, experiment.baseline_dir, train["dataset"]),
            }
            planned.append(
                PlannedRun(variant, seed, run_dir, model, train, describe_changes(experiment.variants[variant]))
            )
    return planned


def random_streams(experiment: Experiment) -> bool:
    """Whether the runs train with common random numbers: as the experiment file or the baseline's train.json says;
    else as the runs already planned were written (older ones without the key: off), and on for a new experiment."""
    if experiment.random_streams is not None:
        return experiment.random_streams
    asked = read_json(experiment.baseline_dir / TRAIN_FILE).get("random_streams")
    if isinstance(asked, bool):
        return asked
    for variant in experiment.variants:
        for seed in experiment.seeds:
            written = run_dir_for(experiment, variant, seed) / TRAIN_FILE
            if written.is_file():
                return read_json(written).get("random_streams") is True
    return True


def streams_words(experiment: Experiment) -> str:
    """The plan's line on common random numbers."""
    if random_streams(experiment):
        return (
            "Common random numbers: on (random_streams: true in every run): each parameter starts from its own stream of "
            "(seed, name), so an intervention leaves the others' initial values as the baseline seed's and seeds pair "
            'more tightly; "random_streams": false in the experiment file turns it off.'
        )
    return "Common random numbers: off (random_streams: false): " + (
        "as the experiment file or the baseline's train.json says."
        if experiment.random_streams is not None
        or isinstance(read_json(experiment.baseline_dir / TRAIN_FILE).get("random_streams"), bool)
        else 'its runs were planned without them; "random_streams": true in the file (for new run folders) turns it on.'
    )


def has_started(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINTS).is_dir() or has_summary(run_dir)


def _conflicts(run: PlannedRun) -> list[str]:
    """Keys where a run that has already trained differs from the plan: retraining it silently would mix configs."""
    problems = []
    for file_name, planned in ((MODEL_FILE, run.model), (TRAIN_FILE, run.train)):
        path = run.run_dir / file_name
        existing = read_json(path) if path.is_file() else {}
        differing = sorted(
            key
            for key in set(planned) | set(existing)
            if existing.get(key, _default(file_name, key)) != planned.get(key)
        )
        if differing:
            problems.append(
                f"{path}: this run has already trained with other values of {', '.join(differing)} than the experiment "
                f"file now gives; delete {run.run_dir} to retrain it, or restore the experiment file"
            )
    return problems


def _default(file_name: str, key: str) -> Any:
    """A train.json key written before gptlab knew it reads as its default (None for model.json and unknown keys)."""
    field = TrainConfig.model_fields.get(key) if file_name == TRAIN_FILE else None
    return field.default if field is not None and not field.is_required() else None


def write_plan(planned: list[PlannedRun]) -> None:
    """Write each run's model.json and train.json; a run that has started must already match its plan."""
    problems = [line for run in planned if has_started(run.run_dir) for line in _conflicts(run)]
    if problems:
        raise UserError(*problems)
    for run in planned:
        if not has_started(run.run_dir):
            atomic_write_json(run.run_dir / MODEL_FILE, run.model)
            atomic_write_json(run.run_dir / TRAIN_FILE, run.train)


def format_plan(planned: list[PlannedRun]) -> list[str]:
    width = max((len(run.variant) for run in planned), default=len(BASELINE))
    return [f"{run.variant:<{width}}  seed {run.seed:<6} {run.run_dir}  {run.changes}" for run in planned]
