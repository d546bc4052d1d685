"""The experiment file: a baseline run, named interventions, optional stacks of them, and seeds.

JSON or TOML. Every problem is reported at once, one line each, naming the file and the key:

    {
      "baseline": "baseline",                    # a run directory (model.json + train.json), relative to this file
      "runs_dir": "runs",                        # where the planned runs go (default: <file stem>-runs beside it)
      "seeds": [1, 2, 3],
      "interventions": {
        "no-dropout": {"model": {"drop_rate": 0.0}},
        "lr-schedule": {"schedule_learning_rate": true, "warmup_period_percent": 5}
      },
      "stacks": {"no-dropout+lr-schedule": ["no-dropout", "lr-schedule"],
                 "winners": "winners"},          # the interventions judged better, beyond noise (see winners.py)
      "evaluation": {"batches": 100},
      "random_streams": true                     # common random numbers (see plan.py); default: on for a new experiment
    }

An intervention is {"model": {...}, "train": {...}} or flat keys resolved as `gptlab train --set` does
(a bare key of model.json or train.json, or one prefixed `model.` / `train.`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import tomllib

from gptlab.config import (
    SEED_MAX,
    EvaluationSettings,
    Overrides,
    apply_overrides,
    overrides_from_mapping,
    validate_evaluation,
    validate_run_config,
)
from gptlab.errors import UserError
from gptlab.files import DuplicateKeyError, loads_no_duplicates
from gptlab.rundir import MODEL_FILE, STACK_CHOICE, TRAIN_FILE

BASELINE = "baseline"
WINNERS = "winners"  # a stack's value: the interventions that turn out better, beyond noise, chosen once they finished
TOP_LEVEL_KEYS = (
    "name",
    "description",
    "baseline",
    "runs_dir",
    "seeds",
    "interventions",
    "stacks",
    "evaluation",
    "random_streams",
)
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class Experiment:
    """A validated experiment file. `variants` maps each variant name (baseline first) to its overrides."""

    path: Path
    name: str
    baseline_dir: Path
    runs_dir: Path
    seeds: tuple[int, ...]
    variants: dict[str, dict[str, dict[str, Any]]]
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    random_streams: Optional[bool] = None  # the file's choice; None: on for an experiment none of whose runs started
    # stacks of the winners: name -> the interventions it may choose from (every intervention); chosen after they
    # finished and recorded in runs_dir/<name>/ (winners.py), they then join `variants` (load_experiment)
    winner_stacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    stacks: tuple[str, ...] = ()  # the names of every stack, listed or of winners, chosen or not

    def with_seeds(self, count: Optional[int]) -> "Experiment":
        """The experiment on its first `count` seeds (`--seeds N`: a quick look before the whole study)."""
        if count is None:
            return self
        if not 1 <= count <= len(self.seeds):
            raise UserError(
                f"--seeds {count}: {self.path} lists {len(self.seeds)} seeds ({', '.join(map(str, self.seeds))}); "
                f"give 1 to {len(self.seeds)}"
            )
        return replace(self, seeds=self.seeds[:count])


def read_experiment_file(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: experiment file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise UserError(f"{path}: not valid TOML: {error}") from None
    else:
        try:
            data = loads_no_duplicates(text)
        except json.JSONDecodeError as error:
            raise UserError(
                f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
            ) from None
        except DuplicateKeyError as error:
            raise UserError(
                f"{path}: {error.key}: the key appears more than once; keep one (the last would silently win)"
            ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: must hold an object of keys, not {type(data).__name__}")
    return data


def resolve_overrides(where: str, mapping: Any, problems: list[str]) -> Overrides:
    """An intervention's overrides, as config.py reads them; the seed is the experiment's to set."""
    overrides = overrides_from_mapping(where, mapping, problems)
    if "random_seed" in overrides["train"]:
        del overrides["train"]["random_seed"]
        problems.append(f"{where}.random_seed: seeds come from the experiment's 'seeds' list; remove it here")
    return overrides


def _seeds(path: Path, raw: Any, problems: list[str]) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        problems.append(
            f"{path}: seeds: {json.dumps(raw)} is not allowed: give a non-empty list of integers, e.g. [1, 2, 3]"
        )
        return ()
    outside = [seed for seed in raw if not 0 <= seed <= SEED_MAX]
    if outside:
        problems.append(
            f"{path}: seeds: {', '.join(map(str, outside))} is outside 0..{SEED_MAX}, the range in which every seed "
            "gives different weights (outside it seeds alias: -1 trains as 18446744073709551615)"
        )
        return ()
    if len(set(raw)) != len(raw):
        problems.append(f"{path}: seeds: {raw} repeats a seed; each seed once")
    return tuple(raw)


def _check_name(path: Path, section: str, name: str, problems: list[str]) -> None:
    if not _VARIANT_NAME.match(name) or name == BASELINE:
        problems.append(
            f"{path}: {section}.{name}: not allowed as a name: use letters, digits and . _ + - (and not '{BASELINE}')"
        )


def _interventions(path: Path, raw: Any, problems: list[str]) -> dict[str, dict]:
    if not isinstance(raw, dict):
        problems.append(f"{path}: interventions: must be an object of name -> overrides")
        return {}
    found = {}
    for name, overrides in raw.items():
        _check_name(path, "interventions", name, problems)
        found[name] = resolve_overrides(f"{path}: interventions.{name}", overrides, problems)
    return found


def _stacks(
    path: Path, raw: Any, interventions: dict[str, dict], problems: list[str], winners: dict[str, tuple[str, ...]]
) -> dict[str, dict]:
    """Stacks listed by name; a stack given as "winners" goes into `winners` instead, to be chosen later."""
    if not isinstance(raw, dict):
        problems.append(f'{path}: stacks: must be an object of name -> list of intervention names, or "{WINNERS}"')
        return {}
    found = {}
    for name, members in raw.items():
        where = f"{path}: stacks.{name}"
        _check_name(path, "stacks", name, problems)
        if name in interventions:
            problems.append(f"{where}: also the name of an intervention; give the stack its own name")
        if members == WINNERS:
            if len(interventions) < 2:
                problems.append(f"{where}: a stack of the winners needs two or more interventions to choose from")
            winners[name] = tuple(interventions)
            continue
        if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) for m in members):
            problems.append(f'{where}: give a list of two or more intervention names, or "{WINNERS}"')
            continue
        unknown = [m for m in members if m not in interventions]
        if unknown:
            problems.append(
                f"{where}: {', '.join(unknown)} not among the interventions ({', '.join(interventions) or 'none'})"
            )
            continue
        found[name] = _combine(where, members, interventions, problems)
    return found


def _combine(where: str, members: list[str], interventions: dict[str, dict], problems: list[str]) -> dict[str, dict]:
    """The union of the members' overrides; two members setting one key to different values is an error."""
    combined: Overrides = {"model": {}, "train": {}}
    setter: dict[tuple[str, str], str] = {}
    for member in members:
        for file_name, values in interventions[member].items():
            for key, value in values.items():
                if (file_name, key) in setter and combined[file_name][key] != value:
                    problems.append(
                        f"{where}: {setter[file_name, key]} and {member} both set {file_name}.{key}, to "
                        f"{json.dumps(combined[file_name][key])} and {json.dumps(value)}; stack interventions that agree"
                    )
                setter[file_name, key] = member
                combined[file_name][key] = value
    return combined


