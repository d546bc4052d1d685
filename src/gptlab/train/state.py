"""What a training holds while it runs (`Training`), and the counts it carries across checkpoints (`RunningTotals`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch

from gptlab.config import RunConfig
from gptlab.data.batches import BatchPlan, BatchReader
from gptlab.data.tokens import TokenDataset
from gptlab.evaluate.loss import EvalSlice
from gptlab.model import GPT
from gptlab.notify.training import TrainingNotifier
from gptlab.runtime.precision import Precision
from gptlab.train import distributed
from gptlab.train.loggers import MetricLoggers
from gptlab.train.record import IntervalStats, MetricsFile, RunLog


@dataclass
class RunningTotals:
    """Counts over the whole run, saved in every checkpoint so a resumed run carries on counting."""

    skipped_steps: int = 0
    consecutive_skipped: int = 0  # non-finite steps in a row; max_consecutive_skipped_steps stops the run
    clipped_steps: int = 0
    train_seconds: float = 0.0  # time in timed steps, so the time of a compiling first step is not in it
    timed_steps: int = 0
    compile_seconds: Optional[float] = None  # the first step's time when it compiles
    validation_seconds: float = 0.0  # time spent computing validation losses, not in train_seconds
    checkpoint_blocked_seconds: float = 0.0  # time the loop waited for checkpoints (not in train_seconds)
    checkpoint_save_seconds: float = 0.0  # time the checkpoints' saves took, snapshot to rename, in all
    best_metric: Optional[float] = None  # the loss that made the current `best` checkpoint
    peak_learning_rate: float = 0.0
    last_train_loss: Optional[float] = None
    last_validation_loss: Optional[float] = None

    def add_step(self, learning_rate: float, clipped: bool, skipped: bool, loss: float) -> None:
        self.peak_learning_rate = max(self.peak_learning_rate, learning_rate)
        self.clipped_steps += int(clipped)
        if skipped:
            self.skipped_steps += 1
            self.consecutive_skipped += 1
        else:
            self.consecutive_skipped = 0
            self.last_train_loss = loss

    def to_state(self) -> dict[str, Any]:
        """A plain dict, as training_state.pt has always held the totals (torch.load with weights_only reads it)."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunningTotals:
        """From a checkpoint of any gptlab version: a key an older version did not save keeps its default."""
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in state.items() if key in known})


@dataclass
class Training:
    """Everything a training run holds while it runs; built by `gptlab.train.loop.setup`."""

    run_dir: Path
    config: RunConfig
    dist: distributed.Distributed
    device: torch.device
    dataset: TokenDataset
    model: GPT
    trained_model: torch.nn.Module  # the model, or its DDP and/or torch.compile wrapper
    fast_paths: dict[str, Any]
    optimizer: torch.optim.AdamW
    precision: Precision
    precision_reason: str  # why this precision: asked for, chosen for this machine, or kept from the checkpoint
    plan: BatchPlan
    reader: BatchReader
    validation: Optional[EvalSlice]
    log: RunLog
    metrics: MetricsFile
    show_progress: bool  # a progress bar on a terminal; without one, the log lines go to the console too
    notifier: TrainingNotifier  # messages about the run (started, checkpoints, finished, failed), when train.json asks
    start_step: int = 0
    interval: IntervalStats = field(default_factory=IntervalStats)  # train statistics since the last checkpoint
    start_timed_steps: int = 0
    charts_drawn_at: float = float("-inf")
    totals: RunningTotals = field(default_factory=RunningTotals)
    loggers: MetricLoggers = field(default_factory=MetricLoggers)  # TensorBoard, wandb
    last_log_line: tuple[int, float] = (-1, float("-inf"))  # (step, time.monotonic()) of the newest log line
    last_routing: Optional[dict[str, Any]] = None  # mixture-of-experts routing statistics last read (train/routing.py)
    dataset_fingerprint: Optional[str] = None  # the data as it was when this start began; in every checkpoint's meta
