"""The ift column of a comparison: each group's mean IFT test loss (`gptlab eval RUN --task ift --save`), with a
noise verdict of its own, and the judge's mean score where `gptlab judge` has scored every run.

Runs are compared on it only when every run with a usable test loss has an ift result on the same instruction
file (by sha256) with the same recipe, fine-tuned from the checkpoint its test loss is of; otherwise the column
shows "-" and a note says which run lacks what. The verdicts are verdicts.py's rules applied to the per-seed
IFT test losses (lower is better, as for the test loss), Holm-adjusted as a family of their own; the judge's
mean is shown, not judged (its noise verdict between models is `gptlab judge`'s own, over paired items).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Optional

from gptlab.experiments.groups import Group, RunResult
from gptlab.experiments.task_column import TaskColumn, judge_column

ENTRY = "ift"  # evaluation.json's key, as gptlab.evaluate.ift's task saves it
SAME = ("file_sha256", "items", "settings", "precision")  # what two results must share to be compared


IftColumn = TaskColumn  # the name compare.py and the tests use


def saved_entry(run: RunResult) -> Optional[dict[str, Any]]:
    entry = run.evaluation.get(ENTRY)
    usable = isinstance(entry, dict) and isinstance(entry.get("test_loss"), (int, float))
    return entry if usable else None


def _judge_mean(entry: Optional[dict[str, Any]]) -> Optional[float]:
    judged = entry.get("judge") if entry else None
    mean = judged.get("mean") if isinstance(judged, dict) else None
    return float(mean) if isinstance(mean, (int, float)) else None


def _words(entry: dict[str, Any]) -> str:
    items = entry.get("items") or {}
    return f"{items.get('test', '?')} test items of {Path(str(entry.get('file'))).name} (sha256 {str(entry.get('file_sha256'))[:12]})"


def _problem(run: RunResult, entry: Optional[dict[str, Any]], reference: RunResult, wanted: dict[str, Any]) -> str:
    if entry is None:
        return f"{run.run_dir} has none (`gptlab eval {run.run_dir} --task ift --save`)"
    differing = [key for key in SAME if entry.get(key) != wanted.get(key)]
    if differing:
        return f"{run.run_dir} differs from {reference.run_dir} in {', '.join(differing)} ({_words(entry)})"
    if entry.get("base_checkpoint") != run.evaluation.get("checkpoint"):
        return (
            f"{run.run_dir} was fine-tuned from checkpoint {entry.get('base_checkpoint')}, its test loss is of "
            f"{run.evaluation.get('checkpoint')}"
        )
    return ""


def judge_ift(baseline: Group, groups: list[Group], seed_blind_reason: Optional[str] = None) -> IftColumn:
    """The column's identity and verdicts, or only a note when the runs cannot be compared on it."""
    found, column = judge_column(
        baseline,
        groups,
        seed_blind_reason,
        saved_entry=saved_entry,
        problem=_problem,
        value=_loss,
        quantity="IFT test loss",
        not_compared=(
            "ift: not compared, as every run needs a result on the same instruction items with the same recipe, "
            "fine-tuned from the checkpoint its test loss is of"
        ),
    )
    if found is None:
        return column
    wanted, judgement = found.entry, column.judgement
    entries = [saved_entry(run) for group in groups for run in group.runs if run.stopped is None]
    identity = {key: wanted.get(key) for key in SAME}
    identity["file"] = Path(str(wanted.get("file"))).name
    notes = [
        f"ift: the IFT test loss (masked cross-entropy on {_words(wanted)} after instruction fine-tuning, the best "
        "epoch by validation loss) with the test loss's tests on per-seed values, Holm-adjusted among the ift "
        "verdicts only; lower is better."
    ]
    if all(_judge_mean(entry) is not None for entry in entries):
        notes.append("ift: 'judge' is the LLM judge's mean score (0-100) of each group's responses (`gptlab judge`).")
    notes += [f"ift: {note}" for note in judgement.notes]
    return IftColumn(identity, judgement, notes)


# The comparison row's ift keys; the first ones are also its CSV columns.
CSV_KEYS = ("ift", "ift_sd", "ift_improvement", "ift_p", "ift_p_holm", "ift_verdict", "ift_judge")
ROW_KEYS = (*CSV_KEYS, "ift_noise", "run_ift", "run_ift_judge")


def _values(group: Group, read) -> list[float]:
    return [value for run in group.runs if run.stopped is None and (value := read(saved_entry(run))) is not None]


def _loss(entry: Optional[dict[str, Any]]) -> Optional[float]:
    return float(entry["test_loss"]) if entry else None


def row_keys(group: Group, baseline: Group, column: IftColumn) -> dict[str, Any]:
    """A comparison row's ift keys (None throughout when there is no column)."""
    if column.judgement is None:
        return dict.fromkeys(ROW_KEYS)
    ours, theirs = _values(group, _loss), _values(baseline, _loss)
    judged = _values(group, _judge_mean)
    is_baseline = group is baseline
    verdict = None if is_baseline else column.judgement.verdicts.get(group.label)
    deciding = verdict.deciding if verdict else None
    if deciding is not None:
        improvement = deciding.improvement
    else:
        improvement = statistics.fmean(theirs) - statistics.fmean(ours) if ours and theirs and not is_baseline else None
    return {
        "ift": statistics.fmean(ours) if ours else None,
        "ift_sd": statistics.stdev(ours) if len(ours) >= 2 else None,
        "ift_improvement": improvement,
        "ift_p": deciding.p if deciding else None,
        "ift_p_holm": verdict.p_holm if verdict else None,
        "ift_verdict": "baseline" if is_baseline else verdict.words if verdict else None,
        "ift_judge": statistics.fmean(judged) if judged and len(judged) == len(ours) else None,
        "ift_noise": "baseline" if is_baseline else verdict.label if verdict else None,
        "run_ift": [_loss(saved_entry(run)) for run in group.runs],
        "run_ift_judge": [_judge_mean(saved_entry(run)) for run in group.runs],
    }


def cell(row: dict[str, Any]) -> str:
    """The table's text: the mean IFT test loss, for an intervention its improvement and verdict, then the judge's mean."""
    if row.get("ift") is None:
        return "-"
    text = f"{row['ift']:.4f}"
    if row.get("ift_verdict") not in (None, "baseline"):
        improvement = f"{row['ift_improvement']:+.4f}, " if row.get("ift_improvement") is not None else ""
        text += f" ({improvement}{row['ift_verdict']})"
    if row.get("ift_judge") is not None:
        text += f"; judge {row['ift_judge']:.1f}"
    return text


def any_saved(groups: list[Group]) -> bool:
    return any(saved_entry(run) for group in groups for run in group.runs)
