"""Charts of a comparison (PNG, or SVG or PDF for print): loss curves overlaid, each group's mean with the
min-max band of its seeds, and each run's test-loss difference from the baseline (each intervention's
improvement with its own interval, diverged runs marked) against the baseline's seed noise. Drawn as a
run's own charts are (gptlab.train.charts).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gptlab.files import atomic_write
from gptlab.train.charts import DPI, binned, finite, new_figure, read_step_records

OVERLAY_CHART, DIFFERENCE_CHART = "loss-overlay.png", "test-loss-difference.png"
OVERLAY_POINTS = 60  # coarser than a run's own chart: per-step noise would hide the differences between runs


def _loss_curve(run_dir: Path) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    """(tokens seen, binned mean train loss) and the validation points of one run."""
    records = read_step_records(run_dir)
    if not records:
        return [], [], []
    tokens_per_step = (records[0].get("tokens_seen") or 0) / (records[0]["step"] + 1) or 1
    centres, _, means, _ = binned(records, "loss", OVERLAY_POINTS)
    validation = [
        (r["step"] * tokens_per_step, finite(r.get("validation_loss")))
        for r in records
        if finite(r.get("validation_loss")) is not None
    ]
    return [c * tokens_per_step for c in centres], means, validation


def _margin(low: float, high: float, share: float = 0.05) -> tuple[float, float]:
    pad = share * (high - low) or 0.05
    return low - pad, high + pad


def save_chart(figure, path: Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format=path.suffix.lstrip(".")))
    return path


def _group_band(
    runs: list[tuple[list[float], list[float], list]],
) -> tuple[list[float], list[float], list[float], list[float]]:
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
    curves = [
        (index, label, [_loss_curve(run_dir) for run_dir in run_dirs]) for index, (label, run_dirs) in enumerate(groups)
    ]
    last_token = max((xs[-1] for _, _, runs in curves for xs, _, _ in runs if xs), default=0)
    settled, second_half, baseline_half, above = [], [], [], []
    any_validation = False
    for index, label, runs in curves:
        colour = f"C{index % 10}"
        xs, means, lows, highs = _group_band(runs)
        seeds = sum(1 for run in runs if run[0])
        for axes in (whole, zoom):
            axes.plot(
                xs,
                means,
                color=colour,
                linewidth=1.2,
                alpha=0.85,
                label=(f"{label} (mean of {seeds} seeds, band: min-max)" if seeds > 1 else label)
                if axes is whole
                else None,
            )
            if seeds > 1:
                axes.fill_between(xs, lows, highs, color=colour, alpha=0.2, linewidth=0)
            for _, _, validation in runs:
                if validation:
                    any_validation = True
                    axes.plot(*zip(*validation), linestyle="none", marker=".", color=colour, markersize=5)
        in_half = [y for run_xs, ys, _ in runs for x, y in zip(run_xs, ys) if x >= last_token / 2]
        settled += [
            y for _, ys, _ in runs for y in ys[len(ys) // 10 :]
        ]  # the first steps (loss ~10.8) would flatten everything that matters
        second_half += in_half
        baseline_half += in_half if index == 0 else []
        above += (
            [label]
            if index
            and baseline_half
            and in_half
            and min(in_half) > max(baseline_half) + (max(baseline_half) - min(baseline_half))
            else []
        )
    if any_validation:  # one legend entry for the dots of every group
        whole.plot(
            [],
            [],
            linestyle="none",
            marker=".",
            color="grey",
            markersize=7,
            label="validation loss (dots, in the group's colour)",
        )
    if settled:
        whole.set_ylim(*_margin(min(settled), max(settled)))
    if baseline_half:
        zoom.set_xlim(last_token / 2, last_token * 1.02)
        zoom.set_ylim(*_margin(min(second_half), max(baseline_half), 0.25))
    for axes, title in (
        (whole, "Training loss of every run"),
        (zoom, "Second half, zoomed" + (f" ({', '.join(above)} above this range)" if above else "")),
    ):
        axes.set_title(title, fontsize=11)
        axes.set_xlabel("tokens seen")
        axes.set_ylabel("cross-entropy (nats)")
        axes.grid(True, alpha=0.3)
    whole.legend(loc="upper right", fontsize=8)
    return save_chart(figure, Path(path))


def draw_difference_chart(baseline_label: str, rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Each run's test-loss improvement over the baseline mean (dots), each intervention's improvement with its own
    95% interval from the test that judged it (squares), diverged runs as red crosses along the top, and the band in
    which one more baseline seed would fall 95% of the time (the baseline's seed noise).

    `rows` are the comparison's rows, the baseline's first: run, run_losses (None where not finite), improvement,
    improvement_ci and verdict."""
    from matplotlib.transforms import blended_transform_factory

    from gptlab.experiments import stats

    base_losses = [loss for loss in rows[0]["run_losses"] if loss is not None]
    base = stats.describe(base_losses) if base_losses else None
    figure, axes = new_figure(
        f"Test-loss improvement over {baseline_label} (positive is better)", "", "baseline mean - test loss (nats)"
    )
    half = None
    if base is not None and base.sd:
        half = stats.student_t_quantile(0.975, base.n - 1) * base.sd * math.sqrt(1 + 1 / base.n)
        axes.axhspan(-half, half, color="grey", alpha=0.2, label=f"baseline seed noise (95% band, {base.n} seeds)")
    axes.axhline(0, color="black", linewidth=0.8)
    top = blended_transform_factory(axes.transData, axes.transAxes)
    shown: list[float] = [0.0]
    diverged_labelled = False
    for position, row in enumerate(rows):
        colour = f"C{position % 10}"
        finite = [loss for loss in row["run_losses"] if loss is not None]
        if base is not None and finite:
            improvements = [base.mean - loss for loss in finite]
            axes.plot([position] * len(improvements), improvements, "o", color=colour, alpha=0.6, markersize=5)
            shown += improvements
        failed = len(row["run_losses"]) - len(finite)
        if failed:
            axes.plot(
                [position],
                [0.97],
                "x",
                color="tab:red",
                markersize=9,
                mew=2,
                transform=top,
                label=None if diverged_labelled else "diverged run(s), left out",
            )
            axes.text(
                position, 0.93, f"{failed} diverged", transform=top, ha="center", va="top", fontsize=7, color="tab:red"
            )
            diverged_labelled = True
        if position and row.get("improvement_ci"):
            low, high = row["improvement_ci"]
            middle = row["improvement"]
            axes.errorbar(
                [position + 0.15],
                [middle],
                yerr=[[middle - low], [high - middle]],
                fmt="s",
                color=colour,
                capsize=4,
                markersize=6,
                label="improvement, 95% CI of its test" if position == 1 else None,
            )
            shown += [low, high]
    spread = max(abs(value) for value in shown if math.isfinite(value))
    if half and spread > 20 * half:  # one far-off group would flatten the band and everything near it
        axes.set_yscale("symlog", linthresh=4 * half)
        axes.set_ylabel(f"baseline mean - test loss (nats; log scale beyond ±{4 * half:.2g})")
    axes.set_xticks(range(len(rows)), [row["run"] for row in rows], rotation=20, ha="right", fontsize=9)
    axes.set_xlim(-0.6, len(rows) - 0.4)
    if half or diverged_labelled:
        axes.legend(loc="best", fontsize=8)
    return save_chart(figure, Path(path))


def draw_comparison_charts(comparison, out_dir: Path, chart_format: str = "png") -> list[Path]:
    """The overlay and difference charts of a `Comparison` into `out_dir`, as png, svg or pdf files."""
    out_dir = Path(out_dir)
    suffix = "." + chart_format
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = [comparison.baseline] + [g for g in comparison.groups if g is not comparison.baseline]
    overlay = draw_loss_overlay(
        [(g.label, [r.run_dir for r in g.runs]) for g in ordered],
        out_dir / Path(OVERLAY_CHART).with_suffix(suffix).name,
    )
    baseline_row = next(row for row in comparison.rows if row["run"] == comparison.baseline.label)
    rows = [baseline_row] + [
        row for row in comparison.rows if row is not baseline_row
    ]  # the rest by test loss, diverged last
    difference = draw_difference_chart(
        comparison.baseline.label, rows, out_dir / Path(DIFFERENCE_CHART).with_suffix(suffix).name
    )
    return [overlay, difference]
