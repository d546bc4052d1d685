"""Charts of a comparison (PNG, or SVG or PDF for print): loss curves overlaid, each group's mean with the
min-max band of its seeds, and each run's test-loss difference from the baseline against the baseline's
seed noise. Drawn as a run's own charts are (gptlab.train.charts).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from gptlab.files import atomic_write

from gptlab.train.charts import DPI, binned, finite, new_figure, read_step_records

OVERLAY_CHART, DIFFERENCE_CHART = "loss-overlay.png", "test-loss-difference.png"
CHART_FORMATS = ("png", "svg", "pdf")  # matplotlib writes each; the suffix of the path picks it
OVERLAY_POINTS = 60  # coarser than a run's own chart: per-step noise would hide the differences between runs


def _loss_curve(run_dir: Path) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    """(tokens seen, binned mean train loss) and the validation points of one run."""
    records = read_step_records(run_dir)
    if not records:
        return [], [], []
    tokens_per_step = (records[0].get("tokens_seen") or 0) / (records[0]["step"] + 1) or 1
    centres, _, means, _ = binned(records, "loss", OVERLAY_POINTS)
    validation = [(r["step"] * tokens_per_step, finite(r.get("validation_loss"))) for r in records if finite(r.get("validation_loss")) is not None]
    return [c * tokens_per_step for c in centres], means, validation


def _margin(low: float, high: float, share: float = 0.05) -> tuple[float, float]:
    pad = share * (high - low) or 0.05
    return low - pad, high + pad


def save_chart(figure, path: Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format=path.suffix.lstrip(".")))
    return path


def _group_band(runs: list[tuple[list[float], list[float], list]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """(tokens, mean, min, max) over a group's seeds, each run's curve read at the first run's points
    within the range every run covers (seeds of one configuration log the same steps, so it is exact then)."""
    curves = [(np.asarray(xs), np.asarray(ys)) for xs, ys, _ in runs if xs]
    if not curves:
        return [], [], [], []
    end = min(xs[-1] for xs, _ in curves)
    grid = curves[0][0][curves[0][0] <= end]
    stacked = np.stack([np.interp(grid, xs, ys) for xs, ys in curves])
    return grid.tolist(), stacked.mean(axis=0).tolist(), stacked.min(axis=0).tolist(), stacked.max(axis=0).tolist()


def draw_loss_overlay(groups: Sequence[tuple[str, Sequence[Path]]], path: Path) -> Path:
    """Train-loss curves, one colour per group (the baseline first): a group of several seeds as its mean with
    the min-max band of its seeds, a single run as its curve; validation points as dots. Left the whole run,
    right the second half zoomed to the baseline's range, where differences show."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5), dpi=DPI, layout="constrained")
    whole, zoom = figure.subplots(1, 2)
    curves = [(index, label, [_loss_curve(run_dir) for run_dir in run_dirs]) for index, (label, run_dirs) in enumerate(groups)]
    last_token = max((xs[-1] for _, _, runs in curves for xs, _, _ in runs if xs), default=0)
    settled, second_half, baseline_half, above = [], [], [], []
    any_validation = False
    for index, label, runs in curves:
        colour = f"C{index % 10}"
        xs, means, lows, highs = _group_band(runs)
        seeds = sum(1 for run in runs if run[0])
        for axes in (whole, zoom):
            axes.plot(xs, means, color=colour, linewidth=1.2, alpha=0.85,
                      label=(f"{label} (mean of {seeds} seeds, band: min-max)" if seeds > 1 else label) if axes is whole else None)
            if seeds > 1:
                axes.fill_between(xs, lows, highs, color=colour, alpha=0.2, linewidth=0)
            for _, _, validation in runs:
                if validation:
                    any_validation = True
                    axes.plot(*zip(*validation), linestyle="none", marker=".", color=colour, markersize=5)
        in_half = [y for run_xs, ys, _ in runs for x, y in zip(run_xs, ys) if x >= last_token / 2]
        settled += [y for _, ys, _ in runs for y in ys[len(ys) // 10:]]  # the first steps (loss ~10.8) would flatten everything that matters
        second_half += in_half
        baseline_half += in_half if index == 0 else []
        above += [label] if index and baseline_half and in_half and min(in_half) > max(baseline_half) + (max(baseline_half) - min(baseline_half)) else []
    if any_validation:  # one legend entry for the dots of every group
        whole.plot([], [], linestyle="none", marker=".", color="grey", markersize=7, label="validation loss (dots, in the group's colour)")
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
    return save_chart(figure, Path(path))


def draw_difference_chart(baseline: tuple[str, Sequence[float]], groups: Sequence[tuple[str, Sequence[float]]], path: Path) -> Path:
    """Each run's test-loss improvement over the baseline mean (dots), each group's mean with its 95% interval,
    and the band in which one more baseline seed would fall 95% of the time (the baseline's seed noise)."""
    from gptlab.experiments import stats

    base_label, base_losses = baseline
    base = stats.describe(list(base_losses))
    figure, axes = new_figure(f"Test-loss improvement over {base_label} (positive is better)", "", "baseline mean - test loss (nats)")
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
    return save_chart(figure, Path(path))


def draw_comparison_charts(comparison, out_dir: Path, chart_format: str = "png") -> list[Path]:
    """The overlay and difference charts of a `Comparison` into `out_dir`, as png, svg or pdf files."""
    out_dir = Path(out_dir)
    suffix = "." + chart_format
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = [comparison.baseline] + [g for g in comparison.groups if g is not comparison.baseline]
    overlay = draw_loss_overlay([(g.label, [r.run_dir for r in g.runs]) for g in ordered],
                                out_dir / Path(OVERLAY_CHART).with_suffix(suffix).name)
    by_loss = sorted(ordered[1:], key=lambda g: sum(g.losses) / len(g.losses))
    difference = draw_difference_chart((comparison.baseline.label, comparison.baseline.losses),
                                       [(g.label, g.losses) for g in by_loss],
                                       out_dir / Path(DIFFERENCE_CHART).with_suffix(suffix).name)
    return [overlay, difference]
