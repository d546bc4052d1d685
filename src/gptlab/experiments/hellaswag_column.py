"""The HellaSwag column of a comparison: each group's mean acc_norm, with a noise verdict of its own.

Runs are compared on HellaSwag only when every run with a usable test loss has a HellaSwag result
(`gptlab eval RUN --task hellaswag --save`) on the same items (the same file by its sha256, the same number
of items) and of the checkpoint its test loss is of; otherwise the column shows "-" and a note says which run
lacks what. The verdicts are verdicts.py's rules applied to per-seed error rates (1 - acc_norm: lower is
better, as for losses, so an improvement is a gain in accuracy), Holm-adjusted as a family of their own.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Optional

from gptlab.experiments.groups import Group, RunResult
from gptlab.experiments.task_column import TaskColumn, judge_column
from gptlab.rundir import HELLASWAG_ENTRY

HellaSwagColumn = TaskColumn  # the name compare.py and the tests use


def saved_entry(run: RunResult) -> Optional[dict[str, Any]]:
    entry = run.evaluation.get(HELLASWAG_ENTRY)
    usable = isinstance(entry, dict) and isinstance(entry.get("acc_norm"), (int, float))
    return entry if usable else None


def _items_words(entry: dict[str, Any]) -> str:
    return f"{entry.get('items', 0):,} items of {Path(str(entry.get('file'))).name} (sha256 {str(entry.get('file_sha256'))[:12]})"


def _problem(run: RunResult, entry: Optional[dict[str, Any]], reference: RunResult, wanted: dict[str, Any]) -> str:
    if entry is None:
        return f"{run.run_dir} has none (`gptlab eval {run.run_dir} --task hellaswag --save`)"
    if (entry.get("file_sha256"), entry.get("items")) != (wanted.get("file_sha256"), wanted.get("items")):
        return f"{run.run_dir} was scored on {_items_words(entry)}, {reference.run_dir} on {_items_words(wanted)}"
    if entry.get("precision") != wanted.get("precision"):
        return f"{run.run_dir} was scored in {entry.get('precision')}, {reference.run_dir} in {wanted.get('precision')}"
    if entry.get("checkpoint") != run.evaluation.get("checkpoint"):
        return (
            f"{run.run_dir} was scored at checkpoint {entry.get('checkpoint')}, its test loss is of "
            f"{run.evaluation.get('checkpoint')}"
        )
    return ""


def _error_rate(entry: Optional[dict[str, Any]]) -> Optional[float]:
    return 1.0 - float(entry["acc_norm"]) if entry else None  # lower is better, as for losses


def judge_hellaswag(baseline: Group, groups: list[Group], seed_blind_reason: Optional[str] = None) -> HellaSwagColumn:
    """The column's identity and verdicts, or only a note when the runs cannot be compared on HellaSwag."""
    found, column = judge_column(
        baseline,
        groups,
        seed_blind_reason,
        saved_entry=saved_entry,
        problem=_problem,
        value=_error_rate,
        quantity="HellaSwag accuracy",
        not_compared=(
            "HellaSwag: not compared, as every run needs a result on the same items, in the same evaluation "
            "precision, of the checkpoint its test loss is of"
        ),
    )
    if found is None:
        return column
    wanted, judgement = found.entry, column.judgement
    identity = {key: wanted.get(key) for key in ("items", "limit", "file_sha256", "split", "precision")}
    identity["file"] = Path(str(wanted.get("file"))).name
    notes = [
        f"HellaSwag: acc_norm (the ending with the lowest mean loss per token, zero-shot) on {_items_words(wanted)}, "
        "the same items for every run; the difference from the baseline (positive is better) is judged by the same "
        "tests on per-seed accuracies, Holm-adjusted among the HellaSwag verdicts only."
    ]
    notes += [f"HellaSwag: {note}" for note in judgement.notes]
    return HellaSwagColumn(identity, judgement, notes)


# The comparison row's HellaSwag keys; the first ones are also its CSV columns.
CSV_KEYS = ("hellaswag", "hellaswag_sd", "hellaswag_difference", "hellaswag_p", "hellaswag_p_holm", "hellaswag_verdict")
ROW_KEYS = (*CSV_KEYS, "hellaswag_matched_difference", "hellaswag_noise", "run_hellaswag")


def _accuracies(group: Group) -> list[float]:
    return [float(entry["acc_norm"]) for run in group.runs if run.stopped is None and (entry := saved_entry(run))]


def row_keys(group: Group, baseline: Group, column: HellaSwagColumn) -> dict[str, Any]:
    """A comparison row's HellaSwag keys (None throughout when there is no column)."""
    if column.judgement is None:
        return dict.fromkeys(ROW_KEYS)
    ours, theirs = _accuracies(group), _accuracies(baseline)
    is_baseline = group is baseline
    verdict = None if is_baseline else column.judgement.verdicts.get(group.label)
    deciding = verdict.deciding if verdict else None
    # The difference of the means the rows show; a paired test on a subset of the baseline's seeds decides on the
    # matched seeds' difference, shown beside it when it differs.
    difference = statistics.fmean(ours) - statistics.fmean(theirs) if ours and theirs and not is_baseline else None
    matched = (
        deciding.improvement
        if deciding is not None
        and deciding.test == "paired"
        and difference is not None
        and abs(deciding.improvement - difference) > 1e-12
        else None
    )
    return {
        "hellaswag": statistics.fmean(ours) if ours else None,
        "hellaswag_sd": statistics.stdev(ours) if len(ours) >= 2 else None,
        "hellaswag_difference": difference,
        "hellaswag_matched_difference": matched,
        "hellaswag_p": deciding.p if deciding else None,
        "hellaswag_p_holm": verdict.p_holm if verdict else None,
        "hellaswag_verdict": "baseline" if is_baseline else verdict.words if verdict else None,
        "hellaswag_noise": "baseline" if is_baseline else verdict.label if verdict else None,
        "run_hellaswag": [entry["acc_norm"] if (entry := saved_entry(run)) else None for run in group.runs],
    }


def cell(row: dict[str, Any]) -> str:
    """The table's text: the mean acc_norm, then for an intervention its difference and verdict."""
    if row.get("hellaswag") is None:
        return "-"
    text = f"{row['hellaswag']:.4f}"
    if row.get("hellaswag_verdict") in (None, "baseline"):
        return text
    difference = f"{row['hellaswag_difference']:+.4f}, " if row.get("hellaswag_difference") is not None else ""
    if row.get("hellaswag_matched_difference") is not None:
        difference += f"matched seeds {row['hellaswag_matched_difference']:+.4f}, "
    return f"{text} ({difference}{row['hellaswag_verdict']})"
