"""Was it worth it: runs compared at equal training time, equal money or equal tokens (`compare --budget`).

A finished run's validation curve is the steps of its metrics.jsonl that carry a `validation_loss`, each with
the timed training seconds (`train_seconds`: compile and validation time are not in it) and `tokens_seen` of
that step; money is training seconds x `cost_per_hour` (train.json, or `--cost-per-hour RUN=PRICE`).

- Equal budget: every run's validation loss read at the cheapest run's budget, linearly between its validation
  points and never outside them (a run whose first point comes later has no value there, and says so).
- Reach: the training time, money and tokens each run needed to reach the baseline's final validation loss (the
  mean over its seeds), where its interpolated curve first crosses it, or "not reached".
- Projection: for a run that spent more than the baseline, the baseline's loss at that run's budget from a learning
  curve L(t) = a + b * t^(-c) fitted to the baseline's validation points, with a 95% interval from the fit. It is an
  extrapolation and is labelled so wherever it is shown (`projection: true` in JSON), never put in a measured column.
- Verdicts: the losses at equal time and at equal money judged against the baseline by the main table's rules
  (verdicts.py: paired or Welch t-tests over seeds, Holm), beside the main table's own verdict on test loss.

The fit is done here with numpy rather than scipy (a test-only dependency, as for stats.py): for a fixed c the
model is linear in a and b, so a one-dimensional search over c with linear least squares inside finds the
least-squares fit (variable projection), and its covariance is curve_fit's, s^2 (J^T J)^-1. The tests check
both against scipy.optimize.curve_fit.
"""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from gptlab.errors import UserError
from gptlab.experiments import stats, verdicts
from gptlab.experiments.compare import Comparison, Group, RunResult, mean_of_present
from gptlab.experiments.tables import (
    comparison_json,
    csv_table,
    format_cost,
    format_duration,
    markdown_table,
    render,
    terminal_table,
    wrap_notes,
)
from gptlab.files import strict_json
from gptlab.rundir import METRICS, SUMMARY

BUDGETS = ("time", "cost", "tokens")
BUDGET_WORDS = {"time": "training time", "cost": "money", "tokens": "tokens"}
BUDGET_CHART = "loss-by-budget.png"
# summary.json rounds training seconds to the millisecond, metrics.jsonl to 0.1 ms: a budget this close past a
# run's last validation point is that point, not an extrapolation
TOLERANCE = 1e-3
FIT_FROM = 0.1  # the learning curve is fitted to validation points after this share of the baseline's budget
FIT_MIN_POINTS = 4  # three parameters and at least one degree of freedom for the interval
EXPONENT_RANGE = (1e-3, 5.0)  # the c searched; a best fit at either end is no fit


# --- a run's validation curve ----------------------------------------------------------------------------------


@dataclass
class ValidationCurve:
    """One run's validation points, and what its training cost."""

    run: RunResult
    seconds: list[float]  # timed training seconds at each validation point
    tokens: list[float]
    losses: list[float]
    price: Optional[float]  # dollars per hour
    seconds_estimated: bool = False  # metrics.jsonl had no train_seconds: spread over tokens from summary.json

    @property
    def total_seconds(self) -> float:
        seconds = self.run.summary.get("training_seconds")
        return float(seconds) if isinstance(seconds, (int, float)) else self.seconds[-1]

    @property
    def total_tokens(self) -> float:
        tokens = self.run.summary.get("tokens_seen")
        return float(tokens) if isinstance(tokens, (int, float)) else self.tokens[-1]

    def axis(self, kind: str) -> Optional[list[float]]:
        """The budget spent at each validation point: seconds, dollars or tokens (None: dollars without a price)."""
        if kind == "time":
            return self.seconds
        if kind == "tokens":
            return self.tokens
        return [seconds / 3600 * self.price for seconds in self.seconds] if self.price is not None else None

    def total(self, kind: str) -> Optional[float]:
        if kind == "time":
            return self.total_seconds
        if kind == "tokens":
            return self.total_tokens
        return self.total_seconds / 3600 * self.price if self.price is not None else None


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_validation_curve(run: RunResult, price: Optional[float]) -> Optional[ValidationCurve]:
    """The run's validation points in step order (a step recorded twice, by a resumed run, counts once: the last
    record); None when it has none."""
    from gptlab.train.charts import read_step_records

    by_step = {r["step"]: r for r in read_step_records(run.run_dir) if _number(r.get("validation_loss")) is not None}
    if not by_step:
        return None
    points = [by_step[step] for step in sorted(by_step)]
    steps = _number(run.summary.get("steps"))
    total_tokens = _number(run.summary.get("tokens_seen"))
    tokens_per_step = total_tokens / steps if steps and total_tokens else None
    tokens = [
        _number(p.get("tokens_seen")) or ((p["step"] + 1) * tokens_per_step if tokens_per_step else None)
        for p in points
    ]
    if any(t is None for t in tokens):
        return None
    seconds = [_number(p.get("train_seconds")) for p in points]
    estimated = any(s is None for s in seconds)
    if estimated:  # written by a gptlab before train_seconds was recorded: spread the total evenly over tokens
        total_seconds, last_tokens = _number(run.summary.get("training_seconds")), total_tokens or tokens[-1]
        if total_seconds is None:
            return None
        seconds = [total_seconds * t / last_tokens for t in tokens]
    return ValidationCurve(run, seconds, tokens, [float(p["validation_loss"]) for p in points], price, estimated)


