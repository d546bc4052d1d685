"""The evaluation tasks: the one front door that `gptlab eval --task`, `gptlab.evaluate(task=...)`, compare,
the report and the model card go through.

A task is a module in gptlab/evaluate/ that defines `TASK = Task(...)`: its name, its options (click
parameter declarations, so `gptlab eval` grows the task's flags without cli.py naming them), a function that
evaluates a run, and a one-line summary for the terminal. Its result is saved in evaluation.json under its
name (the loss alone keeps the top level, which older evaluation files and the comparisons read).
Adding a task is its own module and its tests; nothing else names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from gptlab.errors import UserError

# Options every task accepts: they are parameters of `run_task` itself.
COMMON = ("checkpoint", "precision", "save", "show_progress")


@dataclass(frozen=True)
class Task:
    name: str
    summary: str  # one line for --help
    # Each option: (python name, click parameter declarations, click keyword arguments). A task gets only
    # the options it names (plus COMMON); an option several tasks share is declared by the first.
    options: tuple[tuple[str, tuple[str, ...], dict[str, Any]], ...]
    run: Callable[..., dict[str, Any]]  # (run_dir, checkpoint, precision, show_progress, **options) -> result
    describe: Callable[[dict[str, Any]], str]  # the result in one line
    entry: Optional[str] = None  # evaluation.json's key; None: the top level (the loss only)
    order: int = 100  # position in listings
    card_line: Optional[Callable[[dict[str, Any]], str]] = field(default=None)  # the model card's line

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.options)


def _discover() -> dict[str, Task]:
    import gptlab.evaluate as package

    found = []
    for module in pkgutil.iter_modules(package.__path__):
        task = getattr(importlib.import_module(f"{package.__name__}.{module.name}"), "TASK", None)
        if isinstance(task, Task):
            found.append(task)
    return {task.name: task for task in sorted(found, key=lambda task: (task.order, task.name))}


_TASKS: Optional[dict[str, Task]] = None


def tasks() -> dict[str, Task]:
    """Every task, by name, in listing order (loss, hellaswag, ift, ...)."""
    global _TASKS
    if _TASKS is None:
        _TASKS = _discover()
    return _TASKS


def get_task(name: str) -> Task:
    known = tasks()
    if name not in known:
        raise UserError(f"--task {name}: no such task; one of {', '.join(known)}")
    return known[name]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(task: Task, given: dict[str, Any]) -> None:
    """One line naming the options given that `task` does not take, and which task takes them."""
    foreign = [name for name, value in given.items() if value not in (None, False) and name not in task.option_names]
    if not foreign:
        return
    owners = sorted(
        {other.name for other in tasks().values() for name in foreign if name in other.option_names},
        key=list(tasks()).index,
    )
    verb = "is" if len(foreign) == 1 else "are"
    where = f"for --task {' / '.join(owners)}" if owners else "not options of any task"
    raise UserError(f"--task {task.name}: {', '.join(flag(name) for name in foreign)} {verb} {where}")


def run_task(
    name: str,
    run_dir: Path,
    *,
    checkpoint: str,
    precision: str = "fp32",
    save: bool = False,
    show_progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate `run_dir` with task `name`; with `save`, store the result in evaluation.json, keeping every
    other task's entry. Options the task does not take (when given) are refused with one line."""
    task = get_task(name)
    check_options(task, options)
    result = task.run(
        Path(run_dir),
        checkpoint=checkpoint,
        precision=precision,
        show_progress=show_progress,
        **{key: value for key, value in options.items() if key in task.option_names},
    )
    return save_result(task, Path(run_dir), result, checkpoint) if save else result


def save_result(task: Task, run_dir: Path, result: dict[str, Any], checkpoint_choice: str) -> dict[str, Any]:
    from gptlab.rundir import write_evaluation, write_task_evaluation

    if task.entry is None:
        return write_evaluation(run_dir, result, checkpoint_choice)
    return write_task_evaluation(run_dir, task.entry, result, checkpoint_choice)


def saved_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each task's saved result in the run's evaluation.json, by task name (tasks without one left out)."""
    from gptlab.rundir import read_evaluation

    saved = read_evaluation(run_dir) or {}
    found = {}
    for task in tasks().values():
        entry = saved if task.entry is None else saved.get(task.entry)
        if isinstance(entry, dict) and (task.entry is not None or "loss" in entry):
            found[task.name] = entry
    return found


def card_lines(run_dir: Path, checkpoint_name: str) -> list[str]:
    """The model card's line of every task that writes one and has a result saved of this checkpoint (a result
    of a fine-tuned copy names the run's checkpoint as `base_checkpoint`)."""
    lines = []
    for name, entry in saved_results(run_dir).items():
        task = tasks()[name]
        of = entry.get("base_checkpoint", entry.get("checkpoint"))
        if task.card_line is not None and of == checkpoint_name:
            lines.append(task.card_line(entry))
    return lines


def all_options() -> list[tuple[str, tuple[str, ...], dict[str, Any], list[str]]]:
    """Every task option once, as (python name, declarations, click arguments, the tasks taking it)."""
    seen: dict[str, tuple[str, tuple[str, ...], dict[str, Any], list[str]]] = {}
    for task in tasks().values():
        for name, declarations, arguments in task.options:
            if name not in seen:
                seen[name] = (name, declarations, arguments, [])
            seen[name][3].append(task.name)
    return list(seen.values())
