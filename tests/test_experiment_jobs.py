"""`experiment run --jobs N` (runs trained at once), `--seeds N` (a quick look on the first seeds) and a stack of the
winners ("stacks": {"NAME": "winners"}): real tiny training runs on the Brown corpus."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TINY_MODEL, TINY_TRAIN, run_cli

from gptlab.errors import UserError
from gptlab.experiments import winners
from gptlab.experiments.plan import plan_runs
from gptlab.experiments.runner import FINISHED, run_experiment, run_state, thread_environment
from gptlab.experiments.spec import load_experiment
from gptlab.experiments.verdicts import BETTER, WITHIN, WORSE


def _experiment(tmp_path: Path, dataset: Path, spec: dict, train: dict | None = None) -> Path:
    base = tmp_path / "base"
    base.mkdir()
    (base / "model.json").write_text(json.dumps(TINY_MODEL))
    relative = os.path.relpath(dataset.resolve(), base.resolve())
    (base / "train.json").write_text(json.dumps({"dataset": relative, **TINY_TRAIN, **(train or {})}))
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"baseline": "base", "evaluation": {"batches": 4}, **spec}))
    return path


@pytest.mark.slow  # trains 4 runs as subprocesses and 2 in-process: 30-90 s on the 2-core VM
def test_two_jobs_train_every_run_as_one_job_does_and_seeds_limits_the_runs(tmp_path, brown_dataset):
    spec = {"seeds": [1, 2], "interventions": {"lr": {"learning_rate": 0.01}}}
    path = _experiment(tmp_path, brown_dataset, spec, {"min_train_tokens": 4 * 32 * 4})
    lines: list[str] = []
    outcomes = run_experiment(load_experiment(path).with_seeds(1), jobs=2, echo=lines.append)
    # the first seed only, reported in plan order whatever order the two finished in
    assert [(o["variant"], o["seed"]) for o in outcomes] == [("baseline", 1), ("lr", 1)]
    assert all(run_state(Path(o["run_dir"])) == FINISHED for o in outcomes)
    assert not (tmp_path / "exp-runs" / "baseline" / "seed-2").exists()
    assert sum(line.endswith(": training") for line in lines) == 2 and sum("test loss" in line for line in lines) == 2
    # each run's printed lines went to its train.log, not to the screen
    assert "Training complete" in (Path(outcomes[0]["run_dir"]) / "train.log").read_text()

    # the same runs trained one at a time in this process give the same test losses
    again = tmp_path / "again"
    again.mkdir()
    alone = _experiment(again, brown_dataset, {**spec, "seeds": [1]}, {"min_train_tokens": 4 * 32 * 4})
    sequential = run_experiment(load_experiment(alone), jobs=1, echo=lambda line: None)
    assert [o["test_loss"] for o in sequential] == pytest.approx([o["test_loss"] for o in outcomes], rel=1e-5)

    # the whole study later keeps the finished runs and trains the other seed only
    rest = run_experiment(load_experiment(path), jobs=2, echo=lambda line: None)
    assert [o["state_before"] for o in rest] == ["finished"] * 2 + ["new"] * 2
    assert all(run_state(Path(o["run_dir"])) == FINISHED for o in rest)


def test_threads_are_shared_among_jobs_unless_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert thread_environment(1) is None
    assert thread_environment(2)["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    assert thread_environment(10 * cores)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_environment(2) is None  # the user's own setting is kept


def test_seeds_outside_the_file_are_one_line_and_exit_2(tmp_path, brown_dataset):
    path = _experiment(tmp_path, brown_dataset, {"seeds": [1, 2]})
    result = run_cli("experiment", "plan", str(path), "--seeds", "3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(f"--seeds 3: {path} lists 2 seeds (1, 2); give 1 to 2")
    assert "Traceback" not in result.stderr
    planned = run_cli("experiment", "plan", str(path), "--seeds", "1")
    assert planned.returncode == 0 and "seed-1" in planned.stdout and "seed-2" not in planned.stdout


def _row(run: str, noise: str, improvement: float) -> dict:
    return {"run": run, "noise": noise, "improvement": improvement, "p_holm": 0.01, "verdict": noise}


def test_the_winners_are_the_better_beyond_noise_and_of_two_that_clash_the_larger_stays(tmp_path, brown_dataset):
    path = _experiment(
        tmp_path,
        brown_dataset,
        {
            "seeds": [1, 2],
            "interventions": {
                "wd-low": {"weight_decay": 0.01},
                "wd-high": {"weight_decay": 0.3},
                "no-dropout": {"drop_rate": 0.0},
                "lr": {"learning_rate": 0.01, "schedule_learning_rate": True},
                "tied": {"tie_weights": True},
            },
            "stacks": {"best": "winners"},
        },
    )
    experiment = load_experiment(path)
    assert "best" not in experiment.variants and winners.unchosen(experiment) == ["best"]
    rows = [
        _row("baseline", "baseline", None),
        _row("wd-low", BETTER, 0.02),
        _row("wd-high", BETTER, 0.05),
        _row("no-dropout", BETTER, 0.01),
        _row("lr", WITHIN, 0.3),
        _row("tied", WORSE, -1.0),
    ]
    choice = winners.choose(experiment, "best", rows)
    assert choice["members"] == ["wd-high", "no-dropout"] and choice["trained"]
    assert [item["intervention"] for item in choice["left_out"]] == ["wd-low"]
    assert "weight_decay" in choice["left_out"][0]["why"] and "wd-high" in choice["left_out"][0]["why"]
    winners.record(experiment, choice)

    # once chosen, the stack is an ordinary stack of its members, on every seed
    chosen = load_experiment(path)
    assert chosen.variants["best"] == {"model": {"drop_rate": 0.0}, "train": {"weight_decay": 0.3}}
    assert winners.unchosen(chosen) == []
    assert [(r.variant, r.seed) for r in plan_runs(chosen) if r.variant == "best"] == [("best", 1), ("best", 2)]

    one = winners.choose(experiment, "best", [_row("lr", BETTER, 0.3), _row("tied", WORSE, -1.0)])
    assert one["members"] == ["lr"] and not one["trained"]
    assert "fewer than two" in winners.choice_words(one)


def test_a_stack_of_winners_needs_interventions_and_a_broken_record_is_one_line(tmp_path, brown_dataset):
    path = _experiment(
        tmp_path, brown_dataset, {"seeds": [1], "interventions": {"a": {"drop_rate": 0.0}}, "stacks": {"w": "winners"}}
    )
    with pytest.raises(UserError, match=r"stacks\.w: a stack of the winners needs two or more interventions"):
        load_experiment(path)
    path.write_text(
        json.dumps(
            {
                "baseline": "base",
                "seeds": [1],
                "interventions": {"a": {"drop_rate": 0.0}, "b": {"weight_decay": 0.0}},
                "stacks": {"w": "winners"},
            }
        )
    )
    record = tmp_path / "exp-runs" / "w" / "stack.json"
    record.parent.mkdir(parents=True)
    record.write_text("{not json")
    with pytest.raises(UserError, match="cannot read the stack's choice"):
        load_experiment(path)