def value_at(xs: Sequence[float], ys: Sequence[float], x: float) -> Optional[float]:
    """ys read at x, linearly between the two points around it; None before the first point or past the last."""
    if not xs or x < xs[0] * (1 - TOLERANCE) or x > xs[-1] * (1 + TOLERANCE):
        return None
    return float(np.interp(x, xs, ys))


def _outside(xs: Sequence[float], x: Optional[float]) -> Optional[str]:
    """Why a curve has no value at x: it starts after it, or ends before it (its last validation came earlier)."""
    if x is None or not xs:
        return None
    if x < xs[0] * (1 - TOLERANCE):
        return "before first point"
    return "after last point" if x > xs[-1] * (1 + TOLERANCE) else None


def first_reach(xs: Sequence[float], ys: Sequence[float], target: float) -> Optional[float]:
    """Where the curve through (xs, ys) first comes down to `target`, linearly between points; None if it never
    does. A curve already at or below it at its first point reaches it there (at the latest)."""
    for index, (x, y) in enumerate(zip(xs, ys)):
        if y <= target:
            if index == 0:
                return float(x)
            x0, y0 = xs[index - 1], ys[index - 1]
            return float(x0 + (y0 - target) / (y0 - y) * (x - x0))
    return None


# --- the learning curve ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LearningCurve:
    """L(t) = a + b * t^(-c), fitted by least squares; held in t / scale for conditioning."""

    scale: float
    a: float
    beta: float  # b for t measured in units of `scale`
    c: float
    covariance: np.ndarray  # of (a, beta, c), as curve_fit's pcov: s^2 (J^T J)^-1
    points: int
    residual_sd: float

    @property
    def b(self) -> float:
        return self.beta * self.scale**self.c

    def __call__(self, t: Any) -> Any:
        return self.a + self.beta * (np.asarray(t, dtype=float) / self.scale) ** (-self.c)

    def interval(self, t: float, level: float = 0.95) -> tuple[float, float]:
        """The confidence interval of the fitted curve at t: the delta method on the fit's covariance, Student's t
        with points - 3 degrees of freedom. Seed noise and a curve that bends away from a power law are not in it."""
        s = t / self.scale
        gradient = np.array([1.0, s ** (-self.c), -self.beta * s ** (-self.c) * math.log(s)])
        spread = math.sqrt(max(0.0, float(gradient @ self.covariance @ gradient)))
        half = stats.student_t_quantile(0.5 + level / 2, self.points - 3) * spread
        value = float(self(t))
        return value - half, value + half


