"""Comparing runs: one table row per group of runs that differ only by seed, each judged against the baseline.

Every test loss in a table must come from exactly the same tokens (same dataset slice, same tokenizer,
same evaluation precision) of a model trained as far (same checkpoint step, same tokens trained);
otherwise `compare` refuses and says which runs differ and how (`--allow-mixed-checkpoints` lets the
training length differ, with a note). A run's test loss is read from `RUN_DIR/evaluation.json`, computed
and saved there when missing. A run that diverged or stopped on non-finite steps stays in the table with
that as its verdict (verdicts.py decides; stats.py computes).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import statistics
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from gptlab.config import BOOKKEEPING_TRAIN_KEYS, EvaluationSettings
from gptlab.errors import UserError
from gptlab.experiments import hellaswag_column, stats, verdicts
from gptlab.experiments.groups import Group, RunResult
from gptlab.files import strict_json
from gptlab.rundir import (
    CHECKPOINTS,
    EVALUATION,
    MODEL_FILE,
    RESOLVED_CONFIG,
    SUMMARY,
    read_config_dict,
    read_evaluation,
    read_summary,
    write_evaluation,
)
from gptlab.words import format_perplexity, perplexity

FORMATS = ("terminal", "markdown", "csv", "json")
# Runs differing only in these form one group: the seed, and the keys config.py tags as bookkeeping.
IGNORED_BY_GROUPING = BOOKKEEPING_TRAIN_KEYS | {"random_seed"}
SLICE_KEYS = ("split", "start_token", "batches", "batch_size", "context_length")


# --- evaluations ---------------------------------------------------------------------------------------


def evaluate_and_save(
    run_dir: Path, settings: EvaluationSettings, datasets_dir: Optional[Path] = None
) -> dict[str, Any]:
    """Evaluate a run as `settings` (the experiment file's `evaluation` block) say and write evaluation.json."""
    from gptlab.evaluate.loss import evaluate_run

    result = evaluate_run(
        run_dir,
        settings.checkpoint,
        settings.split,
        settings.start_token,
        settings.batches,
        settings.batch_size,
        settings.precision,
        datasets_dir,
    )
    return write_evaluation(run_dir, result, settings.checkpoint)


def evaluation_is_current(run_dir: Path, settings: EvaluationSettings) -> bool:
    """evaluation.json exists, identifies its tokens, and was computed as `settings` ask on the checkpoint they name."""
    from gptlab.runtime.checkpoint import find_checkpoint

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


def _check_is_run(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    if not any((run_dir / name).is_file() for name in (MODEL_FILE, RESOLVED_CONFIG, SUMMARY)):
        raise UserError(
            f"{run_dir}: not a run directory (no {MODEL_FILE}, {RESOLVED_CONFIG} or {SUMMARY}); "
            f"give directories trained with `gptlab train`"
        )


def first_non_finite_step(run_dir: Path) -> Optional[int]:
    """The first step metrics.jsonl records as skipped or with a non-finite (null) loss."""
    from gptlab.train.charts import read_step_records

    return next((r["step"] for r in read_step_records(run_dir) if r.get("skipped") or r.get("loss") is None), None)


def stopped_on_non_finite(run_dir: Path) -> bool:
    """Training stopped itself (max_consecutive_skipped_steps): its last recorded step was skipped."""
    from gptlab.train.charts import read_step_records

    records = read_step_records(run_dir)
    return bool(records) and bool(records[-1].get("skipped"))


def _read_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    """summary.json; None for a run that stopped on non-finite steps (it has a verdict of its own)."""
    summary = read_summary(run_dir)
    if summary is not None:
        return summary
    if stopped_on_non_finite(run_dir):
        return None
    raise UserError(
        f"{run_dir}: has not finished training (no {SUMMARY}); finish it with `gptlab train {run_dir} --resume latest` "
        f"or `gptlab experiment run FILE`"
    )


def _diverged_words(run_dir: Path, loss: float) -> Optional[str]:
    """None for a finite test loss, else when the run diverged."""
    if math.isfinite(loss):
        return None
    step = first_non_finite_step(run_dir)
    return f"diverged at step {step}" if step is not None else f"diverged (test loss {loss})"


def load_results(
    run_dirs: list[Path],
    settings: Optional[EvaluationSettings] = None,
    datasets_dir: Optional[Path] = None,
    echo: Callable[[str], Any] = print,
) -> list[RunResult]:
    """Read each run's summary and evaluation, evaluating (with `settings`) and saving where none is saved."""
    results, seen = [], set()
    for run_dir in (Path(d) for d in run_dirs):
        if run_dir.resolve() in seen:
            continue
        seen.add(run_dir.resolve())
        _check_is_run(run_dir)
        summary = _read_summary(run_dir)
        if summary is None:  # stopped on non-finite steps: nothing worth evaluating
            step = first_non_finite_step(run_dir)
            results.append(
                RunResult(
                    run_dir,
                    {},
                    {},
                    read_config_dict(run_dir),
                    stopped="stopped: non-finite" + (f" from step {step}" if step is not None else ""),
                )
            )
            continue
        evaluation = read_evaluation(run_dir) or {}
        if "tokens_sha256" not in evaluation:
            echo(f"Evaluating {run_dir} (no {EVALUATION} with a token hash yet) ...")
            evaluation = evaluate_and_save(run_dir, settings or default_settings(run_dir), datasets_dir)
        config = read_config_dict(run_dir)
        result = RunResult(run_dir, summary, evaluation, config)
        result.stopped = _diverged_words(run_dir, result.test_loss)
        results.append(result)
    return results


def default_settings(reference_run: Path) -> EvaluationSettings:
    """How to evaluate runs that have no evaluation: as the reference run was evaluated, else its whole test split
    in batches of its microbatch size (so runs with other microbatch sizes still read the same tokens)."""
    saved = read_evaluation(reference_run)
    if saved is not None:
        chosen = {
            key: saved[key] for key in ("split", "start_token", "batches", "batch_size", "precision") if key in saved
        }
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
    return (
        f"{evaluation.get('tokens', 0):,} tokens of {dataset} {evaluation.get('split')} "
        f"from token {evaluation.get('start_token', 0):,} in batches of {evaluation.get('batch_size')} x {evaluation.get('context_length')}"
    )


def checkpoint_identity(run: RunResult) -> dict[str, Optional[int]]:
    """The checkpoint step an evaluation read and the tokens trained by then, from that checkpoint's meta.json
    (or, where it was pruned since, from its folder name and the run's summary)."""
    from gptlab.runtime.checkpoint import Checkpoint

    name = str(run.evaluation.get("checkpoint") or "")
    folder = run.run_dir / CHECKPOINTS / name
    if name and (folder / "meta.json").is_file():
        meta = Checkpoint(folder).meta
        return {"checkpoint step": meta.get("global_step"), "tokens trained": meta.get("tokens_seen")}
    found = re.search(r"iteration-(\d+)$", name)
    step = int(found.group(1)) if found else None
    last = step is not None and run.summary.get("steps") == step + 1
    return {"checkpoint step": step, "tokens trained": run.summary.get("tokens_seen") if last else None}


def _checkpoint_mismatch(run: RunResult, reference: RunResult) -> Optional[str]:
    ours, theirs = checkpoint_identity(run), checkpoint_identity(reference)
    differing = [key for key in ours if ours[key] != theirs[key]]
    if not differing:
        return None

    def words(identity: dict[str, Optional[int]]) -> str:
        return ", ".join(f"{key} {'?' if identity[key] is None else f'{identity[key]:,}'}" for key in differing)

    return f"{run.run_dir}: evaluated at {words(ours)}; {reference.run_dir} at {words(theirs)} (differs in: {', '.join(differing)})"


def _mismatch(run: RunResult, reference: RunResult) -> Optional[str]:
    ours, theirs = run.evaluation, reference.evaluation
    if ours.get("tokenizer_fingerprint") != theirs.get("tokenizer_fingerprint"):
        return f"{run.run_dir}: its test tokens come from another tokenizer than {reference.run_dir}'s"
    if ours.get("tokens_sha256") != theirs.get("tokens_sha256"):
        how = [key for key in SLICE_KEYS if ours.get(key) != theirs.get(key)]
        source_ours, source_theirs = ours.get("dataset_fingerprint") or {}, theirs.get("dataset_fingerprint") or {}
        how += [
            f"dataset {key}"
            for key in sorted(set(source_ours) | set(source_theirs))
            if source_ours.get(key) != source_theirs.get(key)
        ]
        return (
            f"{run.run_dir}: evaluated on other test tokens than {reference.run_dir} (differs in: {', '.join(how) or 'token content'}): "
            f"{_slice_words(ours)}, versus {_slice_words(theirs)}"
        )
    if ours.get("precision") != theirs.get("precision"):
        return f"{run.run_dir}: evaluated in {ours.get('precision')}, {reference.run_dir} in {theirs.get('precision')}"
    return None


def check_same_evaluation(
    results: list[RunResult], reference: RunResult, allow_mixed_checkpoints: bool = False
) -> list[str]:
    """Refuse a table whose test losses differ in tokens, tokenizer, precision or (unless allowed) how far the model
    was trained; returns the notes that allowed differences need. Runs stopped before an evaluation are not checked."""
    evaluated = [run for run in results if run is not reference and run.evaluation]
    check_same_test_tokens(evaluated, reference)
    mixed = [problem for run in evaluated if (problem := _checkpoint_mismatch(run, reference))]
    if mixed and not allow_mixed_checkpoints:
        raise UserError(
            "compare: these runs cannot share one table: their test losses come from models trained for different lengths",
            *mixed,
            "Evaluate every run at the same checkpoint (the experiment file's evaluation.checkpoint, or `gptlab eval RUN --save "
            "--checkpoint NAME`), or pass --allow-mixed-checkpoints to compare them anyway",
        )
    return [
        f"Mixed checkpoints allowed (--allow-mixed-checkpoints): {problem}. Such a difference mixes the intervention with training length."
        for problem in mixed
    ]


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
    hellaswag: Optional[dict[str, Any]] = None  # the HellaSwag items every run was scored on, when compared


def mean_of_present(values: Iterable[Optional[float]]) -> Optional[float]:
    """The mean of the values that are not None; None when none is."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _pooled_seed_sd(groups: list[Group]) -> Optional[float]:
    variances = [stats.describe(g.finite_losses).sd ** 2 for g in groups if len(g.finite_losses) >= 2]
    return math.sqrt(sum(variances) / len(variances)) if variances else None


def seed_blind_reason(baseline: Group) -> str:
    """Why a baseline's seeds may all give one loss, from its configuration."""
    train, model = baseline.identity.get("train", {}), baseline.identity.get("model", {})
    if train.get("init_from") and model.get("drop_rate") == 0:
        return "the seed changes neither initialisation (init_from is set) nor dropout (drop_rate is 0) here"
    if train.get("init_from"):
        return "initialisation comes from init_from; only dropout depends on the seed"
    if model.get("drop_rate") == 0:
        return "drop_rate is 0, so only the initialisation depends on the seed"
    return "check that random_seed reaches initialisation and dropout"


def _row(
    group: Group,
    baseline: Group,
    verdict: Optional[verdicts.Verdict],
    hellaswag: Optional[hellaswag_column.HellaSwagColumn] = None,
) -> dict[str, Any]:
    finite = group.finite_losses
    described = stats.describe(finite) if finite else None
    base_finite = baseline.finite_losses
    is_baseline = group is baseline
    deciding = verdict.deciding if verdict else None
    improvement = (
        deciding.improvement
        if deciding
        else (statistics.fmean(base_finite) - described.mean if described and base_finite and not is_baseline else None)
    )
    summaries = [run.summary for run in group.runs]
    return {
        "run": group.label,
        "seeds": len(group.runs),
        "finite_seeds": len(finite),
        "test_loss": described.mean if described else None,
        "ppl": perplexity(described.mean) if described else None,
        "sd": described.sd if described else None,
        "min": described.minimum if described else None,
        "max": described.maximum if described else None,
        "ci95_low": described.ci_low if described else None,
        "ci95_high": described.ci_high if described else None,
        "improvement": improvement,
        "improvement_ci": [deciding.ci_low, deciding.ci_high] if deciding else None,
        "cohens_d": deciding.cohens_d if deciding else None,
        "p_value": deciding.p if deciding else None,
        "p_holm": verdict.p_holm if verdict else None,
        "verdict": "baseline" if is_baseline else verdict.words,
        "noise": "baseline" if is_baseline else verdict.label,
        "decided_by": verdict.decided_by if verdict else None,
        "p_welch": verdict.welch.p if verdict and verdict.welch else None,
        "p_paired": verdict.paired.p if verdict and verdict.paired else None,
        "paired_improvement_ci": [verdict.paired.ci_low, verdict.paired.ci_high]
        if verdict and verdict.paired
        else None,
        "test": _test_words(verdict) if verdict else "",
        "baseline_sds": -deciding.cohens_d
        if deciding and deciding.test == "single run" and deciding.cohens_d is not None
        else None,
        "seeds_needed": verdict.seeds_needed if verdict else None,
        "detectable_effect": verdict.detectable_effect if verdict else None,
        "training_seconds": mean_of_present([s.get("training_seconds") for s in summaries]),
        "tokens_per_second": mean_of_present([s.get("tokens_per_second") for s in summaries]),
        "tokens_seen": mean_of_present([s.get("tokens_seen") for s in summaries]),
        "cost": mean_of_present([s.get("cost") for s in summaries]),
        "skipped_steps": sum(int(s.get("skipped_steps") or 0) for s in summaries),
        "changes": "-" if is_baseline else describe_difference(group, baseline),
        "run_dirs": [str(run.run_dir) for run in group.runs],
        "run_seeds": [run.seed for run in group.runs],
        "run_losses": [loss if math.isfinite(loss) else None for loss in group.losses],
        "run_stopped": [run.stopped for run in group.runs],
        **hellaswag_column.row_keys(group, baseline, hellaswag or hellaswag_column.HellaSwagColumn()),
    }


def _test_words(verdict: verdicts.Verdict) -> str:
    """Each test that was computed, with its statistic, the deciding one first."""
    parts = []
    for name in ("paired", "welch", "single run"):
        difference = {"paired": verdict.paired, "welch": verdict.welch, "single run": verdict.single_run}[name]
        if difference is None:
            continue
        words = {"paired": "paired t-test", "welch": "Welch's t-test", "single run": "single-run t-test"}[name]
        extra = (
            f", {-difference.cohens_d:+.1f} baseline SDs"
            if name == "single run" and difference.cohens_d is not None
            else ""
        )
        decides = " (decides)" if name == verdict.decided_by else ""
        parts.append(
            f"{words}{decides}: t = {difference.t:.2f}, df = {difference.df:.1f}, p = {stats.format_p(difference.p)}{extra}"
        )
    return "; ".join(parts) or verdict.words


def _notes(
    baseline: Group, groups: list[Group], evaluation: dict[str, Any], judgement: verdicts.Judgement
) -> list[str]:
    family = judgement.family_size
    notes = [
        f"Test loss: mean cross-entropy on {_slice_words(evaluation)} (checkpoint {evaluation.get('checkpoint_choice', 'as saved')}, "
        f"{evaluation.get('precision')}); the same tokens for every run (sha256 {str(evaluation.get('tokens_sha256'))[:12]}).",
        "Improvement = baseline mean - group mean (positive is better), with its 95% confidence interval from the test that decides; "
        "d = improvement / pooled seed SD (Cohen's d). Groups are runs that differ only by seed; time, tokens/s, tokens and cost are "
        "per-run means; skipped steps are summed over a group's runs.",
        "Tests (two-sided): the paired t-test on per-seed differences when every seed of a group also exists in the baseline with the "
        "same data order (Welch's p shown beside it); else Welch's t-test when the group has 2+ seeds; a single run by the single-run "
        "t-test (its distance from the baseline mean, in baseline SDs, against the 95% prediction interval of one more seed).",
    ]
    if family > 1:
        notes.append(
            f"Verdicts use Holm-adjusted p-values over the {family} interventions tested against one baseline, at "
            f"{stats.ALPHA:.0%} family-wise: with {family} interventions that change nothing, the chance that any is called "
            "beyond noise stays below 5%. The p column is each test's own."
        )
    elif family == 1:
        notes.append(
            f"One intervention was tested, so its p-value is not adjusted; beyond noise at p < {stats.ALPHA:.2f}."
        )
    base_finite = baseline.finite_losses
    if len(base_finite) >= 2 and family and not judgement.seed_blind:
        sizes = sorted({len(g.finite_losses) for g in groups if g is not baseline and g.finite_losses})
        sd = statistics.stdev(base_finite)
        detectable = ", ".join(
            f"{stats.detectable_effect(sd, len(base_finite), n, comparisons=family):.4f} with {n} seed{'s' if n > 1 else ''}"
            for n in sizes
        )
        notes.append(
            f"Sensitivity: with the baseline's seed SD ({sd:.4f}) and {len(base_finite)} baseline seeds, an improvement is found "
            f"with 80% power when it is at least {detectable} per intervention"
            f"{' (Holm-aware, as `gptlab experiment seeds` computes)' if family > 1 else ''}"
            f"{'; that is for unpaired tests: pairing by seed finds smaller improvements' if judgement.paired else ''}."
        )
    if len(base_finite) < 2:
        finite = " with a finite test loss" if len(base_finite) < len(baseline.runs) else ""
        notes.append(
            f"The baseline has {len(base_finite)} seed{'s' if len(base_finite) != 1 else ''}{finite}, so noise cannot be judged: "
            f"train at least {stats.MIN_SEEDS} seeds of it."
        )
    notes += judgement.notes
    for group in groups:
        seeds = [run.seed for run in group.runs]
        if len(set(seeds)) < len(seeds):
            notes.append(
                f"{group.label}: several runs share a seed ({seeds}); repeats of one seed understate the noise."
            )
        if group is not baseline and len(group.runs) >= 2 and not group.arm(baseline).same_data_order:
            notes.append(f"{group.label}: not paired with the baseline by seed: its batches come in another order.")
    return notes


def _sort_key(row: dict[str, Any]) -> tuple:
    """By mean test loss; groups without a finite one (every run diverged) last, in their given order."""
    return (row["test_loss"] is None, row["test_loss"] if row["test_loss"] is not None else 0.0)


def build_comparison(
    results: list[RunResult],
    baseline_dir: Optional[Path] = None,
    labels: Optional[dict[Path, str]] = None,
    allow_mixed_checkpoints: bool = False,
) -> Comparison:
    """Group the runs, check they share one evaluation identity, and judge every group against the baseline group.

    The baseline is the group holding `baseline_dir`; else the group labelled `baseline`; else the first run's group."""
    if not results:
        raise UserError("compare: no finished runs to compare")
    groups = group_runs(results, labels)
    baseline = _pick_baseline(groups, baseline_dir)
    reference = next((run for group in [baseline] + groups for run in group.runs if run.evaluation), None)
    if reference is None:
        raise UserError("compare: no run could be evaluated: every run stopped on non-finite steps")
    mixed_notes = check_same_evaluation(results, reference, allow_mixed_checkpoints)
    others = [group for group in groups if group is not baseline]
    judgement = verdicts.judge_interventions(
        baseline.arm(baseline),
        [group.arm(baseline) for group in others],
        seed_blind_reason(baseline),
        _pooled_seed_sd(groups),
    )
    hellaswag = hellaswag_column.judge_hellaswag(baseline, groups, seed_blind_reason(baseline))
    rows = sorted(
        (_row(group, baseline, judgement.verdicts.get(group.label), hellaswag) for group in groups), key=_sort_key
    )
    evaluation = reference.evaluation
    notes = _notes(baseline, groups, evaluation, judgement) + mixed_notes + hellaswag.notes
    return Comparison(baseline, groups, rows, notes, evaluation, hellaswag.identity)


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


def _p_cell(value: Optional[float]) -> str:
    return "-" if value is None else stats.format_p(value)


TABLE_COLUMNS = (
    "run",
    "seeds",
    "test loss",
    "ppl",
    "sd",
    "min-max",
    "improvement",
    "improvement 95% CI",
    "d",
    "p",
    "p (Holm)",
    "verdict",
    "hellaswag",
    "time",
    "tokens/s",
    "tokens",
    "cost",
    "skipped",
    "changes",
)
VERDICT_COLUMN = TABLE_COLUMNS.index("verdict")


def table_cells(row: dict[str, Any]) -> list[str]:
    """One row as the strings every text format shows, in TABLE_COLUMNS order."""
    seeds = (
        str(row["seeds"]) if row["finite_seeds"] == row["seeds"] else f"{row['finite_seeds']} of {row['seeds']} finite"
    )
    spread = f"{row['min']:.4f}-{row['max']:.4f}" if row["finite_seeds"] > 1 else "-"
    interval = f"{row['improvement_ci'][0]:+.4f} to {row['improvement_ci'][1]:+.4f}" if row["improvement_ci"] else "-"
    return [
        row["run"],
        seeds,
        _number(row["test_loss"]),
        format_perplexity(row["ppl"]),
        _number(row["sd"]),
        spread,
        _number(row["improvement"], signed=True),
        interval,
        _number(row["cohens_d"], 2, signed=True),
        _p_cell(row["p_value"]),
        _p_cell(row["p_holm"]),
        row["verdict"],
        hellaswag_column.cell(row),
        format_duration(row["training_seconds"]),
        f"{row['tokens_per_second']:,.0f}" if row["tokens_per_second"] is not None else "-",
        f"{row['tokens_seen']:,.0f}" if row["tokens_seen"] is not None else "-",
        format_cost(row["cost"]),
        str(row["skipped_steps"]),
        row["changes"],
    ]


# When the terminal is too narrow for every column even with long cells wrapped, these are left out first, in this
# order (and a note says so); the others always stay. Columns chosen with --columns are never left out.
NARROW_TERMINAL_DROPS = (
    "tokens",
    "skipped",
    "cost",
    "tokens/s",
    "time",
    "min-max",
    "sd",
    "d",
    "p",
    "seeds",
    "improvement 95% CI",
    "p (Holm)",
)
# `changes` can hold a long value (a path, a list); it folds within this share of the width rather than crowd the numbers.
CHANGES_WIDTH_SHARE = 4
TEXT_FORMATS = ("terminal", "markdown", "csv")


def column_name(header: str) -> str:
    """A table column's name for --columns: its header in lower case, other characters as "_" ("p (Holm)" -> p_holm)."""
    return re.sub(r"[^a-z0-9]+", "_", header.lower()).strip("_")


def column_names(output_format: str) -> tuple[str, ...]:
    """The names --columns accepts: the CSV field names for csv, the table's column names for terminal and markdown."""
    return CSV_FIELDS if output_format == "csv" else tuple(column_name(header) for header in TABLE_COLUMNS)


def _chosen_columns(columns: Optional[Sequence[str]], output_format: str) -> list[int]:
    """Indices into column_names(output_format) of the columns asked for, in the order asked; every one when None."""
    names = column_names(output_format)
    if columns is None:
        return list(range(len(names)))
    if not columns:
        raise UserError(f"--columns: name at least one column; for --format {output_format}: {', '.join(names)}")
    unknown = [name for name in columns if name not in names]
    if unknown:
        raise UserError(
            f"--columns {', '.join(unknown)}: not {'a column' if len(unknown) == 1 else 'columns'} of --format "
            f"{output_format}; choose from {', '.join(names)}"
        )
    return [names.index(name) for name in dict.fromkeys(columns)]


def _default_columns(comparison: Comparison, columns: Optional[Sequence[str]], output_format: str) -> list[int]:
    """The columns to draw: those asked for; by default every one, less the hellaswag column when no run has a score."""
    shown = _chosen_columns(columns, output_format)
    scored = any(hellaswag_column.saved_entry(run) for group in comparison.groups for run in group.runs)
    if columns is None and not scored:
        shown.remove(TABLE_COLUMNS.index("hellaswag"))
    return shown


def check_columns(columns: Optional[Sequence[str]], output_format: str) -> None:
    """Refuse a format or --columns the table cannot show (called before any run is evaluated, and by render)."""
    if output_format not in FORMATS:
        raise UserError(f"--format {output_format}: not a format; choose one of {', '.join(FORMATS)}")
    if output_format == "json" and columns is not None:
        raise UserError(f"--columns: only for --format {', '.join(TEXT_FORMATS)}; json holds every field")
    if output_format != "json":
        _chosen_columns(columns, output_format)


def _terminal(comparison: Comparison, columns: Optional[Sequence[str]] = None, width: Optional[int] = None) -> str:
    """The table drawn by rich to fit `width` (default: $COLUMNS, else the terminal's; none for a file or pipe): long
    cells wrap at spaces; if the numbers still do not fit, NARROW_TERMINAL_DROPS are left out and a note names them."""
    from rich import box
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    # $COLUMNS, else the terminal's width; output to a file or pipe is not a terminal and keeps whole lines for grep.
    width = width or shutil.get_terminal_size(fallback=(0, 0)).columns or None
    console = Console(
        file=io.StringIO(), width=width or 10_000, color_system=None, highlight=False, markup=False, emoji=False
    )
    rows = [table_cells(row) for row in comparison.rows]

    def table(shown: list[int]) -> Table:
        drawn = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
        for index in shown:
            changes = TABLE_COLUMNS[index] == "changes"
            drawn.add_column(
                Text(TABLE_COLUMNS[index]),
                overflow="fold",
                max_width=width // CHANGES_WIDTH_SHARE if changes and width else None,
            )
        for cells in rows:
            drawn.add_row(*(Text(cells[index]) for index in shown))
        return drawn

    def narrowest(shown: list[int]) -> int:
        return Measurement.get(console, console.options.update_width(sys.maxsize), table(shown)).minimum

    shown = _default_columns(comparison, columns, "terminal")
    left_out = []
    if width is None:
        console.width = Measurement.get(console, console.options, table(shown)).maximum
    elif columns is None:
        for header in NARROW_TERMINAL_DROPS:
            if narrowest(shown) <= width:
                break
            if header in TABLE_COLUMNS:
                shown.remove(TABLE_COLUMNS.index(header))
                left_out.append(column_name(header))
    console.print(table(shown))
    lines = [line.rstrip() for line in console.file.getvalue().splitlines()]
    notes = list(comparison.notes)
    if left_out:
        notes.insert(
            0,
            f"Left out to fit {width} characters: {', '.join(left_out)}; a wider terminal (or COLUMNS=N) shows them, "
            "and --columns chooses.",
        )
    wrapped = [
        textwrap.fill(note, width, subsequent_indent="  ", break_on_hyphens=False) if width else note for note in notes
    ]
    return "\n".join(lines + [""] + wrapped) + "\n"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (a "|" inside a cell escaped)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(cells) for cells in rows]


def _markdown(comparison: Comparison, columns: Optional[Sequence[str]] = None) -> str:
    shown = _default_columns(comparison, columns, "markdown")
    rows = [table_cells(row) for row in comparison.rows]
    lines = markdown_table(
        [TABLE_COLUMNS[index] for index in shown], [[cells[index] for index in shown] for cells in rows]
    )
    return "\n".join(lines + [""] + [f"- {note}" for note in comparison.notes]) + "\n"


CSV_FIELDS = (
    "run",
    "seeds",
    "finite_seeds",
    "test_loss",
    "ppl",
    "sd",
    "min",
    "max",
    "ci95_low",
    "ci95_high",
    "improvement",
    "improvement_ci_low",
    "improvement_ci_high",
    "cohens_d",
    "p_value",
    "p_holm",
    "verdict",
    "noise",
    "decided_by",
    "p_welch",
    "p_paired",
    "test",
    "baseline_sds",
    "seeds_needed",
    "detectable_effect",
    *hellaswag_column.CSV_KEYS,
    "training_seconds",
    "tokens_per_second",
    "tokens_seen",
    "cost",
    "skipped_steps",
    "changes",
)


def csv_table(
    comparison: Comparison,
    columns: Optional[Sequence[str]] = None,
    extra_fields: Sequence[str] = (),
    extra: Optional[dict[str, dict[str, Any]]] = None,
) -> str:
    """One CSV row per group: the chosen CSV_FIELDS, then `extra_fields` from `extra` (by group label, e.g. the budget's)."""
    buffer = io.StringIO()
    fields = [CSV_FIELDS[index] for index in _chosen_columns(columns, "csv")] + list(extra_fields)
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in comparison.rows:
        low, high = row["improvement_ci"] or (None, None)
        flat = {**row, "improvement_ci_low": low, "improvement_ci_high": high, **(extra or {}).get(row["run"], {})}
        writer.writerow({key: ("" if value is None else value) for key, value in flat.items()})
    return buffer.getvalue()


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    evaluation = {
        key: comparison.evaluation.get(key)
        for key in (*SLICE_KEYS, "tokens", "precision", "dataset", "tokenizer", "tokens_sha256")
    }
    return {
        "baseline": comparison.baseline.label,
        "rows": comparison.rows,
        "notes": comparison.notes,
        "evaluation": evaluation,
        "hellaswag": comparison.hellaswag,
    }


def render(
    comparison: Comparison,
    output_format: str = "terminal",
    columns: Optional[Sequence[str]] = None,
    width: Optional[int] = None,
) -> str:
    """The comparison as `output_format`; `columns` (names from column_names) chooses and orders the table's columns,
    `width` the terminal table's width."""
    check_columns(columns, output_format)
    if output_format == "json":
        return strict_json(comparison_json(comparison), indent=2) + "\n"
    if output_format == "terminal":
        return _terminal(comparison, columns, width)
    return {"markdown": _markdown, "csv": csv_table}[output_format](comparison, columns)


def compare_runs(
    run_dirs: list[Path],
    baseline_dir: Optional[Path] = None,
    datasets_dir: Optional[Path] = None,
    echo: Callable[[str], Any] = print,
    allow_mixed_checkpoints: bool = False,
) -> Comparison:
    """`gptlab compare`: load (evaluating where needed, as the baseline was evaluated) and build the comparison."""
    if not run_dirs:
        raise UserError("compare: name at least one run directory")
    reference = Path(baseline_dir) if baseline_dir is not None else Path(run_dirs[0])
    runs = list(run_dirs) + ([reference] if baseline_dir is not None else [])
    for run_dir in runs:  # before the reference's settings are read from it
        _check_is_run(Path(run_dir))
        _read_summary(Path(run_dir))
    results = load_results(runs, default_settings(reference), datasets_dir, echo)
    return build_comparison(results, baseline_dir, allow_mixed_checkpoints=allow_mixed_checkpoints)
