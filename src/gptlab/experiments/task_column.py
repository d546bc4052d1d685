"""What every per-task column of a comparison shares (HellaSwag, ift): finding the runs' saved results, refusing to
compare results that differ in what they measured, and judging per-seed values with verdicts.py's rules.

A column module supplies how to read a run's saved entry, what makes two entries incomparable, and the per-run
value to judge (lower is better); this module does the rest, so both columns find references, name problems and
pair seeds the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from gptlab.experiments import verdicts
from gptlab.experiments.groups import Group, RunResult

Entry = Optional[dict[str, Any]]


@dataclass
class TaskColumn:
    identity: Optional[dict[str, Any]] = None  # what every run was evaluated on; None: no column
    judgement: Optional[verdicts.Judgement] = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Found:
    """The first run with a result (the one every other run's result must match) and that result."""

    reference: RunResult
    entry: dict[str, Any]


def _arm(group: Group, baseline: Group, value: Callable[[Entry], Optional[float]], saved_entry) -> verdicts.Arm:
    paired_as = group.arm(baseline)  # the test loss's arm: it knows whether seeds pair with the baseline's
    outcomes = []
    for run in group.runs:
        measured = value(saved_entry(run)) if run.stopped is None else None
        outcomes.append(verdicts.RunOutcome(run.seed, math.nan if measured is None else measured, run.stopped))
    return verdicts.Arm(group.label, outcomes, paired_as.same_data_order)


def judge_column(
    baseline: Group,
    groups: list[Group],
    seed_blind_reason: Optional[str],
    *,
    saved_entry: Callable[[RunResult], Entry],
    problem: Callable[[RunResult, Entry, RunResult, dict[str, Any]], str],
    value: Callable[[Entry], Optional[float]],
    quantity: str,
    not_compared: str,
) -> tuple[Optional[Found], TaskColumn]:
    """The reference result and the verdicts, or (None, a column holding only a note) when the runs' results
    cannot be compared, or (None, an empty column) when no run has one. `value` is lower-is-better."""
    runs = [run for group in groups for run in group.runs if run.stopped is None]
    entries = [saved_entry(run) for run in runs]
    first = next(((run, entry) for run, entry in zip(runs, entries) if entry), None)
    if first is None:
        return None, TaskColumn()
    reference, wanted = first
    problems = [found for run, entry in zip(runs, entries) if (found := problem(run, entry, reference, wanted))]
    if problems:
        return None, TaskColumn(notes=[f"{not_compared}: " + "; ".join(problems) + "."])
    judgement = verdicts.judge_interventions(
        _arm(baseline, baseline, value, saved_entry),
        [_arm(group, baseline, value, saved_entry) for group in groups if group is not baseline],
        seed_blind_reason,
        advise=False,
        quantity=quantity,
    )
    return Found(reference, wanted), TaskColumn(judgement=judgement)
