"""Experiment trackers a run reports to beside its own files, as train.json's `loggers` (or `--log-to`) asks:
TensorBoard event files in RUN_DIR itself, and Weights & Biases.

TensorBoard labels a run by the folder of its event files and groups charts by the tag's first part in
alphabetical order: the event files sit in the run directory, so `tensorboard --logdir runs/` shows each run by
its name, and the losses are tagged `loss/train` and `loss/validation` so their charts come first (cost and the
end-of-run numbers are `usage/` and `summary/`, which sort after).

A tracker is a convenience, never the record (metrics.jsonl and train.log are): one that cannot start or
fails while writing prints one warning line and is dropped, and training goes on.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from gptlab.config import RunConfig

WANDB_DEFAULT_PROJECT = "gptlab"  # when WANDB_PROJECT is not set


def flat_hparams(config: RunConfig) -> dict[str, Any]:
    """The resolved config as `model.KEY` / `train.KEY` values TensorBoard's hparams accept (numbers, text, flags)."""
    flat: dict[str, Any] = {}
    for section, values in config.to_json_dict().items():
        for key, value in values.items():
            if value is None:
                value = "none"
            elif isinstance(value, (list, tuple, dict)):
                value = json.dumps(value)
            flat[f"{section}.{key}"] = value
    return flat


class TensorBoardLogger:
    name = "tensorboard"

    def __init__(self, run_dir: Path, config: RunConfig, start_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        except ImportError:
            raise LoggerUnavailable(
                "tensorboard is not installed; `pip install tensorboard` (or gptlab[tensorboard]), or drop it from loggers"
            ) from None

        self.config = config
        # purge_step drops events a resumed run is about to write again (steps after its checkpoint).
        self.writer = SummaryWriter(log_dir=str(Path(run_dir)), purge_step=start_step or None)
        self.writer.add_text(
            "config", "```json\n" + json.dumps(config.to_json_dict(), indent=2) + "\n```", global_step=start_step
        )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        metrics = {
            f"summary/{key}": summary[key]
            for key in ("final_train_loss", "final_validation_loss", "tokens_per_second")
            if isinstance(summary.get(key), (int, float))
        }
        self.writer.add_hparams(flat_hparams(self.config), metrics, run_name=".")  # "." keeps them in this run's folder
        self.writer.close()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    name = "wandb"

    def __init__(self, run_dir: Path, config: RunConfig, start_step: int):
        try:
            import wandb
        except ImportError:
            raise LoggerUnavailable(
                "wandb is not installed; `pip install wandb` (or gptlab[wandb]), or drop it from loggers"
            ) from None
        run_dir = Path(run_dir).resolve()
        # Project from WANDB_PROJECT, the run's name from its directory; WANDB_MODE=offline needs no network.
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", WANDB_DEFAULT_PROJECT),
            name=run_dir.name,
            config=config.to_json_dict(),
            dir=str(run_dir),
            reinit="finish_previous",
        )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        for key in ("final_train_loss", "final_validation_loss", "tokens_per_second", "training_seconds", "cost"):
            if summary.get(key) is not None:
                self.run.summary[key] = summary[key]
        self.run.finish()

    def close(self) -> None:
        self.run.finish(exit_code=1)


class LoggerUnavailable(Exception):
    """A tracker that cannot start; its message is the one line the user sees."""


TRACKERS: dict[str, Callable[..., Any]] = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}


class MetricLoggers:
    """The trackers of one run (rank 0 only); each failure is one warning line, then that tracker is dropped."""

    def __init__(
        self,
        names: Sequence[str] = (),
        run_dir: Optional[Path] = None,
        config: Optional[RunConfig] = None,
        start_step: int = 0,
        warn: Callable[[str], None] = print,
    ):
        self.warn = warn
        self.active: list[Any] = []
        for name in names:
            try:
                self.active.append(TRACKERS[name](run_dir, config, start_step))
            except LoggerUnavailable as error:
                warn(f"Warning: logger {name}: {error}; training goes on without it")
            except Exception as error:
                warn(
                    f"Warning: logger {name} could not start ({type(error).__name__}: {_first_line(error)}); training goes on without it"
                )

    def _each(self, action: Callable[[Any], None], what: str) -> None:
        for tracker in list(self.active):
            try:
                action(tracker)
            except Exception as error:
                self.active.remove(tracker)
                try:
                    tracker.close()  # keep what it wrote before failing
                except Exception:
                    pass
                self.warn(
                    f"Warning: logger {tracker.name} failed while {what} ({type(error).__name__}: {_first_line(error)}); "
                    f"training goes on without it"
                )

    def scalars(self, step: int, values: dict[str, Optional[float]]) -> None:
        finite = {tag: float(value) for tag, value in values.items() if value is not None and math.isfinite(value)}
        if finite:
            self._each(lambda tracker: tracker.scalars(step, finite), f"writing step {step}")

    def finish(self, summary: dict[str, Any]) -> None:
        self._each(lambda tracker: tracker.finish(summary), "finishing")
        self.active = []

    def close(self) -> None:
        """After a failure or a stop: flush what was written."""
        self._each(lambda tracker: tracker.close(), "closing")
        self.active = []


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