def _linear_fit(s: np.ndarray, y: np.ndarray, c: float) -> tuple[float, float, float]:
    """(a, beta, squared error) of the least-squares line y = a + beta * s^-c for a fixed c."""
    design = np.column_stack([np.ones_like(s), s ** (-c)])
    (a, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(a), float(beta), float(np.sum((design @ (a, beta) - y) ** 2))


def fit_learning_curve(ts: Sequence[float], losses: Sequence[float]) -> Optional[LearningCurve]:
    """The least-squares L(t) = a + b * t^(-c) through the points (t > 0); None with fewer than FIT_MIN_POINTS
    points, or when the best c lies at the end of EXPONENT_RANGE (the points do not bend like a power law)."""
    t, y = np.asarray(ts, dtype=float), np.asarray(losses, dtype=float)
    keep = (t > 0) & np.isfinite(y)
    t, y = t[keep], y[keep]
    if len(t) < FIT_MIN_POINTS or len(set(t.tolist())) < 3:
        return None
    scale = float(t.max())
    s = t / scale
    grid = np.geomspace(*EXPONENT_RANGE, 400)
    errors = [_linear_fit(s, y, c)[2] for c in grid]
    best = int(np.argmin(errors))
    if best in (0, len(grid) - 1):
        return None
    low, high = math.log(grid[best - 1]), math.log(grid[best + 1])
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(80):  # golden-section search on log c between the grid's neighbours of the best
        left, right = high - golden * (high - low), low + golden * (high - low)
        if _linear_fit(s, y, math.exp(left))[2] < _linear_fit(s, y, math.exp(right))[2]:
            high = right
        else:
            low = left
    c = math.exp((low + high) / 2)
    a, beta, error = _linear_fit(s, y, c)
    jacobian = np.column_stack([np.ones_like(s), s ** (-c), -beta * s ** (-c) * np.log(s)])
    residual_variance = error / (len(t) - 3)
    try:
        covariance = residual_variance * np.linalg.inv(jacobian.T @ jacobian)
    except np.linalg.LinAlgError:
        return None
    return LearningCurve(scale, a, beta, c, covariance, len(t), math.sqrt(residual_variance))


# --- prices --------------------------------------------------------------------------------------------------


def parse_prices(assignments: Iterable[str]) -> dict[str, float]:
    """`--cost-per-hour RUN=PRICE` values -> {RUN: dollars per hour}; a bad one is a UserError naming it."""
    prices: dict[str, float] = {}
    for assignment in assignments:
        run, equals, price = assignment.rpartition("=")
        if not equals or not run:
            raise UserError(
                f"--cost-per-hour {assignment}: expected RUN=PRICE (a run directory or group label, then dollars per hour, e.g. runs/fp32=2.49)"
            )
        try:
            value = float(price)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise UserError(
                f"--cost-per-hour {assignment}: PRICE must be a finite number of dollars per hour, 0 or more"
            )
        prices[run] = value
    return prices


def _run_prices(comparison: Comparison, prices: dict[str, float]) -> dict[Path, Optional[float]]:
    """Each run's dollars per hour: --cost-per-hour by run directory, else by its group's label, else what it trained with."""
    by_run: dict[Path, Optional[float]] = {}
    used: set[str] = set()
    for group in comparison.groups:
        for run in group.runs:
            price = _number(run.summary.get("cost_per_hour"))
            if price is None:
                price = _number((run.config.get("train") or {}).get("cost_per_hour"))
            for name, value in prices.items():
                if Path(name).resolve() == run.run_dir.resolve() or name == group.label:
                    price = value
                    used.add(name)
            by_run[run.run_dir.resolve()] = price
    unknown = [name for name in prices if name not in used]
    if unknown:
        raise UserError(
            f"--cost-per-hour {unknown[0]}=...: {unknown[0]} is neither a run compared nor a group label "
            f"({', '.join(group.label for group in comparison.groups)})"
        )
    return by_run


# --- the comparison at equal budget ------------------------------------------------------------------------


@dataclass
class BudgetComparison:
    kind: str  # time, cost or tokens
    budget: float  # the cheapest run's (seconds, dollars or tokens)
    cheapest: str  # that run's directory
    baseline: str  # the baseline group's label
    target: Optional[float]  # the baseline's final validation loss, mean over its seeds
    rows: list[dict[str, Any]]
    verdicts: list[str]
    notes: list[str]
    fit: Optional[LearningCurve]
    curves: dict[str, list[ValidationCurve]] = field(default_factory=dict)  # by group label, for the charts
    cost_budget: Optional[float] = None  # the cheapest run in dollars, when every run has a price
    time_budget: Optional[float] = None


def format_budget(kind: str, value: Optional[float]) -> str:
    if value is None:
        return "-"
    if kind == "time":
        return format_duration(value) if value >= 60 else f"{value:.1f} s"
    if kind == "cost":
        return format_cost(value)
    return f"{value:,.0f} tokens"


def _run_numbers(
    curve: ValidationCurve, kind: str, budgets: dict[str, Optional[float]], target: Optional[float]
) -> dict[str, Any]:
    run = curve.run
    losses = curve.losses
    reach_seconds = first_reach(curve.seconds, losses, target) if target is not None else None
    return {
        "run_dir": str(run.run_dir),
        "seed": run.seed,
        "loss_at_budget": value_at(curve.axis(kind) or [], losses, budgets[kind])
        if budgets[kind] is not None
        else None,
        "loss_at_equal_time": value_at(curve.seconds, losses, budgets["time"]) if budgets["time"] is not None else None,
        "loss_at_equal_cost": value_at(curve.axis("cost") or [], losses, budgets["cost"])
        if budgets["cost"] is not None
        else None,
        "budget_outside": _outside(curve.axis(kind) or [], budgets[kind]),
        "final_validation_loss": losses[-1],
        "training_seconds": curve.total_seconds,
        "compile_seconds": _number(run.summary.get("compile_seconds")),
        "validation_seconds": _number(run.summary.get("validation_seconds")),
        "tokens_seen": curve.total_tokens,
        "cost_per_hour": curve.price,
        "cost": curve.total("cost"),
        "reach_seconds": reach_seconds,
        "reach_cost": reach_seconds / 3600 * curve.price
        if reach_seconds is not None and curve.price is not None
        else None,
        "reach_tokens": first_reach(curve.tokens, losses, target) if target is not None else None,
        "reach_target": target,
        "validation_points": len(losses),
        "seconds_estimated": curve.seconds_estimated,
    }


def _judge(comparison: Comparison, numbers: dict[str, list[dict[str, Any]]], key: str) -> dict[str, verdicts.Verdict]:
    """The main table's verdict rules on each run's loss at equal time or equal money."""
    baseline = comparison.baseline

    def arm(group: Group) -> verdicts.Arm:
        outcomes = [
            verdicts.RunOutcome(
                row["seed"], row[key], next(r.stopped for r in group.runs if str(r.run_dir) == row["run_dir"])
            )
            for row in numbers[group.label]
            if row[key] is not None
        ]
        return verdicts.Arm(group.label, outcomes, group.arm(baseline).same_data_order)

    base_arm = arm(baseline)
    others = [arm(group) for group in comparison.groups if group is not baseline]
    return verdicts.judge_interventions(base_arm, [a for a in others if a.runs], advise=False).verdicts


def _better_words(improvement: Optional[float], verdict: Optional[verdicts.Verdict], where: str) -> str:
    if improvement is None:
        return f"no value at {where}"
    direction = "better" if improvement > 0 else "worse" if improvement < 0 else "the same"
    noise = verdict.words if verdict is not None else "not judged"
    return f"{direction} ({improvement:+.4f} nats at {where}; {noise})"


def _read_curves(
    comparison: Comparison, run_prices: dict[Path, Optional[float]]
) -> tuple[dict[str, list[ValidationCurve]], list[str]]:
    """Each group's validation curves, and a note for every run left out (and why)."""
    notes: list[str] = []
    curves: dict[str, list[ValidationCurve]] = {}
    for group in comparison.groups:
        curves[group.label] = []
        for run in group.runs:
            if not run.summary:
                notes.append(
                    f"{run.run_dir}: stopped before it finished ({run.stopped}); left out of the budget comparison."
                )
                continue
            curve = read_validation_curve(run, run_prices[run.run_dir.resolve()])
            if curve is None:
                notes.append(
                    f"{run.run_dir}: no validation points in its {METRICS} (validation_batches 0, or no validation split); "
                    "skipped in the budget comparison."
                )
                continue
            curves[group.label].append(curve)
            if curve.seconds_estimated:
                notes.append(
                    f"{run.run_dir}: its {METRICS} has no train_seconds (an older gptlab); its time at each validation "
                    f"point is the {SUMMARY} training time spread evenly over its tokens."
                )
    return curves, notes


def _reach_targets(
    comparison: Comparison, curves: dict[str, list[ValidationCurve]], mean_target: Optional[float]
) -> dict[Path, Optional[float]]:
    """The loss each run must reach: the final validation loss of the baseline run with its seed where the seeds pair
    (same data order, as for the paired t-test, so what a seed does to both runs alike cancels), else the baseline's
    mean over its seeds."""
    by_seed: dict[Any, list[float]] = {}
    for curve in curves[comparison.baseline.label]:
        by_seed.setdefault(curve.run.seed, []).append(curve.losses[-1])
    targets: dict[Path, Optional[float]] = {}
    for group in comparison.groups:
        pairs = group is comparison.baseline or group.arm(comparison.baseline).same_data_order
        for curve in curves[group.label]:
            own = by_seed.get(curve.run.seed, [])
            targets[curve.run.run_dir] = own[0] if pairs and len(own) == 1 else mean_target
    return targets


def _fit_baseline(
    curves: dict[str, list[ValidationCurve]], baseline: str, kind: str
) -> tuple[Optional[LearningCurve], Optional[str]]:
    """The learning curve of the baseline's validation points, when some other run spent more than the baseline (its
    loss there can only be projected); else, or when no curve fits, None and why."""
    base_curves = curves[baseline]
    if not base_curves:
        return None, None
    base_total = statistics.fmean(curve.total(kind) for curve in base_curves)
    if not any(
        curve.total(kind) > base_total * (1 + TOLERANCE)
        for label, group_curves in curves.items()
        if label != baseline
        for curve in group_curves
    ):
        return None, None
    points = [
        (x, y) for curve in base_curves for x, y in zip(curve.axis(kind), curve.losses) if x >= FIT_FROM * base_total
    ]
    fit = fit_learning_curve([x for x, _ in points], [y for _, y in points])
    if fit is not None:
        return fit, None
    why = (
        f"only {len(points)} validation points after the first {FIT_FROM:.0%} of its budget, {FIT_MIN_POINTS} needed "
        "(set validation_interval for more)"
        if len(points) < FIT_MIN_POINTS
        else "its validation points do not bend like a power law"
    )
    return None, f"No projection: no learning curve L(t) = a + b*t^-c could be fitted to {baseline}: {why}."


def _group_row(group: Group, numbers: list[dict[str, Any]], curves: list[ValidationCurve], kind: str) -> dict[str, Any]:
    """One group's measured numbers: means over its seeds (reach: over the seeds that reached the baseline's loss)."""
    at_budget = [n["loss_at_budget"] for n in numbers if n["loss_at_budget"] is not None]
    reached = [n for n in numbers if n["reach_seconds"] is not None]
    return {
        "run": group.label,
        "seeds": len(group.runs),
        "seeds_with_curve": len(numbers),
        "budget_spent": mean_of_present(curve.total(kind) for curve in curves),
        **{
            key: mean_of_present(n[key] for n in numbers)
            for key in ("training_seconds", "compile_seconds", "validation_seconds")
        },
        **{key: mean_of_present(n[key] for n in numbers) for key in ("cost_per_hour", "cost", "tokens_seen")},
        "loss_at_budget": mean_of_present(at_budget),
        "loss_at_budget_min": min(at_budget) if at_budget else None,
        "loss_at_budget_max": max(at_budget) if at_budget else None,
        "seeds_at_budget": len(at_budget),
        "budget_outside": sorted({n["budget_outside"] for n in numbers if n["budget_outside"]}),
        "improvement_at_budget": None,
        "final_validation_loss": mean_of_present(n["final_validation_loss"] for n in numbers),
        "reached": len(reached),
        "reach_seconds": mean_of_present(n["reach_seconds"] for n in reached),
        "reach_cost": mean_of_present(n["reach_cost"] for n in reached)
        if all(n["reach_cost"] is not None for n in reached)
        else None,
        "reach_tokens": mean_of_present(n["reach_tokens"] for n in reached),
        "projection": None,
        "verdict_per_hour": None,
        "verdict_per_dollar": None,
        "runs": numbers,
    }


def _projection(fit: LearningCurve, budget: float, measured: Optional[float]) -> dict[str, Any]:
    low, high = fit.interval(budget)
    return {
        "projection": True,
        "budget": budget,
        "baseline_loss": float(fit(budget)),
        "interval95": [low, high],
        "measured_loss": measured,
        "curve": {"a": fit.a, "b": fit.b, "c": fit.c, "points": fit.points, "residual_sd": fit.residual_sd},
    }


def _worth_it(
    row: dict[str, Any],
    base_losses: dict[str, Optional[float]],
    budgets: dict[str, Optional[float]],
    judged: dict[str, dict[str, verdicts.Verdict]],
    test_loss_verdict: str,
) -> str:
    """Fill the row's per-hour and per-dollar verdicts, and say them in one line."""
    parts = []
    for axis, unit in (("time", "hour"), ("cost", "dollar")):
        if budgets[axis] is None:
            parts.append(f"per {unit}: no price for every run (--cost-per-hour RUN=PRICE)")
            continue
        ours, base = mean_of_present(n[f"loss_at_equal_{axis}"] for n in row["runs"]), base_losses[axis]
        improvement = base - ours if ours is not None and base is not None else None
        verdict = judged[axis].get(row["run"])
        row[f"verdict_per_{unit}"] = {
            "improvement": improvement,
            "noise": verdict.label if verdict else None,
            "test": verdict.decided_by if verdict else None,
            "p": verdict.deciding.p if verdict and verdict.deciding else None,
            "p_holm": verdict.p_holm if verdict else None,
            "words": verdict.words if verdict else None,
        }
        parts.append(f"per {unit} {_better_words(improvement, verdict, format_budget(axis, budgets[axis]))}")
    return f"{row['run']}: " + "; ".join(parts) + f"; test loss at its own length: {test_loss_verdict}"


def budget_comparison(comparison: Comparison, kind: str, prices: Optional[dict[str, float]] = None) -> BudgetComparison:
    """Every group of `comparison` at the cheapest run's budget of `kind`, with reach times, the projection and verdicts."""
    if kind not in BUDGETS:
        raise UserError(f"--budget {kind}: not a budget; choose one of {', '.join(BUDGETS)}")
    baseline = comparison.baseline.label
    curves, notes = _read_curves(comparison, _run_prices(comparison, prices or {}))
    every = [curve for group_curves in curves.values() for curve in group_curves]
    if not every:
        raise UserError(
            "compare --budget: no run has validation points in its metrics.jsonl; train with validation_batches > 0"
        )
    unpriced = [str(curve.run.run_dir) for curve in every if curve.price is None]
    if kind == "cost" and unpriced:
        raise UserError(
            f"compare --budget cost: no cost_per_hour for {', '.join(unpriced)}; "
            "set it in train.json or here with --cost-per-hour RUN=PRICE"
        )
    # the cheapest run's budget on every axis (money only when every run has a price)
    budgets: dict[str, Optional[float]] = {
        axis: None if axis == "cost" and unpriced else min(curve.total(axis) for curve in every) for axis in BUDGETS
    }
    cheapest = min(every, key=lambda curve: curve.total(kind))
    target = mean_of_present(curve.losses[-1] for curve in curves[baseline])
    targets = _reach_targets(comparison, curves, target)
    numbers = {
        label: [_run_numbers(c, kind, budgets, targets[c.run.run_dir]) for c in group_curves]
        for label, group_curves in curves.items()
    }
    fit, no_fit = _fit_baseline(curves, baseline, kind)
    notes += [no_fit] if no_fit else []
    judged = {
        axis: _judge(comparison, numbers, f"loss_at_equal_{axis}")
        for axis in ("time", "cost")
        if budgets[axis] is not None
    }
    base_losses = {
        axis: mean_of_present(n[f"loss_at_equal_{axis}"] for n in numbers[baseline]) for axis in ("time", "cost")
    }
    base_at_budget = mean_of_present(n["loss_at_budget"] for n in numbers[baseline])
    base_total = mean_of_present(curve.total(kind) for curve in curves[baseline])

    rows, verdict_lines = [], []
    test_loss_verdicts = {row["run"]: row["verdict"] for row in comparison.rows}
    for group in comparison.groups:
        row = _group_row(group, numbers[group.label], curves[group.label], kind)
        if group.label != baseline:
            if row["loss_at_budget"] is not None and base_at_budget is not None:
                row["improvement_at_budget"] = base_at_budget - row["loss_at_budget"]
            spent = row["budget_spent"]
            if (
                fit is not None
                and spent is not None
                and base_total is not None
                and spent > base_total * (1 + TOLERANCE)
            ):
                row["projection"] = _projection(fit, spent, row["final_validation_loss"])
            verdict_lines.append(_worth_it(row, base_losses, budgets, judged, test_loss_verdicts[group.label]))
        row["test_loss_verdict"] = test_loss_verdicts[group.label]
        rows.append(row)
    rows.sort(key=lambda row: (row["run"] != baseline, row["loss_at_budget"] is None, row["loss_at_budget"] or 0.0))
    notes += _budget_notes(comparison, kind, budgets, cheapest, target, fit)
    return BudgetComparison(
        kind,
        budgets[kind],
        str(cheapest.run.run_dir),
        baseline,
        target,
        rows,
        verdict_lines,
        notes,
        fit,
        curves,
        budgets["cost"],
        budgets["time"],
    )


def _budget_notes(
    comparison: Comparison,
    kind: str,
    budgets: dict[str, Optional[float]],
    cheapest: ValidationCurve,
    target: Optional[float],
    fit: Optional[LearningCurve],
) -> list[str]:
    notes = [
        f"Equal {BUDGET_WORDS[kind]}: each run's validation loss when it had spent {format_budget(kind, budgets[kind])}, the cheapest "
        f"run's whole budget ({cheapest.run.run_dir}), read linearly between its validation points and never beyond them. "
        "Time is timed training steps only: compile time (the first step when compiling) and validation time are shown apart; "
        "cost is that time x cost_per_hour.",
        f"Reach: the training time, money and tokens a run needed to come down to {comparison.baseline.label}'s final validation "
        "loss, where its interpolated validation curve first crosses it: the final loss of the baseline run with its seed where "
        f"seeds pair (same data order, as for the paired t-test), else the baseline's mean over its seeds ({target:.4f}); per "
        "group the mean over the seeds that reached it."
        if target is not None
        else "",
        "Per hour / per dollar: the group's mean validation loss at equal time / equal money against the baseline's, judged by the "
        "main table's tests over seeds (validation loss here, test loss in the main table).",
    ]
    if fit is not None:
        notes.append(
            f"Projection (not measured): {comparison.baseline.label}'s validation loss extrapolated to a longer run's budget by "
            f"L(t) = a + b*t^-c fitted to its {fit.points} validation points after the first {FIT_FROM:.0%} of its budget "
            f"(a = {fit.a:.4f}, b = {fit.b:.4g}, c = {fit.c:.4f}, residual SD {fit.residual_sd:.4f}); the interval is the fit's "
            "95% confidence interval, which leaves out seed noise and any bend away from a power law."
        )
    return [note for note in notes if note]


# --- rendering ---------------------------------------------------------------------------------------------


def _loss(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def budget_columns(budget: BudgetComparison) -> list[str]:
    at = format_budget(budget.kind, budget.budget)
    return [
        "run",
        "seeds",
        "training time",
        "compile",
        "validation",
        "$/h",
        "cost",
        "tokens",
        f"val loss at {at}",
        "min-max",
        "improvement",
        f"time to {budget.baseline}'s loss",
        f"cost to {budget.baseline}'s loss",
        f"tokens to {budget.baseline}'s loss",
    ]


def budget_cells(row: dict[str, Any]) -> list[str]:
    seeds = (
        str(row["seeds"]) if row["seeds_with_curve"] == row["seeds"] else f"{row['seeds_with_curve']} of {row['seeds']}"
    )
    spread = f"{row['loss_at_budget_min']:.4f}-{row['loss_at_budget_max']:.4f}" if row["seeds_at_budget"] > 1 else "-"
    at_budget = _loss(row["loss_at_budget"])
    if row["seeds_at_budget"] and row["seeds_at_budget"] < row["seeds_with_curve"]:
        at_budget += f" ({row['seeds_at_budget']} of {row['seeds_with_curve']})"
    elif not row["seeds_at_budget"] and row["seeds_with_curve"]:
        at_budget = " / ".join(row.get("budget_outside") or ["no point"])

    def reach(value: Optional[float], axis: str) -> str:
        if not row["seeds_with_curve"]:
            return "-"
        if not row["reached"]:
            return "not reached"
        words = format_budget(axis, value)
        return (
            words
            if row["reached"] == row["seeds_with_curve"]
            else f"{words} ({row['reached']} of {row['seeds_with_curve']})"
        )

    return [
        row["run"],
        seeds,
        format_budget("time", row["training_seconds"]),
        format_budget("time", row["compile_seconds"]),
        format_budget("time", row["validation_seconds"]),
        "-" if row["cost_per_hour"] is None else f"{row['cost_per_hour']:g}",
        format_cost(row["cost"]),
        "-" if row["tokens_seen"] is None else f"{row['tokens_seen']:,.0f}",
        at_budget,
        spread,
        "-" if row["improvement_at_budget"] is None else f"{row['improvement_at_budget']:+.4f}",
        reach(row["reach_seconds"], "time"),
        reach(row["reach_cost"], "cost") if row["cost_per_hour"] is not None or not row["reached"] else "-",
        reach(row["reach_tokens"], "tokens").replace(" tokens", ""),
    ]


def projection_lines(budget: BudgetComparison) -> list[str]:
    lines = []
    for row in budget.rows:
        projection = row["projection"]
        if projection is None:
            continue
        low, high = projection["interval95"]
        lines.append(
            f"{row['run']} spent {format_budget(budget.kind, projection['budget'])}: its measured final validation loss "
            f"{_loss(projection['measured_loss'])}; {budget.baseline} PROJECTED to that budget: {projection['baseline_loss']:.4f} "
            f"(95% interval of the fit {low:.4f} to {high:.4f}; a projection, not measured)"
        )
    return lines


def render_budget(budget: BudgetComparison, markdown: bool = False, width: Optional[int] = None) -> str:
    """The budget section under the main table: the equal-budget table (in the terminal drawn as the main table is, to
    fit `width`), projections, verdicts, notes."""
    title = f"Equal {BUDGET_WORDS[budget.kind]}: every run at {format_budget(budget.kind, budget.budget)} (the cheapest run's budget)"
    lines = [("### " if markdown else "") + title, ""]
    header, cells = budget_columns(budget), [budget_cells(row) for row in budget.rows]
    lines += markdown_table(header, cells) if markdown else terminal_table(header, cells, width)[0]
    bullet = "- " if markdown else ""

    def paragraphs(texts: list[str]) -> list[str]:
        return [bullet + text for text in texts] if markdown else wrap_notes(texts, width)

    projections = projection_lines(budget)
    if projections:
        lines += ["", "Projections (extrapolated by a fitted learning curve, not measured):"] + paragraphs(projections)
    if budget.verdicts:
        lines += ["", "Worth it?"] + paragraphs(budget.verdicts)
    lines += [""] + paragraphs(budget.notes)
    return "\n".join(lines) + "\n"


def _fit_json(fit: Optional[LearningCurve]) -> Optional[dict[str, Any]]:
    if fit is None:
        return None
    return {
        "a": fit.a,
        "b": fit.b,
        "c": fit.c,
        "points": fit.points,
        "residual_sd": fit.residual_sd,
        "projection": True,
    }


def budget_json(budget: BudgetComparison) -> dict[str, Any]:
    return {
        "kind": budget.kind,
        "budget": budget.budget,
        "time_budget_seconds": budget.time_budget,
        "cost_budget_dollars": budget.cost_budget,
        "cheapest_run": budget.cheapest,
        "baseline": budget.baseline,
        "baseline_final_validation_loss": budget.target,
        "rows": budget.rows,
        "verdicts": budget.verdicts,
        "learning_curve": _fit_json(budget.fit),
        "notes": budget.notes,
    }


def render_with_budget(
    comparison: Comparison,
    budget: BudgetComparison,
    output_format: str,
    columns: Optional[Sequence[str]] = None,
    width: Optional[int] = None,
) -> str:
    """The main table in `output_format` with the budget section: under it in text, as a `budget` key in JSON, and as
    budget_* columns in CSV (one row per group, as the table's)."""
    if output_format == "json":
        return strict_json({**comparison_json(comparison), "budget": budget_json(budget)}, indent=2) + "\n"
    if output_format == "csv":
        return _csv_with_budget(comparison, budget, columns)
    markdown = output_format == "markdown"
    return render(comparison, output_format, columns, width) + "\n" + render_budget(budget, markdown, width)


BUDGET_CSV_FIELDS = (
    "budget",
    "budget_value",
    "loss_at_budget",
    "improvement_at_budget",
    "reach_seconds",
    "reach_cost",
    "reach_tokens",
    "projected_baseline_loss",
    "projected_low",
    "projected_high",
)


def _csv_with_budget(comparison: Comparison, budget: BudgetComparison, columns: Optional[Sequence[str]] = None) -> str:
    by_label = {row["run"]: row for row in budget.rows}
    extra = {}
    for label in (table_row["run"] for table_row in comparison.rows):  # a group left out of the budget: blanks
        row = by_label.get(label, {})
        projection = row.get("projection") or {}
        low, high = projection.get("interval95") or [None, None]
        extra[label] = {
            "budget": budget.kind,
            "budget_value": budget.budget,
            "loss_at_budget": row.get("loss_at_budget"),
            "improvement_at_budget": row.get("improvement_at_budget"),
            "reach_seconds": row.get("reach_seconds"),
            "reach_cost": row.get("reach_cost"),
            "reach_tokens": row.get("reach_tokens"),
            "projected_baseline_loss": projection.get("baseline_loss"),
            "projected_low": low,
            "projected_high": high,
        }
    return csv_table(comparison, columns, BUDGET_CSV_FIELDS, extra)


def budget_html(budget: BudgetComparison, chart_tag: str) -> str:
    """The report's section: the equal-budget table, projections, verdicts, notes and the chart."""
    head = "".join(f"<th>{html.escape(column)}</th>" for column in budget_columns(budget))
    body = "".join(
        f'<tr data-run="{html.escape(row["run"])}">'
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in budget_cells(row))
        + "</tr>"
        for row in budget.rows
    )

    def items(lines: list[str]) -> str:
        return "".join(f"<li>{html.escape(line)}</li>" for line in lines)

    projections = projection_lines(budget)
    title = f"Was it worth it: equal {BUDGET_WORDS[budget.kind]} ({format_budget(budget.kind, budget.budget)})"
    return (
        f"<h2>{html.escape(title)}</h2>"
        f'<table id="budget"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        + (
            f'<h3>Projections (not measured)</h3><ul class="projections">{items(projections)}</ul>'
            if projections
            else ""
        )
        + (f'<h3>Worth it?</h3><ul class="verdicts">{items(budget.verdicts)}</ul>' if budget.verdicts else "")
        + f'<ul class="notes">{items(budget.notes)}</ul>{chart_tag}'
    )


