"""What a run tells its user, on screen and in files a script can read: `train.log`, `metrics.jsonl`
(one record per step), `summary.json`, and a progress bar with loss, tokens/s and ETA."""

from __future__ import annotations

import math
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from gptlab.cpu_kernels import cpu_matmul
from gptlab.files import append_jsonl
from gptlab.rundir import TRAIN_LOG
from gptlab.version import __version__
from gptlab.words import loss_with_perplexity


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name as /proc/cpuinfo gives it (what `lscpu` shows)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment() -> dict[str, Any]:
    """Versions and hardware, recorded in every run log and benchmark."""
    info: dict[str, Any] = {
        "gptlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        # the kernel of the linear layers on the CPU (gptlab.cpu_kernels), and why
        "cpu_matmul": cpu_matmul()[0],
        "cpu_matmul_reason": cpu_matmul()[1],
    }
    if torch.cuda.is_available():
        info["device_name"] = device_name(torch.device("cuda"))
        info["device_count"] = torch.cuda.device_count()
    return info


class RunLog:
    """Prints a line and appends it to `train.log` (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / TRAIN_LOG
        self.enabled = enabled

    def line(self, text: str = "", console: bool = True) -> None:
        """Append to train.log, and print unless `console` is false (a progress bar already shows it)."""
        if not self.enabled:
            return
        if console:
            tqdm.write(text, file=sys.stdout)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")


class MetricsFile:
    """`metrics.jsonl`: step records, buffered and appended every few steps and at every checkpoint."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._pending: list[dict] = []

    def add(self, record: dict) -> None:
        if self.enabled:
            self._pending.append(record)

    def annotate_last(self, **values: Any) -> None:
        """Add values (a validation loss, say) to the newest step record."""
        if self._pending:
            self._pending[-1].update(values)
        elif self.enabled:
            self._pending.append(values)

    def flush(self) -> None:
        append_jsonl(self.path, self._pending)
        self._pending = []


@dataclass
class IntervalStats:
    """Train-loss and gradient-norm statistics since the last checkpoint (the users' meta.json fields)."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    clipped: int = 0
    steps: int = 0

    def add(self, loss: float, grad_norm: float, clipped: bool) -> None:
        self.steps += 1
        if math.isfinite(loss):
            self.losses.append(loss)
        if math.isfinite(grad_norm):
            self.grad_norms.append(grad_norm)
        self.clipped += int(clipped)

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> IntervalStats:
        return cls(**state)

    def summary(self, clipping: bool) -> dict[str, Optional[float]]:
        def mean(values: list[float]) -> Optional[float]:
            return sum(values) / len(values) if values else None

        return {
            "min_train_loss": min(self.losses, default=None),
            "max_train_loss": max(self.losses, default=None),
            "avg_train_loss": mean(self.losses),
            "max_grad_norms": max(self.grad_norms, default=None),
            "avg_grad_norms": mean(self.grad_norms),
            "frac_clipped": (self.clipped / self.steps if self.steps else 0.0) if clipping else None,
        }


def progress_bar(total_steps: int, start_step: int, enabled: bool) -> tqdm:
    return tqdm(
        total=total_steps,
        initial=start_step,
        desc="training",
        unit="step",
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
        smoothing=0.1,
    )


MIN_BAR_WIDTH = 10  # characters of the bar itself; fields are dropped before the bar gets narrower


def set_fitting_postfix(bar: tqdm, postfix: dict[str, str]) -> None:
    """Show as many of `postfix`'s fields (most important first) as leave the bar MIN_BAR_WIDTH wide in the
    terminal's width: in 80 columns the speed and cost go before the bar shrinks to a character."""
    if bar.disable:
        return
    items = list(postfix.items())
    for keep in range(len(items), -1, -1):
        bar.set_postfix(dict(items[:keep]), refresh=False)
        meter = bar.format_dict  # its ncols is the terminal's width now (dynamic_ncols), or None when unknown
        if meter.get("ncols") is None:
            return
        line = bar.format_meter(**meter)
        parts = line.split("|")
        if len(parts) >= 3 and len(parts[1]) >= MIN_BAR_WIDTH:
            return


def format_summary(summary: dict[str, Any]) -> list[str]:
    lines = [
        f"Training complete in {summary['training_seconds']:.1f} seconds",
        f"Tokens seen: {summary['tokens_seen']:,}",
        f"Throughput: {summary['tokens_per_second']:,.0f} tokens/second",
        f"Final train loss: {summary['final_train_loss']:.4f}"
        if summary.get("final_train_loss") is not None
        else "Final train loss: n/a",
    ]
    if summary.get("final_validation_loss") is not None:
        lines.append(f"Final validation loss: {loss_with_perplexity(summary['final_validation_loss'])}")
    if summary.get("skipped_steps"):
        lines.append(f"Skipped steps (non-finite gradients or loss): {summary['skipped_steps']}")
    if summary.get("checkpoint_save_seconds"):
        lines.append(
            f"Checkpoints: saving took {summary['checkpoint_save_seconds']:.1f} seconds, "
            f"training waited {summary.get('checkpoint_blocked_seconds') or 0:.1f} seconds for them"
        )
    if summary.get("cost") is not None:
        lines.append(f"Cost: ${summary['cost']:.2f} at ${summary['cost_per_hour']}/hour")
    return lines