def variant_problems(path: Path, baseline_dir: Path, variants: dict[str, Overrides]) -> list[str]:
    """Each variant's values checked as the run would check them (types, ranges, finite numbers), so that
    one reading of the file reports a wrong type inside an intervention beside every other problem."""
    bases = []
    for name in (MODEL_FILE, TRAIN_FILE):
        try:
            bases.append(loads_no_duplicates((baseline_dir / name).read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            return [f"{baseline_dir / name}: cannot read the baseline's config ({error})"]
    if not all(isinstance(base, dict) for base in bases):
        return [f"{baseline_dir}: {MODEL_FILE} and {TRAIN_FILE} must each hold a JSON object"]
    problems: list[str] = []
    for variant, overrides in variants.items():
        label = f"{path} [{variant} over {baseline_dir}]"
        try:
            model_data, train_data = apply_overrides(bases[0], bases[1], overrides)
            validate_run_config(Path(f"{label} {MODEL_FILE}"), model_data, Path(f"{label} {TRAIN_FILE}"), train_data)
        except UserError as error:
            problems += error.lines
    return problems


def load_experiment(path: Path) -> Experiment:
    """Read and check an experiment file; raises one UserError listing every problem."""
    path = Path(path)
    data = read_experiment_file(path)
    problems = [
        f"{path}: {key}: unknown key; allowed keys are: {', '.join(TOP_LEVEL_KEYS)}"
        for key in data
        if key not in TOP_LEVEL_KEYS
    ]
    for required in ("baseline", "seeds"):
        if required not in data:
            problems.append(f"{path}: {required}: required key is missing")
    baseline = data.get("baseline")
    baseline_dir = path.parent / baseline if isinstance(baseline, str) else path.parent
    if isinstance(baseline, str) and not (
        (baseline_dir / MODEL_FILE).is_file() and (baseline_dir / TRAIN_FILE).is_file()
    ):
        problems.append(
            f"{path}: baseline: {baseline_dir} is not a run directory (it needs {MODEL_FILE} and {TRAIN_FILE})"
        )
    elif "baseline" in data and not isinstance(baseline, str):
        problems.append(f"{path}: baseline: give the path of a run directory, relative to the experiment file")
    seeds = _seeds(path, data.get("seeds"), problems) if "seeds" in data else ()
    interventions = _interventions(path, data.get("interventions", {}), problems)
    winner_stacks: dict[str, tuple[str, ...]] = {}
    stacks = _stacks(path, data.get("stacks", {}), interventions, problems, winner_stacks)
    evaluation = validate_evaluation(path, data.get("evaluation", {}), problems)
    runs_dir = data.get("runs_dir", f"{path.stem}-runs")
    if not isinstance(runs_dir, str) or not runs_dir:
        problems.append(f"{path}: runs_dir: give a folder path, relative to the experiment file")
        runs_dir = f"{path.stem}-runs"
    runs_path = path.parent / runs_dir
    chosen = {}
    for name in winner_stacks:  # a stack of winners chosen earlier is a stack like any other
        members = chosen_members(runs_path, name)
        if members is not None and len(members) >= 2:
            unknown = [m for m in members if m not in interventions]
            if unknown:
                problems.append(
                    f"{runs_path / name / STACK_CHOICE}: chose {', '.join(unknown)}, no longer among the interventions; "
                    f"delete {runs_path / name} to choose again"
                )
                continue
            chosen[name] = _combine(f"{path}: stacks.{name}", members, interventions, problems)
    variants = {BASELINE: {"model": {}, "train": {}}, **interventions, **stacks, **chosen}
    if isinstance(baseline, str) and (baseline_dir / MODEL_FILE).is_file() and (baseline_dir / TRAIN_FILE).is_file():
        problems += variant_problems(path, baseline_dir, variants)
    streams = data.get("random_streams")
    if streams is not None and not isinstance(streams, bool):
        problems.append(f"{path}: random_streams: give true or false")
    if problems:
        raise UserError(*problems)
    return Experiment(
        path,
        str(data.get("name", path.stem)),
        baseline_dir,
        path.parent / runs_dir,
        seeds,
        variants,
        evaluation,
        streams,
        winner_stacks,
        tuple(data["stacks"]) if isinstance(data.get("stacks"), dict) else (),
    )


def chosen_members(runs_dir: Path, name: str) -> Optional[list[str]]:
    """The members a stack of winners chose (written by winners.py), or None when it has not chosen yet."""
    path = runs_dir / name / STACK_CHOICE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(
            f"{path}: cannot read the stack's choice ({error}); delete {path.parent} to choose again"
        ) from None
    members = record.get("members") if isinstance(record, dict) else None
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise UserError(f"{path}: 'members' must be a list of intervention names; delete {path.parent} to choose again")
    return members