# --- the chart -----------------------------------------------------------------------------------------------


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds < 120:
        return 1.0, "seconds"
    if seconds < 2 * 3600:
        return 60.0, "minutes"
    return 3600.0, "hours"


def draw_budget_chart(budget: BudgetComparison, path: Path) -> Path:
    """Validation loss against training time (left) and money (right), every group overlaid: a group of seeds as its
    mean with the min-max band of its seeds where they all ran, and each seed's own curve thin to its end; a single run
    as its curve. The first tenth of the spend is left off the loss axis (its loss of ~11 would flatten the rest).
    The cheapest run's budget is a dotted line,
    the baseline's final loss a dashed one, and the baseline's fitted learning curve past its own end a thin dashed
    continuation labelled as a projection."""
    from matplotlib.figure import Figure

    from gptlab.experiments.charts import _group_band, save_chart
    from gptlab.train.charts import DPI

    figure = Figure(figsize=(12, 4.5), dpi=DPI, layout="constrained")
    by_time, by_cost = figure.subplots(1, 2)
    longest = max((curve.total_seconds for curves in budget.curves.values() for curve in curves), default=1.0)
    divisor, unit = _time_unit(longest)
    ordered = [budget.baseline] + [label for label in budget.curves if label != budget.baseline]
    for axes, axis in ((by_time, "time"), (by_cost, "cost")):
        priced = all(curve.price is not None for curves in budget.curves.values() for curve in curves)
        if axis == "cost" and not priced:
            axes.text(
                0.5,
                0.5,
                "no cost_per_hour for every run:\nset it with --cost-per-hour RUN=PRICE",
                ha="center",
                va="center",
                transform=axes.transAxes,
            )
            axes.set_axis_off()
            continue
        scale = divisor if axis == "time" else 1.0
        settled: list[float] = []
        for index, label in enumerate(ordered):
            runs = [([x / scale for x in curve.axis(axis)], curve.losses, []) for curve in budget.curves.get(label, [])]
            if not runs:
                continue
            colour = f"C{index % 10}"
            end = max(xs[-1] for xs, _, _ in runs)
            settled += [y for xs, ys, _ in runs for x, y in zip(xs, ys) if x >= 0.1 * end]
            if len(runs) > 1:
                xs, means, lows, highs = _group_band(runs)
                axes.plot(
                    xs, means, color=colour, marker=".", label=f"{label} (mean of {len(runs)} seeds, band: min-max)"
                )
                axes.fill_between(xs, lows, highs, color=colour, alpha=0.2, linewidth=0)
                for xs, ys, _ in runs:
                    axes.plot(xs, ys, color=colour, linewidth=0.7, alpha=0.5)
            else:
                axes.plot(runs[0][0], runs[0][1], color=colour, marker=".", label=label)
        if settled:
            low, high = min(settled), max(settled)
            axes.set_ylim(low - 0.05 * (high - low or 1), high + 0.05 * (high - low or 1))
        budget_at = budget.time_budget / divisor if axis == "time" else budget.cost_budget
        if budget_at is not None:
            axes.axvline(budget_at, color="black", linestyle=":", linewidth=1, label="the cheapest run's budget")
        if budget.target is not None:
            axes.axhline(
                budget.target, color="grey", linestyle="--", linewidth=0.8, label=f"{budget.baseline}'s final loss"
            )
        if budget.fit is not None and budget.kind == axis:
            base_end = max(curve.total(axis) for curve in budget.curves[budget.baseline])
            far = max(curve.total(axis) for curves in budget.curves.values() for curve in curves)
            if far > base_end * (1 + TOLERANCE):
                ts = np.linspace(base_end, far, 50)
                axes.plot(
                    ts / scale,
                    budget.fit(ts),
                    color="C0",
                    linestyle="--",
                    linewidth=1,
                    label=f"{budget.baseline} projected (fitted a + b*t^-c, not measured)",
                )
        axes.set_xlabel(f"training time ({unit})" if axis == "time" else "training cost (dollars)")
        axes.set_ylabel("validation loss (nats)")
        axes.set_title("Validation loss against " + ("training time" if axis == "time" else "money"), fontsize=11)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize=8)
    return save_chart(figure, Path(path))


