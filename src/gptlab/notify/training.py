"""The messages a training run sends: started, every K checkpoints, finished, stopped by a signal, failed.

The loop makes one `TrainingNotifier` at setup and calls one method per event; everything about what a
message says lives here. Only the main process sends. Without a `notify` key in train.json every method
does nothing.
"""

from __future__ import annotations

import socket
from collections import deque
from pathlib import Path
from typing import Any, Optional

from gptlab.config import read_run_config
from gptlab.notify.channels import Message, channels_from_environment
from gptlab.notify.notifier import Notifier
from gptlab.rundir import TRAIN_FILE, TRAIN_LOG

LOG_TAIL_LINES = 8  # lines of train.log quoted in a failure message


class TrainingNotifier:
    def __init__(
        self,
        notifier: Optional[Notifier],
        run_dir: Path,
        every_checkpoints: Optional[int] = None,
        machine: Optional[str] = None,
    ):
        self.notifier = notifier
        self.run_dir = Path(run_dir)
        self.every_checkpoints = every_checkpoints
        self.machine = machine or socket.gethostname()
        self.checkpoints_seen = 0
        self.started_sent = False

    @classmethod
    def for_run(cls, run_dir: Path, train_config: Any, is_main: bool) -> "TrainingNotifier":
        """From train.json's `notify` key, channel secrets from the environment: a missing one is a UserError on
        every process at setup, not a surprise at the end. A failing channel is reported once in train.log."""
        from gptlab.train.record import RunLog

        settings = train_config.notify
        if settings is None:
            return cls(None, run_dir)
        channels = channels_from_environment(settings.channels, source=f"{Path(run_dir) / TRAIN_FILE}: notify")
        if not is_main:
            return cls(None, run_dir)
        return cls(Notifier(channels, RunLog(run_dir).line), run_dir, settings.every_checkpoints, train_config.machine)

    # --- the events -------------------------------------------------------------------------------
    def started(self, run: Any, estimate: str) -> None:
        if self.started_sent:
            return  # the loop may refine its estimate; one "started" is enough
        self.started_sent = True
        plan = run.plan
        body = [
            f"{plan.total_steps - run.start_step:,} steps to go of {plan.total_steps:,} ({plan.global_batch_tokens:,} tokens each), "
            f"{run.model.parameter_count():,} parameters, {run.precision.name} on {run.dist.world_size} x {run.device.type}",
            estimate,
        ]
        verb = f"resumed at step {run.start_step:,}" if run.start_step else "started"
        self._send("started", f"{self._name} {verb}", body)

    def checkpoint(self, run: Any, step: int) -> None:
        self.checkpoints_seen += 1
        last_step = run.plan.total_steps - 1
        if not self.every_checkpoints or self.checkpoints_seen % self.every_checkpoints or step == last_step:
            return  # the last checkpoint is followed by "finished"
        totals = run.totals
        parts = [f"train loss {_number(totals.last_train_loss)}"]
        if totals.last_validation_loss is not None:
            parts.append(f"val loss {_number(totals.last_validation_loss)}")
        if totals.train_seconds > 0:
            parts.append(f"{totals.timed_steps * run.plan.global_batch_tokens / totals.train_seconds:,.0f} tokens/s")
        cost_per_hour = run.config.train.cost_per_hour
        if cost_per_hour is not None:
            parts.append(f"${totals.train_seconds / 3600 * cost_per_hour:.2f} so far")
        self._send(
            "checkpoint",
            f"{self._name} at step {step + 1:,}/{run.plan.total_steps:,} ({(step + 1) / run.plan.total_steps:.0%})",
            [" | ".join(parts)],
        )

    def finished(self, run: Any, result: dict[str, Any]) -> None:
        """`fit`'s result: the summary, or the record of a stop by signal."""
        if self.notifier is None:
            return
        if result.get("interrupted"):
            self._send(
                "stopped",
                f"{self._name} stopped by {result.get('signal') or 'another rank'} after step {result['stopped_after_step']:,}",
                [f"Checkpoint written. Resume with: gptlab train {self.run_dir} --resume latest"],
            )
        else:
            from gptlab.train.record import format_summary

            self._send("finished", f"{self._name} finished", format_summary(result))
        self.close()

    def failed(self, run: Any, error: BaseException) -> None:
        if self.notifier is None:
            return
        from gptlab.train.loop import TrainingStopped

        if isinstance(error, KeyboardInterrupt):
            title, lines = (
                f"{self._name} interrupted",
                [
                    f"Interrupted by a second Ctrl-C; resume from the last checkpoint: gptlab train {self.run_dir} --resume latest"
                ],
            )
        else:
            first_line = (str(error).strip().splitlines() or [""])[0]
            error_line = (
                first_line
                if isinstance(error, TrainingStopped)
                else f"{type(error).__name__}: {first_line}".rstrip(": ")
            )
            title = (
                f"{self._name} stopped: too many non-finite steps"
                if isinstance(error, TrainingStopped)
                else f"{self._name} failed"
            )
            lines = [error_line]
        tail = _log_tail(self.run_dir / TRAIN_LOG, LOG_TAIL_LINES)
        if tail:
            lines += ["", "Last lines of train.log:", *tail]
        self._send("failed", title, lines)
        self.close()

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()

    # --- helpers ------------------------------------------------------------------------------------
    @property
    def _name(self) -> str:
        return f"gptlab {self.run_dir} on {self.machine}"

    def _send(self, event: str, title: str, lines: list[str]) -> None:
        if self.notifier is not None:
            self.notifier.send(Message(event, title, "\n".join(lines)))


def _number(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _log_tail(path: Path, count: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n")[:300] for line in deque(handle, maxlen=count)]
    except OSError:
        return []


def send_test_loss(run_dir: Path, evaluation: dict[str, Any]) -> None:
    """The experiment runner's last word on a run: the test loss it measured after training."""
    train_config = read_run_config(run_dir).train
    if train_config.notify is None:
        return
    notifier = Notifier(
        channels_from_environment(train_config.notify.channels, source=f"{Path(run_dir) / TRAIN_FILE}: notify"), print
    )
    name = TrainingNotifier(notifier, run_dir, machine=train_config.machine)._name
    notifier.send(
        Message(
            "evaluated",
            f"{name}: {evaluation['split']} loss {evaluation['loss']:.4f}",
            f"{evaluation['tokens']:,} tokens from token {evaluation['start_token']:,}, checkpoint {evaluation['checkpoint']}, "
            f"{evaluation['precision']}",
        )
    )
    notifier.close()
