"""PNG charts: per run (loss, gradient norm, learning rate; the users' file names) and per comparison
(loss curves overlaid; each run's test-loss difference from the baseline against the baseline's seed noise).

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global state), written
atomically, and cheap enough to redraw at every checkpoint: steps are binned to at most MAX_POINTS points.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from gptlab.files import atomic_write, read_json

LOSS_CHART, GRAD_NORM_CHART, LEARNING_RATE_CHART = "loss-chart.png", "grad-norm-chart.png", "learning-rate-chart.png"
OVERLAY_CHART, DIFFERENCE_CHART = "loss-overlay.png", "test-loss-difference.png"
MAX_POINTS = 200
SIZE, DPI = (8, 4.5), 100


def read_step_records(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records with a step; a torn last line (a run killed mid-write) or a stray line is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
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


def _finite(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def bin_size(records: list[dict[str, Any]], points: int = MAX_POINTS) -> int:
    return max(1, math.ceil(len(records) / points))


def binned(records: list[dict[str, Any]], key: str, points: int = MAX_POINTS) -> tuple[list[float], list[float], list[float], list[float]]:
    """(centre step, min, mean, max) of `key` over consecutive bins of steps; bins without a finite value are left out."""
    size = bin_size(records, points)
    centres, lows, means, highs = [], [], [], []
    for start in range(0, len(records), size):
        chunk = records[start:start + size]
        values = [v for v in (_finite(r.get(key)) for r in chunk) if v is not None]
        if values:
            centres.append((chunk[0]["step"] + chunk[-1]["step"]) / 2)
            lows.append(min(values))
            means.append(sum(values) / len(values))
            highs.append(max(values))
    return centres, lows, means, highs


def _figure(title: str, xlabel: str, ylabel: str):
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=11)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _save(figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    return path


def _best_step(run_dir: Path) -> Optional[int]:
    meta = Path(run_dir) / "checkpoints" / "best" / "meta.json"
    try:
        return int(read_json(meta)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _clipping_max_norm(run_dir: Path) -> Optional[float]:
    for name in ("resolved_config.json", "train.json"):
        try:
            data = read_json(Path(run_dir) / name)
        except (OSError, ValueError):
            continue
        return _finite((data.get("train", data) if isinstance(data, dict) else {}).get("clipping_max_norm"))
    return None


def run_title(run_dir: Path) -> str:
    """`runs/lr/seed-3` rather than `seed-3`."""
    resolved = Path(run_dir).resolve()
    return f"{resolved.parent.name}/{resolved.name}"


def _interval_words(records: list[dict[str, Any]]) -> str:
    size = bin_size(records)
    return "per step" if size == 1 else f"per {size} steps"


def _loss_chart(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    figure, axes = _figure(f"Loss: {run_title(run_dir)}", "step", "cross-entropy (nats)")
    centres, lows, means, highs = binned(records, "loss")
    if centres:
        if bin_size(records) > 1:
            axes.fill_between(centres, lows, highs, color="tab:blue", alpha=0.25, linewidth=0, label=f"train loss min-max {_interval_words(records)}")
        axes.plot(centres, means, color="tab:blue", linewidth=1.5, label=f"train loss mean {_interval_words(records)}")
    validation = [(r["step"], _finite(r.get("validation_loss"))) for r in records if _finite(r.get("validation_loss")) is not None]
    if validation:
        axes.plot(*zip(*validation), "o-", color="tab:orange", markersize=4, linewidth=1, label="validation loss")
    best = _best_step(run_dir)
    if best is not None:
        axes.axvline(best, color="tab:green", linestyle="--", linewidth=1, label=f"best checkpoint (step {best})")
    axes.legend(loc="upper right", fontsize=8)
    return _save(figure, Path(run_dir) / LOSS_CHART)


def _grad_norm_chart(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    figure, axes = _figure(f"Gradient norm (before clipping): {run_title(run_dir)}", "step", "global L2 norm")
    centres, lows, means, highs = binned(records, "grad_norm")
    if centres:
        if bin_size(records) > 1:
            axes.fill_between(centres, lows, highs, color="tab:purple", alpha=0.25, linewidth=0, label=f"min-max {_interval_words(records)}")
        axes.plot(centres, means, color="tab:purple", linewidth=1.5, label=f"mean {_interval_words(records)}")
        if max(highs) > 50 * max(min(lows), 1e-12):
            axes.set_yscale("log")
    max_norm = _clipping_max_norm(run_dir)
    if max_norm is not None:
        axes.axhline(max_norm, color="tab:red", linestyle="--", linewidth=1.2, label=f"clipping at {max_norm:g}")
        clipped = sum(1 for r in records if r.get("clipped"))
        axes.text(0.01, 0.02, f"clipped steps: {clipped} of {len(records)}", transform=axes.transAxes, fontsize=8)
    axes.legend(loc="upper right", fontsize=8)
    return _save(figure, Path(run_dir) / GRAD_NORM_CHART)


def _learning_rate_chart(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    figure, axes = _figure(f"Learning rate: {run_title(run_dir)}", "step", "learning rate")
    points = [(r["step"], _finite(r.get("learning_rate"))) for r in records if _finite(r.get("learning_rate")) is not None]
    if points:
        axes.plot(*zip(*points), color="tab:green", linewidth=1.5)
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return _save(figure, Path(run_dir) / LEARNING_RATE_CHART)


def draw_run_charts(run_dir: Path) -> list[Path]:
    """Redraw loss-chart.png, grad-norm-chart.png and learning-rate-chart.png in `run_dir` from what is on disk.

    Safe to call at any moment of a run (partial metrics, no checkpoint yet): with no step records it draws
    nothing. A drawing failure is reported on stderr and never raised, so it cannot stop a training run.
    """
    try:
        records = read_step_records(run_dir)
        if not records:
            return []
        return [_loss_chart(run_dir, records), _grad_norm_chart(run_dir, records), _learning_rate_chart(run_dir, records)]
    except Exception as error:  # noqa: BLE001 - charts are a view; training and evaluation must go on without them
        print(f"warning: {run_dir}: charts not drawn ({type(error).__name__}: {error})", file=sys.stderr)
        return []


OVERLAY_POINTS = 60  # coarser than a run's own chart: per-step noise would hide the differences between runs


def _loss_curve(run_dir: Path) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    """(tokens seen, binned mean train loss) and the validation points of one run."""
    records = read_step_records(run_dir)
    if not records:
        return [], [], []
    tokens_per_step = (records[0].get("tokens_seen") or 0) / (records[0]["step"] + 1) or 1
    centres, _, means, _ = binned(records, "loss", OVERLAY_POINTS)
    validation = [(r["step"] * tokens_per_step, _finite(r.get("validation_loss"))) for r in records if _finite(r.get("validation_loss")) is not None]
    return [c * tokens_per_step for c in centres], means, validation


def _margin(low: float, high: float, share: float = 0.05) -> tuple[float, float]:
    pad = share * (high - low) or 0.05
    return low - pad, high + pad


def draw_loss_overlay(groups: Sequence[tuple[str, Sequence[Path]]], path: Path) -> Path:
    """Train-loss curves of every run, one colour per group (the baseline first), validation points as dots:
    left the whole run, right the second half zoomed to the baseline's range, where differences show."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5), dpi=DPI, layout="constrained")
    whole, zoom = figure.subplots(1, 2)
    curves = [(index, label, [_loss_curve(run_dir) for run_dir in run_dirs]) for index, (label, run_dirs) in enumerate(groups)]
    last_token = max((xs[-1] for _, _, runs in curves for xs, _, _ in runs if xs), default=0)
    settled, second_half, baseline_half, above = [], [], [], []
    for index, label, runs in curves:
        in_half = [y for xs, ys, _ in runs for x, y in zip(xs, ys) if x >= last_token / 2]
        for number, (xs, ys, validation) in enumerate(runs):
            for axes in (whole, zoom):
                axes.plot(xs, ys, color=f"C{index % 10}", linewidth=1.1, alpha=0.75, label=label if number == 0 and axes is whole else None)
                if validation:
                    axes.plot(*zip(*validation), linestyle="none", marker=".", color=f"C{index % 10}", markersize=5)
            settled += ys[len(ys) // 10:]  # the first steps (loss ~10.8) would flatten everything that matters
        second_half += in_half
        baseline_half += in_half if index == 0 else []
        above += [label] if index and baseline_half and in_half and min(in_half) > max(baseline_half) + (max(baseline_half) - min(baseline_half)) else []
    if settled:
        whole.set_ylim(*_margin(min(settled), max(settled)))
    if baseline_half:
        zoom.set_xlim(last_token / 2, last_token * 1.02)
        zoom.set_ylim(*_margin(min(second_half), max(baseline_half), 0.25))
    for axes, title in ((whole, "Training loss of every run"),
                        (zoom, "Second half, zoomed" + (f" ({', '.join(above)} above this range)" if above else ""))):
        axes.set_title(title, fontsize=11)
        axes.set_xlabel("tokens seen")
        axes.set_ylabel("cross-entropy (nats)")
        axes.grid(True, alpha=0.3)
    whole.legend(loc="upper right", fontsize=8)
    return _save(figure, Path(path))


def draw_difference_chart(baseline: tuple[str, Sequence[float]], groups: Sequence[tuple[str, Sequence[float]]], path: Path) -> Path:
    """Each run's test-loss improvement over the baseline mean (dots), each group's mean with its 95% interval,
    and the band in which one more baseline seed would fall 95% of the time (the baseline's seed noise)."""
    from gptlab.experiments import stats

    base_label, base_losses = baseline
    base = stats.describe(list(base_losses))
    figure, axes = _figure(f"Test-loss improvement over {base_label} (positive is better)", "", "baseline mean - test loss (nats)")
    everything = [(base_label, list(base_losses))] + [(label, list(losses)) for label, losses in groups]
    if base.sd is not None:
        half = stats.student_t_quantile(0.975, base.n - 1) * base.sd * math.sqrt(1 + 1 / base.n)
        axes.axhspan(-half, half, color="grey", alpha=0.2, label=f"baseline seed noise (95% band, {base.n} seeds)")
    axes.axhline(0, color="black", linewidth=0.8)
    for position, (label, losses) in enumerate(everything):
        improvements = [base.mean - loss for loss in losses]
        axes.plot([position] * len(improvements), improvements, "o", color=f"C{position % 10}", alpha=0.6, markersize=5)
        described = stats.describe(improvements)
        if described.ci_low is not None:
            axes.errorbar([position + 0.15], [described.mean], yerr=[[described.mean - described.ci_low], [described.ci_high - described.mean]],
                          fmt="s", color=f"C{position % 10}", capsize=4, markersize=6)
    spread = max(abs(base.mean - loss) for _, losses in everything for loss in losses)
    if base.sd is not None and spread > 20 * half:  # one far-off group would flatten the band and everything near it
        axes.set_yscale("symlog", linthresh=4 * half)
        axes.set_ylabel(f"baseline mean - test loss (nats; log scale beyond ±{4 * half:.2g})")
    axes.set_xticks(range(len(everything)), [label for label, _ in everything], rotation=20, ha="right", fontsize=9)
    axes.set_xlim(-0.6, len(everything) - 0.4)
    if base.sd is not None:
        axes.legend(loc="best", fontsize=8, title="squares: group mean, 95% CI", title_fontsize=8)
    return _save(figure, Path(path))


def draw_comparison_charts(comparison, out_dir: Path) -> list[Path]:
    """The overlay and difference charts of a `Comparison` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = [comparison.baseline] + [g for g in comparison.groups if g is not comparison.baseline]
    overlay = draw_loss_overlay([(g.label, [r.run_dir for r in g.runs]) for g in ordered], out_dir / OVERLAY_CHART)
    by_loss = sorted(ordered[1:], key=lambda g: sum(g.losses) / len(g.losses))
    difference = draw_difference_chart((comparison.baseline.label, comparison.baseline.losses),
                                       [(g.label, g.losses) for g in by_loss], out_dir / DIFFERENCE_CHART)
    return [overlay, difference]