def draw_budget_charts(budget: BudgetComparison, out_dir: Path, chart_format: str = "png") -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [draw_budget_chart(budget, out_dir / Path(BUDGET_CHART).with_suffix("." + chart_format).name)]


# --- the front door: compare (with a budget when asked) and its output, for cli.py, api.py and commands.py ----------


def budget_if_asked(
    comparison: Comparison,
    kind: Optional[str],
    prices: Optional[dict[str, float]],
    price_words: str = "--cost-per-hour",
) -> Optional[BudgetComparison]:
    """The comparison at an equal budget when `kind` asks for one; prices without a budget are refused."""
    _refuse_prices_without_budget(kind, prices, price_words)
    return budget_comparison(comparison, kind, prices) if kind is not None else None


def _refuse_prices_without_budget(kind: Optional[str], prices: Optional[dict[str, float]], words: str) -> None:
    if kind is None and prices:
        raise UserError(f"{words}: only with --budget time|cost|tokens (budget='time', 'cost' or 'tokens')")


def compare_with_budget(
    run_dirs: Sequence[Path],
    baseline_dir: Optional[Path] = None,
    datasets_dir: Optional[Path] = None,
    echo: Any = print,
    allow_mixed_checkpoints: bool = False,
    kind: Optional[str] = None,
    prices: Optional[dict[str, float]] = None,
    price_words: str = "--cost-per-hour",
) -> tuple[Comparison, Optional[BudgetComparison]]:
    """`gptlab compare [--budget KIND]`: the comparison of the runs and, when asked, the same runs at an equal budget
    (runs of any length then share the table, noted)."""
    from gptlab.experiments.compare import compare_runs

    _refuse_prices_without_budget(kind, prices, price_words)  # before any run is evaluated
    comparison = compare_runs(
        list(run_dirs), baseline_dir, datasets_dir, echo, allow_mixed_checkpoints, budget=kind is not None
    )
    return comparison, budget_if_asked(comparison, kind, prices, price_words)


def render_comparison(
    comparison: Comparison,
    budget: Optional[BudgetComparison],
    output_format: str,
    columns: Optional[Sequence[str]] = None,
    width: Optional[int] = None,
) -> str:
    """The comparison as `output_format`, with the budget section when there is one."""
    if budget is None:
        return render(comparison, output_format, columns, width)
    return render_with_budget(comparison, budget, output_format, columns, width)


def comparison_data(comparison: Comparison, budget: Optional[BudgetComparison]) -> dict[str, Any]:
    """The `--format json` data: the comparison, with a `budget` key when there is one."""
    data = comparison_json(comparison)
    return {**data, "budget": budget_json(budget)} if budget is not None else data
