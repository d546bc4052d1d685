"""What the training loop tells notifications, one small record per event, with the few facts each message
needs. The loop builds them; `gptlab.notify.training` words them. Neither side sees the other's state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Started:
    start_step: int  # 0, or the step a resumed run starts at
    total_steps: int
    global_batch_tokens: int
    parameters: int
    precision: str
    world_size: int
    device_type: str
    estimate: str  # the loop's time (and cost) estimate line


@dataclass(frozen=True)
class CheckpointWritten:
    step: int
    total_steps: int
    train_loss: Optional[float]
    validation_loss: Optional[float]
    tokens_per_second: Optional[float]  # None before any timed step
    cost_so_far: Optional[float]  # None without train.json's cost_per_hour


@dataclass(frozen=True)
class Finished:
    summary_lines: list[str]  # the summary as training printed it


@dataclass(frozen=True)
class Stopped:
    """A signal (or another rank) stopped the run after a checkpoint; it can be resumed."""

    after_step: int
    by: str  # the signal's name, or "another rank"


@dataclass(frozen=True)
class Failed:
    error: BaseException
    gave_up: bool  # training stopped itself (too many non-finite steps) rather than crashing
