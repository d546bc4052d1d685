"""The messages a training run sends: started, every K checkpoints, finished, stopped by a signal, failed.

The loop makes one `TrainingNotifier` at setup and calls one method per event, with that event's record
(`gptlab.notify.events`); everything about what a message says lives here. Only the main process sends.
Without a `notify` key in train.json every method does nothing.
"""

from __future__ import annotations

import socket
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from gptlab.notify.channels import channels_from_environment
from gptlab.notify.events import CheckpointWritten, Failed, Finished, Started, Stopped
from gptlab.notify.message import Message
from gptlab.notify.notifier import Notifier
from gptlab.rundir import TRAIN_FILE, TRAIN_LOG, read_config_dict

LOG_TAIL_LINES = 8  # lines of train.log quoted in a failure message


class NotifySettings(Protocol):
    """train.json's `notify` (gptlab.config.NotifySettings, which stands above this package and names its
    channels from this package's registry)."""

    channels: Sequence[str]
    every_checkpoints: Optional[int]


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
    def for_run(
        cls,
        run_dir: Path,
        settings: Optional[NotifySettings],
        machine: Optional[str],
        is_main: bool,
        log: Callable[[str], None],
    ) -> "TrainingNotifier":
        """From train.json's `notify` key, channel secrets from the environment: a missing one is a UserError on
        every process at setup, not a surprise at the end. A failing channel is reported once through `log`
        (train.log)."""
        if settings is None:
            return cls(None, run_dir)
        channels = channels_from_environment(settings.channels, source=f"{Path(run_dir) / TRAIN_FILE}: notify")
        if not is_main:
            return cls(None, run_dir)
        return cls(Notifier(channels, log), run_dir, settings.every_checkpoints, machine)

    # --- the events -------------------------------------------------------------------------------
    def started(self, event: Started) -> None:
        if self.started_sent:
            return  # the loop may refine its estimate; one "started" is enough
        self.started_sent = True
        body = [
            f"{event.total_steps - event.start_step:,} steps to go of {event.total_steps:,} ({event.global_batch_tokens:,} tokens each), "
            f"{event.parameters:,} parameters, {event.precision} on {event.world_size} x {event.device_type}",
            event.estimate,
        ]
        verb = f"resumed at step {event.start_step:,}" if event.start_step else "started"
        self._send("started", f"{self._name} {verb}", body)

    def checkpoint(self, event: CheckpointWritten) -> None:
        self.checkpoints_seen += 1
        step, total_steps = event.step, event.total_steps
        if not self.every_checkpoints or self.checkpoints_seen % self.every_checkpoints or step == total_steps - 1:
            return  # the last checkpoint is followed by "finished"
        parts = [f"train loss {_number(event.train_loss)}"]
        if event.validation_loss is not None:
            parts.append(f"val loss {_number(event.validation_loss)}")
        if event.tokens_per_second is not None:
            parts.append(f"{event.tokens_per_second:,.0f} tokens/s")
        if event.cost_so_far is not None:
            parts.append(f"${event.cost_so_far:.2f} so far")
        self._send(
            "checkpoint",
            f"{self._name} at step {step + 1:,}/{total_steps:,} ({(step + 1) / total_steps:.0%})",
            [" | ".join(parts)],
        )

    def finished(self, event: Finished) -> None:
        if self.notifier is None:
            return
        self._send("finished", f"{self._name} finished", event.summary_lines)
        self.close()

    def stopped(self, event: Stopped) -> None:
        if self.notifier is None:
            return
        self._send(
            "stopped",
            f"{self._name} stopped by {event.by} after step {event.after_step:,}",
            [f"Checkpoint written. Resume with: gptlab train {self.run_dir} --resume latest"],
        )
        self.close()

    def failed(self, event: Failed) -> None:
        if self.notifier is None:
            return
        error = event.error
        if isinstance(error, KeyboardInterrupt):
            title, lines = (
                f"{self._name} interrupted",
                [
                    f"Interrupted by a second Ctrl-C; resume from the last checkpoint: gptlab train {self.run_dir} --resume latest"
                ],
            )
        else:
            first_line = (str(error).strip().splitlines() or [""])[0]
            error_line = first_line if event.gave_up else f"{type(error).__name__}: {first_line}".rstrip(": ")
            title = f"{self._name} stopped: too many non-finite steps" if event.gave_up else f"{self._name} failed"
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
    train = read_config_dict(run_dir)["train"]  # as the run trained, already checked then
    if not train.get("notify"):
        return
    notifier = Notifier(
        channels_from_environment(train["notify"]["channels"], source=f"{Path(run_dir) / TRAIN_FILE}: notify"), print
    )
    name = TrainingNotifier(notifier, run_dir, machine=train.get("machine"))._name
    notifier.send(
        Message(
            "evaluated",
            f"{name}: {evaluation['split']} loss {evaluation['loss']:.4f}",
            f"{evaluation['tokens']:,} tokens from token {evaluation['start_token']:,}, checkpoint {evaluation['checkpoint']}, "
            f"{evaluation['precision']}",
        )
    )
    notifier.close()
