"""Comparing runs: one table row per group of runs that differ only by seed, each judged against the baseline.

Every test loss in a table must come from exactly the same tokens (same dataset slice, same tokenizer,
same evaluation precision); otherwise `compare` refuses and says which runs differ and how. A run's
test loss is read from `RUN_DIR/evaluation.json`, computed and saved there when missing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from gptlab.config import BOOKKEEPING_TRAIN_KEYS, EvaluationSettings
from gptlab.errors import UserError
from gptlab.experiments import stats
from gptlab.files import strict_json
from gptlab.rundir import (EVALUATION, MODEL_FILE, RESOLVED_CONFIG, SUMMARY, read_config_dict, read_evaluation, read_summary,
                           write_evaluation)

FORMATS = ("terminal", "markdown", "csv", "json")
# Runs differing only in these form one group: the seed, and the keys config.py tags as bookkeeping.
IGNORED_BY_GROUPING = BOOKKEEPING_TRAIN_KEYS | {"random_seed"}
SLICE_KEYS = ("split", "start_token", "batches", "batch_size", "context_length")


# --- evaluations ---------------------------------------------------------------------------------------

def evaluate_and_save(run_dir: Path, settings: EvaluationSettings, datasets_dir: Optional[Path] = None) -> dict[str, Any]:
    """Evaluate a run as `settings` (the experiment file's `evaluation` block) say and write evaluation.json."""
    from gptlab.evaluate.loss import evaluate_run

    result = evaluate_run(run_dir, settings.checkpoint, settings.split, settings.start_token,
                          settings.batches, settings.batch_size, settings.precision, datasets_dir)
    return write_evaluation(run_dir, result, settings.checkpoint)


def evaluation_is_current(run_dir: Path, settings: EvaluationSettings) -> bool:
    """evaluation.json exists, identifies its tokens, and was computed as `settings` ask on the checkpoint they name."""
    from gptlab.train.checkpoint import find_checkpoint

    saved = read_evaluation(run_dir)
    if saved is None or "tokens_sha256" not in saved:
        return False
    wanted = settings.model_dump(include={"split", "start_token", "batches", "batch_size", "precision"})
    if any(value is not None and saved.get(key) != value for key, value in wanted.items()):
        return False
    try:
        return saved.get("checkpoint") == find_checkpoint(run_dir, settings.checkpoint).name
    except UserError:
        return False


# --- runs and groups -----------------------------------------------------------------------------------

@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    evaluation: dict[str, Any]
    config: dict[str, dict[str, Any]]

    @property
    def test_loss(self) -> float:
        return float(self.evaluation["loss"])

    @property
    def seed(self) -> Any:
        return self.config["train"].get("random_seed")


def _check_is_run(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    if not any((run_dir / name).is_file() for name in (MODEL_FILE, RESOLVED_CONFIG, SUMMARY)):
        raise UserError(f"{run_dir}: not a run directory (no {MODEL_FILE}, {RESOLVED_CONFIG} or {SUMMARY}); "
                        f"give directories trained with `gptlab train`")


def _read_summary(run_dir: Path) -> dict[str, Any]:
    summary = read_summary(run_dir)
    if summary is None:
        raise UserError(f"{run_dir}: has not finished training (no {SUMMARY}); finish it with `gptlab train {run_dir} --resume latest` "
                        f"or `gptlab experiment run FILE`")
    return summary


def load_results(run_dirs: list[Path], settings: Optional[EvaluationSettings] = None, datasets_dir: Optional[Path] = None,
                 echo: Callable[[str], Any] = print) -> list[RunResult]:
    """Read each run's summary and evaluation, evaluating (with `settings`) and saving where none is saved."""
    results, seen = [], set()
    for run_dir in (Path(d) for d in run_dirs):
        if run_dir.resolve() in seen:
            continue
        seen.add(run_dir.resolve())
        _check_is_run(run_dir)
        summary = _read_summary(run_dir)
        evaluation = read_evaluation(run_dir) or {}
        if "tokens_sha256" not in evaluation:
            echo(f"Evaluating {run_dir} (no {EVALUATION} with a token hash yet) ...")
            evaluation = evaluate_and_save(run_dir, settings or default_settings(run_dir), datasets_dir)
        config = read_config_dict(run_dir)
        results.append(RunResult(run_dir, summary, evaluation, config))
    return results


def default_settings(reference_run: Path) -> EvaluationSettings:
    """How to evaluate runs that have no evaluation: as the reference run was evaluated, else its whole test split
    in batches of its microbatch size (so runs with other microbatch sizes still read the same tokens)."""
    saved = read_evaluation(reference_run)
    if saved is not None:
        chosen = {key: saved[key] for key in ("split", "start_token", "batches", "batch_size", "precision") if key in saved}
        return EvaluationSettings(**chosen, checkpoint=saved.get("checkpoint_choice", EvaluationSettings().checkpoint))
    config = read_config_dict(reference_run)
    return EvaluationSettings(batch_size=config["train"]["microbatch_size"])


def _group_identity(result: RunResult) -> dict[str, dict[str, Any]]:
    """The configuration minus the seed and bookkeeping, with a local dataset path made absolute."""
    model = dict(result.config["model"])
    train = {key: value for key, value in result.config["train"].items() if key not in IGNORED_BY_GROUPING}
    dataset = train.get("dataset")
    if isinstance(dataset, str) and (result.run_dir / dataset).is_dir():
        train["dataset"] = str((result.run_dir / dataset).resolve())
    return {"model": model, "train": train}


@dataclass
class Group:
    label: str
    runs: list[RunResult]
    identity: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return [run.test_loss for run in self.runs]


_SEED_DIR = re.compile(r"^seed[-_]?\d+$")
_SEED_SUFFIX = re.compile(r"[-_.]?seed[-_]?\d+$")


def _default_label(runs: list[RunResult]) -> str:
    """`runs/<variant>/seed-N` -> the variant; `lr-seed3` -> `lr`; otherwise the run names."""
    names = []
    for run in runs:
        name = run.run_dir.resolve().name
        name = run.run_dir.resolve().parent.name if _SEED_DIR.match(name) else _SEED_SUFFIX.sub("", name) or name
        if name not in names:
            names.append(name)
    return names[0] if len(names) == 1 else ", ".join(names) if len(names) <= 3 else f"{names[0]} +{len(names) - 1}"


def group_runs(results: list[RunResult], labels: Optional[dict[Path, str]] = None) -> list[Group]:
    """Groups in order of first appearance: by the given labels, else by configuration without the seed."""
    groups: dict[str, Group] = {}
    for result in results:
        identity = _group_identity(result)
        key = labels[result.run_dir.resolve()] if labels else json.dumps(identity, sort_keys=True, default=str)
        groups.setdefault(key, Group("", [], identity)).runs.append(result)
    used: set[str] = set()
    for key, group in groups.items():
        label = key if labels else _default_label(group.runs)
        unique, number = label, 2
        while unique in used:
            unique, number = f"{label} ({number})", number + 1
        group.label = unique
        used.add(unique)
    return list(groups.values())


def describe_difference(group: Group, baseline: Group) -> str:
    parts = []
    for file_name in ("model", "train"):
        ours, theirs = group.identity.get(file_name, {}), baseline.identity.get(file_name, {})
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key) != theirs.get(key):
                parts.append(f"{key}={json.dumps(ours.get(key))}")
    return ", ".join(parts) or "-"


# --- the same test tokens ------------------------------------------------------------------------------

def _slice_words(evaluation: dict[str, Any]) -> str:
    dataset = os.path.normpath(str(evaluation.get("dataset")))
    return (f"{evaluation.get('tokens', 0):,} tokens of {dataset} {evaluation.get('split')} "
            f"from token {evaluation.get('start_token', 0):,} in batches of {evaluation.get('batch_size')} x {evaluation.get('context_length')}")


def _mismatch(run: RunResult, reference: RunResult) -> Optional[str]:
    ours, theirs = run.evaluation, reference.evaluation
    if ours.get("tokenizer_fingerprint") != theirs.get("tokenizer_fingerprint"):
        return f"{run.run_dir}: its test tokens come from another tokenizer than {reference.run_dir}'s"
    if ours.get("tokens_sha256") != theirs.get("tokens_sha256"):
        how = [key for key in SLICE_KEYS if ours.get(key) != theirs.get(key)]
        source_ours, source_theirs = ours.get("dataset_fingerprint") or {}, theirs.get("dataset_fingerprint") or {}
        how += [f"dataset {key}" for key in sorted(set(source_ours) | set(source_theirs)) if source_ours.get(key) != source_theirs.get(key)]
        return (f"{run.run_dir}: evaluated on other test tokens than {reference.run_dir} (differs in: {', '.join(how) or 'token content'}): "
                f"{_slice_words(ours)}, versus {_slice_words(theirs)}")
    if ours.get("precision") != theirs.get("precision"):
        return f"{run.run_dir}: evaluated in {ours.get('precision')}, {reference.run_dir} in {theirs.get('precision')}"
    return None


def check_same_test_tokens(results: list[RunResult], reference: RunResult) -> None:
    problems = [problem for run in results if run is not reference and (problem := _mismatch(run, reference))]
    if problems:
        raise UserError(
            "compare: these runs cannot share one table: their test losses were not computed on the same tokens",
            *problems,
            "Evaluate every run on one slice of one prepared dataset, e.g. `gptlab eval RUN --save --checkpoint latest "
            f"--split {reference.evaluation.get('split')} --batches {reference.evaluation.get('batches')} --batch-size {reference.evaluation.get('batch_size')}` "
            "(or the experiment file's 'evaluation' keys)",
        )


# --- the table -----------------------------------------------------------------------------------------

@dataclass
class Comparison:
    baseline: Group
    groups: list[Group]
    rows: list[dict[str, Any]]
    notes: list[str]
    evaluation: dict[str, Any]


def _mean(values: list[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _pooled_seed_sd(groups: list[Group]) -> Optional[float]:
    variances = [stats.describe(g.losses).sd ** 2 for g in groups if len(g.runs) >= 2]
    return math.sqrt(sum(variances) / len(variances)) if variances else None


def _row(group: Group, baseline: Group, noise_sd: Optional[float]) -> dict[str, Any]:
    described = stats.describe(group.losses)
    is_baseline = group is baseline
    verdict = None if is_baseline else stats.judge(baseline.losses, group.losses, noise_sd)
    summaries = [run.summary for run in group.runs]
    return {
        "run": group.label, "seeds": described.n, "test_loss": described.mean, "sd": described.sd,
        "min": described.minimum, "max": described.maximum, "ci95_low": described.ci_low, "ci95_high": described.ci_high,
        "improvement": None if is_baseline else stats.describe(baseline.losses).mean - described.mean,
        "noise": "baseline" if is_baseline else verdict.label, "test": "" if is_baseline else verdict.test,
        "p_value": verdict.p if verdict else None, "baseline_sds": verdict.sd_distance if verdict else None,
        "seeds_needed": verdict.seeds_needed if verdict else None,
        "training_seconds": _mean([s.get("training_seconds") for s in summaries]),
        "tokens_per_second": _mean([s.get("tokens_per_second") for s in summaries]),
        "tokens_seen": _mean([s.get("tokens_seen") for s in summaries]),
        "cost": _mean([s.get("cost") for s in summaries]),
        "skipped_steps": sum(int(s.get("skipped_steps") or 0) for s in summaries),
        "changes": "-" if is_baseline else describe_difference(group, baseline),
        "run_dirs": [str(run.run_dir) for run in group.runs], "run_seeds": [run.seed for run in group.runs],
        "run_losses": group.losses,
    }


def _notes(baseline: Group, groups: list[Group], evaluation: dict[str, Any]) -> list[str]:
    notes = [
        f"Test loss: mean cross-entropy on {_slice_words(evaluation)} (checkpoint {evaluation.get('checkpoint_choice', 'as saved')}, "
        f"{evaluation.get('precision')}); the same tokens for every run (sha256 {str(evaluation.get('tokens_sha256'))[:12]}).",
        "Improvement = baseline mean - group mean (positive is better). Groups are runs that differ only by seed; "
        "time, tokens/s, tokens and cost are per-run means; skipped steps are summed over a group's runs.",
        f"Noise: Welch's t-test (two-sided, {stats.ALPHA:.0%}) when both groups have 2+ seeds; a single run is beyond noise when it lies "
        "outside the 95% prediction interval of one more baseline seed (shown as its distance in baseline SDs).",
    ]
    if len(baseline.runs) < 2:
        notes.append(f"The baseline has 1 seed, so noise cannot be judged: train at least {stats.MIN_SEEDS} seeds of it.")
    for group in groups:
        seeds = [run.seed for run in group.runs]
        if len(set(seeds)) < len(seeds):
            notes.append(f"{group.label}: several runs share a seed ({seeds}); repeats of one seed understate the noise.")
    return notes


def build_comparison(results: list[RunResult], baseline_dir: Optional[Path] = None, labels: Optional[dict[Path, str]] = None) -> Comparison:
    """Group the runs, check they share test tokens, and judge every group against the baseline group.

    The baseline is the group holding `baseline_dir`; else the group labelled `baseline`; else the first run's group."""
    if not results:
        raise UserError("compare: no finished runs to compare")
    groups = group_runs(results, labels)
    baseline = _pick_baseline(groups, baseline_dir)
    check_same_test_tokens(results, baseline.runs[0])
    noise_sd = _pooled_seed_sd(groups)
    rows = sorted((_row(group, baseline, noise_sd) for group in groups), key=lambda row: row["test_loss"])
    evaluation = baseline.runs[0].evaluation
    return Comparison(baseline, groups, rows, _notes(baseline, groups, evaluation), evaluation)


def _pick_baseline(groups: list[Group], baseline_dir: Optional[Path]) -> Group:
    if baseline_dir is not None:
        wanted = Path(baseline_dir).resolve()
        for group in groups:
            if any(run.run_dir.resolve() == wanted for run in group.runs):
                return group
        raise UserError(f"--baseline {baseline_dir}: not among the runs compared; name one of them")
    return next((group for group in groups if group.label == "baseline"), groups[0])


# --- rendering -----------------------------------------------------------------------------------------

def _number(value: Optional[float], digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_duration(seconds: Optional[float]) -> str:
    """h:mm:ss, so hours read directly."""
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def format_cost(dollars: Optional[float]) -> str:
    """Cents for real runs; three significant digits for the fractions of a cent of a small experiment."""
    if dollars is None:
        return "-"
    return f"${dollars:,.2f}" if dollars >= 1 else f"${dollars:.3g}"


def short_noise(row: dict[str, Any]) -> str:
    if row["noise"] == "baseline":
        return "baseline"
    if row["noise"] == "cannot judge":
        return row["test"]
    if row["p_value"] is not None:
        return f"{row['noise']} (Welch p={stats.format_p(row['p_value'])})"
    return f"{row['noise']} ({row['baseline_sds']:+.1f} SD)"


TABLE_COLUMNS = ("run", "seeds", "test loss", "sd", "min-max", "95% CI", "improvement", "noise", "time", "tokens/s",
                 "tokens", "cost", "skipped", "changes")


def table_cells(row: dict[str, Any]) -> list[str]:
    """One row as the strings every text format shows, in TABLE_COLUMNS order."""
    spread = f"{row['min']:.4f}-{row['max']:.4f}" if row["seeds"] > 1 else "-"
    interval = f"{row['ci95_low']:.4f}-{row['ci95_high']:.4f}" if row["ci95_low"] is not None else "-"
    return [row["run"], str(row["seeds"]), _number(row["test_loss"]), _number(row["sd"]), spread, interval,
            _number(row["improvement"], signed=True), short_noise(row), format_duration(row["training_seconds"]),
            f"{row['tokens_per_second']:,.0f}" if row["tokens_per_second"] is not None else "-",
            f"{row['tokens_seen']:,.0f}" if row["tokens_seen"] is not None else "-",
            format_cost(row["cost"]), str(row["skipped_steps"]), row["changes"]]


def _terminal(comparison: Comparison) -> str:
    cells = [list(TABLE_COLUMNS)] + [table_cells(row) for row in comparison.rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines + [""] + comparison.notes) + "\n"


def _markdown(comparison: Comparison) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [line(list(TABLE_COLUMNS)), "|" + "---|" * len(TABLE_COLUMNS)] + [line(table_cells(row)) for row in comparison.rows]
    return "\n".join(lines + [""] + [f"- {note}" for note in comparison.notes]) + "\n"


CSV_FIELDS = ("run", "seeds", "test_loss", "sd", "min", "max", "ci95_low", "ci95_high", "improvement", "noise", "test", "p_value",
              "baseline_sds", "training_seconds", "tokens_per_second", "tokens_seen", "cost", "skipped_steps", "changes")


def _csv(comparison: Comparison) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: ("" if value is None else value) for key, value in row.items()} for row in comparison.rows)
    return buffer.getvalue()


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    evaluation = {key: comparison.evaluation.get(key) for key in (*SLICE_KEYS, "tokens", "precision", "dataset", "tokenizer", "tokens_sha256")}
    return {"baseline": comparison.baseline.label, "rows": comparison.rows, "notes": comparison.notes, "evaluation": evaluation}


def render(comparison: Comparison, output_format: str = "terminal") -> str:
    if output_format == "json":
        return strict_json(comparison_json(comparison), indent=2) + "\n"
    renderers = {"terminal": _terminal, "markdown": _markdown, "csv": _csv}
    if output_format not in renderers:
        raise UserError(f"--format {output_format}: not a format; choose one of {', '.join(FORMATS)}")
    return renderers[output_format](comparison)


def compare_runs(run_dirs: list[Path], baseline_dir: Optional[Path] = None, datasets_dir: Optional[Path] = None,
                 echo: Callable[[str], Any] = print) -> Comparison:
    """`gptlab compare`: load (evaluating where needed, as the baseline was evaluated) and build the comparison."""
    if not run_dirs:
        raise UserError("compare: name at least one run directory")
    reference = Path(baseline_dir) if baseline_dir is not None else Path(run_dirs[0])
    runs = list(run_dirs) + ([reference] if baseline_dir is not None else [])
    for run_dir in runs:  # before the reference's settings are read from it
        _check_is_run(Path(run_dir))
        _read_summary(Path(run_dir))
    results = load_results(runs, default_settings(reference), datasets_dir, echo)
    return build_comparison(results, baseline_dir)
