"""A run's own PNG charts (loss, gradient norm, learning rate; the users' file names), redrawn at checkpoints.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global state), written
atomically, and cheap enough to redraw at every checkpoint: steps are binned to at most MAX_POINTS points.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

from gptlab.files import atomic_write, read_json
from gptlab.rundir import (
    CHECKPOINTS,
    GRAD_NORM_CHART,
    LEARNING_RATE_CHART,
    LOSS_CHART,
    METRICS,
    RESOLVED_CONFIG,
    ROUTING_CHART,
    TRAIN_FILE,
)

MAX_POINTS = 200
SIZE, DPI = (8, 4.5), 100


def read_step_records(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records with a step; a torn last line (a run killed mid-write) or a stray line is skipped."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def finite(value: Any) -> Optional[float]:
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )


def bin_size(records: list[dict[str, Any]], points: int = MAX_POINTS) -> int:
    return max(1, math.ceil(len(records) / points))


def binned(
    records: list[dict[str, Any]], key: str, points: int = MAX_POINTS
) -> tuple[list[float], list[float], list[float], list[float]]:
    """(centre step, min, mean, max) of `key` over consecutive bins of steps; bins without a finite value are left out."""
    size = bin_size(records, points)
    centres, lows, means, highs = [], [], [], []
    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        values = [v for v in (finite(r.get(key)) for r in chunk) if v is not None]
        if values:
            centres.append((chunk[0]["step"] + chunk[-1]["step"]) / 2)
            lows.append(min(values))
            means.append(sum(values) / len(values))
            highs.append(max(values))
    return centres, lows, means, highs


def new_figure(title: str, xlabel: str, ylabel: str):
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=11)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    return figure, axes


def save_png(figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    return path


def _best_step(run_dir: Path) -> Optional[int]:
    meta = Path(run_dir) / CHECKPOINTS / "best" / "meta.json"
    try:
        return int(read_json(meta)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _clipping_max_norm(run_dir: Path) -> Optional[float]:
    for name in (RESOLVED_CONFIG, TRAIN_FILE):
        try:
            data = read_json(Path(run_dir) / name)
        except (OSError, ValueError):
            continue
        return finite((data.get("train", data) if isinstance(data, dict) else {}).get("clipping_max_norm"))
    return None


def run_title(run_dir: Path) -> str:
    """`runs/lr/seed-3` rather than `seed-3`."""
    resolved = Path(run_dir).resolve()
    return f"{resolved.parent.name}/{resolved.name}"


def _interval_words(records: list[dict[str, Any]]) -> str:
    size = bin_size(records)
    return "per step" if size == 1 else f"per {size} steps"


def _legend(axes) -> None:
    """A legend when something was drawn (a run's metrics may hold no gradient norms, e.g. a resumed old run's)."""
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper right", fontsize=8)


def _loss_chart(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    figure, axes = new_figure(f"Loss: {run_title(run_dir)}", "step", "cross-entropy (nats)")
    centres, lows, means, highs = binned(records, "loss")
    if centres:
        if bin_size(records) > 1:
            axes.fill_between(
                centres,
                lows,
                highs,
                color="tab:blue",
                alpha=0.25,
                linewidth=0,
                label=f"train loss min-max {_interval_words(records)}",
            )
        axes.plot(centres, means, color="tab:blue", linewidth=1.5, label=f"train loss mean {_interval_words(records)}")
    validation = [
        (r["step"], finite(r.get("validation_loss"))) for r in records if finite(r.get("validation_loss")) is not None
    ]
    if validation:
        axes.plot(*zip(*validation), "o-", color="tab:orange", markersize=4, linewidth=1, label="validation loss")
    best = _best_step(run_dir)
    if best is not None:
        axes.axvline(best, color="tab:green", linestyle="--", linewidth=1, label=f"best checkpoint (step {best})")
    _legend(axes)
    return save_png(figure, Path(run_dir) / LOSS_CHART)


def _grad_norm_chart(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    figure, axes = new_figure(f"Gradient norm (before clipping): {run_title(run_dir)}", "step", "global L2 norm")
    centres, lows, means, highs = binned(records, "grad_norm")
    if centres:
        if bin_size(records) > 1:
            axes.fill_between(
                centres,
                lows,
                highs,
                color="tab:purple",
                alpha=0.25,
                linewidth=0,
                label=f"min-max {_interval_words(records)}",
            )
        axes.plot(centres, means, color="tab:purple", linewidth=1.5, label=f"mean {_interval_words(records)}")
        if max(highs) > 50 * max(min(lows), 1e-12):
            axes.set_yscale("log")
    max_norm = _clipping_max_norm(run_dir)
    if max_norm is not None:
        axes.axhline(max_norm, color="tab:red", linestyle="--", linewidth=1.2, label=f"clipping at {max_norm:g}")
        clipped = sum(1 for r in records if r.get("clipped"))
        axes.text(0.01, 0.02, f"clipped steps: {clipped} of {len(records)}", transform=axes.transAxes, fontsize=8)
    _legend(axes)
    return save_png(figure, Path(run_dir) / GRAD_NORM_CHART)


def _learning_rate_chart(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    figure, axes = new_figure(f"Learning rate: {run_title(run_dir)}", "step", "learning rate")
    points = [
        (r["step"], finite(r.get("learning_rate"))) for r in records if finite(r.get("learning_rate")) is not None
    ]
    if points:
        axes.plot(*zip(*points), color="tab:green", linewidth=1.5)
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return save_png(figure, Path(run_dir) / LEARNING_RATE_CHART)


def _routing_chart(run_dir: Path, records: list[dict[str, Any]]) -> Optional[Path]:
    """Mixture-of-experts runs: per layer, each expert's mean routing weight (softmax over all logits) at each read-back,
    against the uniform 1 / num_experts; an expert drifting to 0 or a few taking everything is router saturation."""
    from matplotlib.figure import Figure

    routed = [r for r in records if isinstance(r.get("routing"), list) and r["routing"]]
    if not routed:
        return None
    layers = sorted({layer["layer"] for r in routed for layer in r["routing"]})
    columns = min(3, len(layers))
    rows = math.ceil(len(layers) / columns)
    figure = Figure(figsize=(4 * columns, 2.8 * rows + 0.6), dpi=DPI, layout="constrained")
    figure.suptitle(f"Mean routing weight per expert: {run_title(run_dir)}", fontsize=11)
    for position, layer in enumerate(layers):
        axes = figure.add_subplot(rows, columns, position + 1)
        points = [
            (r["step"], entry["mean_routing_weight"])
            for r in routed
            for entry in r["routing"]
            if entry["layer"] == layer
        ]
        steps = [step for step, _ in points]
        num_experts = len(points[0][1])
        for expert in range(num_experts):
            axes.plot(steps, [weights[expert] for _, weights in points], linewidth=1.2, label=f"expert {expert}")
        axes.axhline(1 / num_experts, color="gray", linestyle="--", linewidth=1, label="uniform")
        axes.set_title(f"layer {layer}", fontsize=9)
        axes.set_xlabel("step")
        axes.set_ylim(0, 1)
        axes.grid(True, alpha=0.3)
        if position == 0:
            axes.legend(fontsize=7, ncol=2)
    return save_png(figure, Path(run_dir) / ROUTING_CHART)


def draw_run_charts(run_dir: Path) -> list[Path]:
    """Redraw loss-chart.png, grad-norm-chart.png and learning-rate-chart.png (and routing-chart.png for a mixture
    of experts) in `run_dir` from what is on disk.

    Safe to call at any moment of a run (partial metrics, no checkpoint yet): with no step records it draws
    nothing. A drawing failure is reported on stderr and never raised, so it cannot stop a training run.
    """
    try:
        records = read_step_records(run_dir)
        if not records:
            return []
        drawn = [
            _loss_chart(run_dir, records),
            _grad_norm_chart(run_dir, records),
            _learning_rate_chart(run_dir, records),
        ]
        return drawn + [path for path in [_routing_chart(run_dir, records)] if path is not None]
    except Exception as error:  # noqa: BLE001 - charts are a view; training and evaluation must go on without them
        print(f"warning: {run_dir}: charts not drawn ({type(error).__name__}: {error})", file=sys.stderr)
        return []
