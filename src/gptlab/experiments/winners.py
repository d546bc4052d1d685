"""A stack of the winners: `"stacks": {"winners": "winners"}` in an experiment file.

Which interventions to stack is known only once they have run: the stack is chosen when every planned run
of the interventions has finished (`gptlab experiment run` does it, then trains the stack), from the same
table `gptlab experiment report` prints at that moment: every intervention whose verdict is "better, beyond
noise". Two winners that set one key to different values (weight decay 0.01 and 0.1, say) cannot both be
stacked: the one with the larger improvement stays, and the record says which was left out and why.

The choice is recorded once, in `runs_dir/<stack>/stack.json` (members, every candidate's improvement,
Holm p-value and verdict, the seeds that decided), and from then on the stack is an ordinary stack of
those members: a later run on more seeds trains it on them too, and does not choose again (delete the
folder to choose again). With fewer than two winners nothing is trained; the record says so.

The verdicts of the final report can differ from those the choice was made on: the stack joins the Holm
family (one more comparison), and more seeds move every p-value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptlab.experiments.spec import Experiment, chosen_members
from gptlab.experiments.verdicts import BETTER
from gptlab.files import atomic_write_json
from gptlab.rundir import STACK_CHOICE


def unchosen(experiment: Experiment) -> list[str]:
    """The stacks of winners that have not chosen their members yet."""
    return [name for name in experiment.winner_stacks if chosen_members(experiment.runs_dir, name) is None]


def choose(experiment: Experiment, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of stack `name`'s choice from the comparison's rows (one per variant, as `report` prints them)."""
    by_label = {row["run"]: row for row in rows}
    candidates = [
        {
            "intervention": member,
            "improvement": by_label[member]["improvement"],
            "p_holm": by_label[member]["p_holm"],
            "verdict": by_label[member]["verdict"],
        }
        for member in experiment.winner_stacks[name]
        if member in by_label
    ]
    winners = sorted(
        (c for c in candidates if by_label[c["intervention"]]["noise"] == BETTER),
        key=lambda c: -(c["improvement"] or 0.0),
    )
    members: list[str] = []
    left_out: list[dict[str, str]] = []
    settings: dict[tuple[str, str], tuple[Any, str]] = {}
    for winner in winners:
        overrides = experiment.variants[winner["intervention"]]
        clash = next(
            (
                (key, settings[file_name, key][1])
                for file_name, values in overrides.items()
                for key, value in values.items()
                if (file_name, key) in settings and settings[file_name, key][0] != value
            ),
            None,
        )
        if clash is not None:
            left_out.append(
                {
                    "intervention": winner["intervention"],
                    "why": f"sets {clash[0]} as {clash[1]} does, to another value; {clash[1]} improved more",
                }
            )
            continue
        members.append(winner["intervention"])
        for file_name, values in overrides.items():
            for key, value in values.items():
                settings[file_name, key] = (value, winner["intervention"])
    return {
        "stack": name,
        "members": members,
        "trained": len(members) >= 2,
        "left_out": left_out,
        "candidates": candidates,
        "seeds": list(experiment.seeds),
        "rule": "every intervention whose verdict was 'better, beyond noise' (Holm-adjusted) when they had all finished",
    }


def record(experiment: Experiment, choice: dict[str, Any]) -> Path:
    path = experiment.runs_dir / choice["stack"] / STACK_CHOICE
    atomic_write_json(path, choice)
    return path


def choice_words(choice: dict[str, Any]) -> str:
    """One line for the experiment's output."""
    members = ", ".join(choice["members"]) or "none"
    words = f"stack {choice['stack']}: the winners are {members}"
    if choice["left_out"]:
        words += "; left out: " + "; ".join(f"{item['intervention']} ({item['why']})" for item in choice["left_out"])
    if not choice["trained"]:
        words += "; fewer than two, so there is nothing to stack and it is not trained"
    return words
