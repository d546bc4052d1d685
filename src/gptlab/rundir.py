"""The run directory: the name of every file in it, and reading and writing its summary and evaluation.

    RUN_DIR/
      model.json, train.json    the users' files; gptlab reads them and never rewrites them
      resolved_config.json      the configuration after defaults, written once when training starts, with the
                                dataset's absolute location under `dataset_location`
      metrics.jsonl, train.log  one record per step; every line training printed
      summary.json              written when training reaches its last step
      evaluation.json           a test loss and the exact tokens it came from (`gptlab eval --save`, compare),
                                and under each other task's name its result (`gptlab eval --task hellaswag|ift --save`;
                                gptlab.evaluate.tasks)
      *-chart.png               the run's charts, redrawn at checkpoints (gptlab.train.charts)
      checkpoints/              one folder per checkpoint, `latest` and `best` links (gptlab.runtime.checkpoint)
      events.out.tfevents.*     TensorBoard's event files (train.json's `loggers`), in the run directory itself so
                                that `tensorboard --logdir runs/` labels each run by its name (gptlab.train.loggers)
      wandb/                    wandb's own folder
      .gptlab.lock              who is writing into the run now (`lock_run`; gptlab.locks): one writer at a time

Every other module names these files through this one, so a reader finds each file's writer and readers
with one grep. It stands below `gptlab.config`, which reads and writes the configs (model.json, train.json,
resolved_config.json) by these names.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Optional

from gptlab.errors import BadFile
from gptlab.files import atomic_write_json, read_json
from gptlab.locks import exclusive

MODEL_FILE, TRAIN_FILE = "model.json", "train.json"
RESOLVED_CONFIG = "resolved_config.json"
METRICS, TRAIN_LOG = "metrics.jsonl", "train.log"
SUMMARY = "summary.json"
EVALUATION = "evaluation.json"
HELLASWAG_ENTRY = "hellaswag"  # evaluation.json's key for `gptlab eval --task hellaswag --save`
LOSS_CHART, GRAD_NORM_CHART, LEARNING_RATE_CHART = "loss-chart.png", "grad-norm-chart.png", "learning-rate-chart.png"
ROUTING_CHART = "routing-chart.png"  # mixture-of-experts runs only
CHECKPOINTS = "checkpoints"
LOCK_FILE = ".gptlab.lock"
# beside an experiment's run directories, not in one: runs_dir/<stack>/stack.json, the interventions a stack of
# winners chose and why (gptlab.experiments.winners)
STACK_CHOICE = "stack.json"
# seconds an evaluation waits to merge its entry into evaluation.json: long enough for another evaluation's
# write (milliseconds), short enough that one refused by a training run in progress says so at once
EVALUATION_LOCK_WAIT = 10.0
# The checkpoint eval, generate, export, upload and experiments use when none is named: the run's last one.
# Runs compared after the same token budget are then compared at equal tokens, whatever `best_by` and the
# validation cadence picked as `best`; it is also what litgpt and the Hugging Face Trainer hand back by
# default, and what `--resume` continues. `--checkpoint best` still asks for the best one.
DEFAULT_CHECKPOINT = "latest"


DATASET_LOCATION = "dataset_location"  # resolved_config.json: where `dataset` was found when training started


def recorded_dataset_location(run_dir: Path, dataset: str) -> Optional[Path]:
    """The folder train.json's `dataset` value was found in when the run started, or None (no
    resolved_config.json, an older run's, one recorded for another `dataset` value, or one that cannot be
    read: the reader of the configuration reports that)."""
    try:
        data = read_json(Path(run_dir) / RESOLVED_CONFIG, dict)
    except (OSError, ValueError):
        return None
    location, train = data.get(DATASET_LOCATION), data.get("train")
    if not (isinstance(location, str) and location and isinstance(train, dict) and train.get("dataset") == dataset):
        return None
    return Path(location)


def read_resolved_config(path: Path) -> dict[str, Any]:
    """resolved_config.json, refused in one line when it is empty, torn or lacks its `model` or `train` part."""
    data = read_json(path, dict)
    missing = [part for part in ("model", "train") if not isinstance(data.get(part), dict)]
    if missing:
        raise BadFile(
            f"{path}: {' and '.join(missing)} missing or not a JSON object (a damaged file); "
            f"remove it to fall back to {MODEL_FILE} and {TRAIN_FILE}"
        )
    return data


def lock_run(run_dir: Path, command: str, wait: float = 0.0) -> AbstractContextManager[None]:
    """Hold the run's writer lock (gptlab.locks.exclusive) for a command that writes into it; a second
    writer gets a UserError naming the holder. Under torchrun only global rank 0 takes it: every rank
    writes through rank 0, and on a filesystem shared by the nodes another node's rank would find it taken.
    A folder that does not exist is not locked: the command fails on its own, with its own message."""
    take = os.environ.get("RANK", "0") in ("", "0") and Path(run_dir).is_dir()
    return exclusive(Path(run_dir) / LOCK_FILE, f"run {run_dir}", command, take=take, wait=wait)


def read_config_dict(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The configuration a run trained with, as JSON: from summary.json, else resolved_config.json (raw, so a run
    of an older gptlab with keys since removed can still be compared)."""
    summary = read_summary(run_dir)
    if summary is not None and isinstance(summary.get("config"), dict):
        return summary["config"]
    return read_resolved_config(Path(run_dir) / RESOLVED_CONFIG)


