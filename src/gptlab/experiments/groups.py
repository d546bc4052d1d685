"""A comparison's runs and its groups of runs that differ only by seed, as both the test-loss table
(compare.py) and its HellaSwag column (hellaswag_column.py) read them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from gptlab.experiments import verdicts

# What fixes the order of the batches a run reads (not the seed: item k of the train slice is read at step k).
DATA_ORDER_KEYS = {
    "train": ("dataset", "start_train_token", "min_train_tokens", "microbatch_size", "gradient_accumulation_steps"),
    "model": ("context_length",),
}


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    evaluation: dict[str, Any]
    config: dict[str, dict[str, Any]]
    stopped: Optional[str] = (
        None  # why this run has no usable test loss: "diverged at step N", "stopped: non-finite ..."
    )

    @property
    def test_loss(self) -> float:
        """The saved loss; NaN where there is none (a run stopped before it could be evaluated) or it was written as null."""
        loss = self.evaluation.get("loss")
        return float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else math.nan

    @property
    def seed(self) -> Any:
        return self.config["train"].get("random_seed")


@dataclass
class Group:
    label: str
    runs: list[RunResult]
    identity: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        """Every run's test loss, NaN or inf included; statistics take `finite_losses`."""
        return [run.test_loss for run in self.runs]

    @property
    def finite_losses(self) -> list[float]:
        return [run.test_loss for run in self.runs if run.stopped is None]

    def arm(self, baseline: "Group") -> verdicts.Arm:
        data_order = all(
            self.identity.get(f, {}).get(k) == baseline.identity.get(f, {}).get(k)
            for f, keys in DATA_ORDER_KEYS.items()
            for k in keys
        )
        same_world = len({run.summary.get("world_size") for run in self.runs + baseline.runs if run.summary}) <= 1
        return verdicts.Arm(
            self.label,
            [verdicts.RunOutcome(run.seed, run.test_loss, run.stopped) for run in self.runs],
            data_order and same_world,
        )