def has_summary(run_dir: Path) -> bool:
    return (Path(run_dir) / SUMMARY).is_file()


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY, summary)


def read_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    """summary.json, or None when the run has not finished training."""
    path = Path(run_dir) / SUMMARY
    return read_json(path, dict) if path.is_file() else None


def write_evaluation(run_dir: Path, result: dict[str, Any], checkpoint_choice: str) -> dict[str, Any]:
    """Write the test loss into evaluation.json's top level, noting which checkpoint was asked for (latest, best
    or a name); every other task's entry already there (a key holding an object the loss does not write) is
    kept. Returns what was written."""
    result = {**result, "checkpoint_choice": checkpoint_choice}
    with lock_run(run_dir, "gptlab eval --save", wait=EVALUATION_LOCK_WAIT):  # read, merge, write: one writer
        for key, entry in (read_evaluation(run_dir) or {}).items():
            if key not in result and isinstance(entry, dict):
                result[key] = entry
        atomic_write_json(Path(run_dir) / EVALUATION, result)
    return result


def write_task_evaluation(run_dir: Path, key: str, result: dict[str, Any], checkpoint_choice: str) -> dict[str, Any]:
    """Put a task's result under evaluation.json's `key`, leaving the test loss (the top-level keys, which say
    how comparisons evaluate runs) and every other task's entry as they are. Returns the entry written."""
    entry = {**result, "checkpoint_choice": checkpoint_choice}
    with lock_run(run_dir, f"gptlab eval --task {key} --save", wait=EVALUATION_LOCK_WAIT):
        atomic_write_json(Path(run_dir) / EVALUATION, {**(read_evaluation(run_dir) or {}), key: entry})
    return entry


def read_task_evaluation(run_dir: Path, key: str) -> Optional[dict[str, Any]]:
    """evaluation.json's entry under `key`, or None."""
    entry = (read_evaluation(run_dir) or {}).get(key)
    return entry if isinstance(entry, dict) else None


def write_hellaswag_evaluation(run_dir: Path, result: dict[str, Any], checkpoint_choice: str) -> dict[str, Any]:
    return write_task_evaluation(run_dir, HELLASWAG_ENTRY, result, checkpoint_choice)


def read_hellaswag_evaluation(run_dir: Path) -> Optional[dict[str, Any]]:
    """evaluation.json's HellaSwag entry, or None."""
    return read_task_evaluation(run_dir, HELLASWAG_ENTRY)


def read_evaluation(run_dir: Path) -> Optional[dict[str, Any]]:
    """evaluation.json, or None when there is none or it cannot be read as a JSON object."""
    path = Path(run_dir) / EVALUATION
    try:
        saved = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None
