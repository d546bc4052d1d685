"""Experiment files, planning, and running with restarts: real tiny training runs on the Brown corpus."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL, TINY_TRAIN, read_metrics, run_cli

from gptlab.config import load_run_config
from gptlab.errors import UserError
from gptlab.experiments import stats
from gptlab.experiments.plan import plan_runs, write_plan
from gptlab.experiments.runner import FINISHED, INTERRUPTED, NEW, run_experiment, run_state
from gptlab.experiments.spec import load_experiment
from gptlab.runtime.checkpoint import list_checkpoints, point

# --- statistics ----------------------------------------------------------------------------------------


def _t_density(x: float, df: float) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf_by_integration(t: float, df: float, intervals: int = 20_000) -> float:
    """0.5 + the integral of the density from 0 to t (Simpson's rule): an independent route to the same number."""
    h = t / intervals
    total = _t_density(0, df) + _t_density(t, df)
    total += sum((4 if i % 2 else 2) * _t_density(i * h, df) for i in range(1, intervals))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("t, df", [(0.5, 1), (2.0, 3), (-1.3, 4.7), (2.9, 9.2), (1.96, 60)])
def test_student_t_cdf_matches_numerical_integration_of_the_density(t, df):
    assert stats.student_t_cdf(t, df) == pytest.approx(_t_cdf_by_integration(t, df), abs=1e-9)


@pytest.mark.parametrize("df, critical", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)])
def test_student_t_quantile_gives_the_printed_95_percent_critical_values(df, critical):
    assert stats.student_t_quantile(0.975, df) == pytest.approx(critical, abs=5e-5)
    assert stats.student_t_cdf(stats.student_t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-12)
    assert stats.student_t_quantile(0.025, df) == pytest.approx(-critical, abs=5e-5)


def test_describe_and_welch_follow_their_definitions():
    values = [3.1, 3.4, 2.9, 3.3]
    described = stats.describe(values)
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert described.mean == pytest.approx(mean) and described.sd == pytest.approx(sd)
    assert described.ci_high - mean == pytest.approx(stats.student_t_quantile(0.975, 3) * sd / 2)
    assert stats.describe([5.0]).sd is None and stats.describe([5.0]).ci_low is None

    other = [3.9, 4.4, 4.0]
    result = stats.welch_difference(values, other)  # improvement = mean(values) - mean(other)
    variance_sum = sd**2 / 4 + stats.describe(other).sd ** 2 / 3
    assert result.t == pytest.approx((mean - sum(other) / 3) / math.sqrt(variance_sum))
    assert result.p == pytest.approx(2 * (1 - _t_cdf_by_integration(abs(result.t), result.df)), abs=1e-8)
    assert stats.welch_difference(values, values).p == pytest.approx(1.0)


# --- experiment files ----------------------------------------------------------------------------------


def _baseline(directory: Path, dataset: Path, train: dict | None = None) -> Path:
    """A baseline run directory whose dataset is given relative to it, as users write it."""
    directory.mkdir(parents=True)
    (directory / "model.json").write_text(json.dumps(TINY_MODEL))
    relative = os.path.relpath(dataset.resolve(), directory.resolve())
    (directory / "train.json").write_text(json.dumps({"dataset": relative, **TINY_TRAIN, **(train or {})}))
    return directory


def test_toml_and_json_experiment_files_plan_the_same_resolved_runs(tmp_path, brown_dataset):
    _baseline(tmp_path / "base", brown_dataset)
    (tmp_path / "exp.json").write_text(
        json.dumps(
            {
                "baseline": "base",
                "seeds": [3, 5],
                "interventions": {
                    "no-tie": {"model": {"tie_weights": True}},
                    "lr": {"train.learning_rate": 0.01, "warmup_period_percent": 10},
                },
                "stacks": {"both": ["no-tie", "lr"]},
            }
        )
    )
    (tmp_path / "exp.toml").write_text(
        'baseline = "base"\nseeds = [3, 5]\n[interventions.no-tie]\ntie_weights = true\n'
        '[interventions.lr]\nlearning_rate = 0.01\ntrain = { warmup_period_percent = 10 }\n[stacks]\nboth = ["no-tie", "lr"]\n'
    )
    from_json, from_toml = (
        plan_runs(load_experiment(tmp_path / "exp.json")),
        plan_runs(load_experiment(tmp_path / "exp.toml")),
    )
    assert [(r.variant, r.seed, r.model, r.train) for r in from_json] == [
        (r.variant, r.seed, r.model, r.train) for r in from_toml
    ]
    assert [(r.variant, r.seed) for r in from_json] == [
        (v, s) for s in (3, 5) for v in ("baseline", "no-tie", "lr", "both")
    ]

    write_plan(from_json)
    both = tmp_path / "exp-runs" / "both" / "seed-5"
    config = load_run_config(both)  # the written files validate, and the relative dataset path still leads to the data
    assert (
        config.model.tie_weights is True
        and config.train.learning_rate == 0.01
        and config.train.warmup_period_percent == 10
    )
    assert config.train.random_seed == 5 and config.model.emb_dim == TINY_MODEL["emb_dim"]
    assert (both / config.train.dataset / "train.safetensors").is_file()
    written = json.loads((both / "train.json").read_text())
    assert set(written) == set(config.train.model_dump())  # fully resolved: every key, defaults included


def test_every_problem_in_an_experiment_file_is_one_line_naming_file_and_key(tmp_path, brown_dataset):
    _baseline(tmp_path / "base", brown_dataset)
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            {
                "baseline": "base",
                "seeds": [1, 1],
                "colour": "red",
                "interventions": {
                    "typo": {"learning_rat": 0.1},
                    "fast": {"learning_rate": 0.01},
                    "slow": {"learning_rate": 0.001},
                    "broken": {"drop_rate": 2.0},
                },
                "stacks": {"clash": ["fast", "slow"], "ghost": ["fast", "nothing"]},
                "evaluation": {"precision": "fp8"},
            }
        )
    )
    result = run_cli("experiment", "plan", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith(f"error: {path}") for line in lines), lines
    for expected in (
        "colour: unknown key",
        "seeds: [1, 1] repeats a seed",
        "interventions.typo.learning_rat: not a key",
        "stacks.clash: fast and slow both set train.learning_rate",
        "stacks.ghost: nothing not among the interventions",
        "evaluation.precision",
    ):
        assert any(expected in line for line in lines), (expected, lines)

    path.write_text(json.dumps({"baseline": "base", "seeds": [1], "interventions": {"broken": {"drop_rate": 2.0}}}))
    result = run_cli("experiment", "plan", str(path))
    assert (
        result.returncode == 2 and "[broken over" in result.stderr and "drop_rate: 2.0 is not allowed" in result.stderr
    )


# --- running, interrupting, resuming -------------------------------------------------------------------


def _simulate_kill_after(run_dir: Path, step: int) -> None:
    """What a kill right after the checkpoint of `step` leaves: no summary, no later checkpoints, links to that one."""
    (run_dir / "summary.json").unlink()
    (run_dir / "evaluation.json").unlink()
    for checkpoint in list_checkpoints(run_dir):
        if int(checkpoint.name.rsplit("-", 1)[1]) > step:
            shutil.rmtree(checkpoint)
    kept = list_checkpoints(run_dir)[-1].name
    point(run_dir, "latest", kept)
    point(run_dir, "best", kept)


def test_run_skips_finished_runs_and_resumes_an_interrupted_one_under_a_launcher(tmp_path, brown_dataset):
    _baseline(tmp_path / "base", brown_dataset)
    experiment_file = tmp_path / "exp.json"
    # only the variant to be interrupted checkpoints along the way (checkpoints of 3M parameters are the slow part)
    experiment_file.write_text(
        json.dumps(
            {
                "baseline": "base",
                "seeds": [1, 2],
                "evaluation": {"batches": 20},
                "interventions": {"lr": {"learning_rate": 0.01, "checkpoint_interval": 5}},
            }
        )
    )
    experiment = load_experiment(experiment_file)
    first = run_experiment(experiment, echo=lambda line: None)
    assert [(o["variant"], o["seed"], o["state_before"]) for o in first] == [
        ("baseline", 1, NEW),
        ("lr", 1, NEW),
        ("baseline", 2, NEW),
        ("lr", 2, NEW),
    ]
    runs = {(o["variant"], o["seed"]): Path(o["run_dir"]) for o in first}
    for run_dir in runs.values():
        assert run_state(run_dir) == FINISHED
        assert {"loss-chart.png", "grad-norm-chart.png", "learning-rate-chart.png", "evaluation.json"} <= {
            p.name for p in run_dir.iterdir()
        }

    interrupted = runs["lr", 2]
    uninterrupted = read_metrics(interrupted)
    loss_before = json.loads((interrupted / "evaluation.json").read_text())["loss"]
    _simulate_kill_after(interrupted, step=5)
    assert run_state(interrupted) == INTERRUPTED
    finished_summaries = {
        key: (run_dir / "summary.json").stat().st_mtime_ns for key, run_dir in runs.items() if run_dir != interrupted
    }

    result = run_cli("experiment", "run", str(experiment_file), "--launcher", sys.executable, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert f"lr seed 2 ({interrupted}): resuming after step 5" in result.stdout
    assert result.stdout.count("finished earlier, not retrained") == 3
    losses = re.findall(r": test loss (\d+\.\d+) \(perplexity ([\d,.]+)\)", result.stdout)
    assert len(losses) == len(runs) and all(
        float(ppl.replace(",", "")) == pytest.approx(math.exp(float(loss)), rel=1e-3) for loss, ppl in losses
    )
    assert {key: (runs[key] / "summary.json").stat().st_mtime_ns for key in finished_summaries} == finished_summaries

    resumed = read_metrics(interrupted)
    assert [r["step"] for r in resumed] == list(range(12))
    # steps up to the checkpoint are the original records (not retrained), the rest continue the same trajectory
    assert resumed[:6] == uninterrupted[:6]
    assert [r["loss"] for r in resumed[6:]] == pytest.approx([r["loss"] for r in uninterrupted[6:]], rel=1e-6)
    assert "Resuming from" in (interrupted / "train.log").read_text()
    assert json.loads((interrupted / "evaluation.json").read_text())["loss"] == pytest.approx(loss_before, rel=1e-6)

    again = run_experiment(experiment, echo=lambda line: None)
    assert [o["state_before"] for o in again] == [FINISHED] * 4


def test_plan_refuses_to_change_a_run_that_has_trained_and_a_failing_launcher_is_reported(tmp_path, brown_dataset):
    _baseline(tmp_path / "base", brown_dataset, {"min_train_tokens": 4 * 32 * 2})
    experiment_file = tmp_path / "exp.json"
    experiment_file.write_text(json.dumps({"baseline": "base", "seeds": [1], "evaluation": {"batches": 5}}))
    run_experiment(load_experiment(experiment_file), echo=lambda line: None)

    experiment_file.write_text(
        json.dumps({"baseline": "base", "seeds": [1], "interventions": {"lr": {"learning_rate": 0.01}}})
    )
    planned = run_cli("experiment", "plan", str(experiment_file))
    assert planned.returncode == 0 and "lr" in planned.stdout  # a new variant beside a finished run is fine

    (tmp_path / "base" / "train.json").write_text(
        json.dumps({**json.loads((tmp_path / "base" / "train.json").read_text()), "weight_decay": 0.0})
    )
    refused = run_cli("experiment", "plan", str(experiment_file))
    assert refused.returncode == 2 and "already trained with other values of weight_decay" in refused.stderr

    with pytest.raises(UserError, match="failed with exit code 1"):
        from gptlab.experiments.runner import train_planned

        train_planned(
            plan_runs(load_experiment(experiment_file))[1],
            resume=False,
            launcher="false",
            datasets_dir=None,
            show_progress=False,
        )


@pytest.mark.parametrize("launcher", [None, sys.executable], ids=["in-process", "launcher"])
def test_sigterm_stops_the_experiment_after_a_checkpoint_and_run_resumes_it(tmp_path, brown_dataset, launcher):
    import os
    import signal
    import subprocess
    import time

    # long enough (60 steps) to be caught mid-run, with checkpoints so the restart need not begin at step 0;
    # a second, 6-step variant shows that nothing after the stopped run is started
    _baseline(tmp_path / "base", brown_dataset, {"min_train_tokens": 4 * 32 * 60, "checkpoint_interval": 10})
    experiment_file = tmp_path / "exp.json"
    experiment_file.write_text(
        json.dumps(
            {
                "baseline": "base",
                "seeds": [1],
                "evaluation": {"batches": 5},
                "interventions": {"short": {"min_train_tokens": 4 * 32 * 6}},
            }
        )
    )
    first_run, second_run = (tmp_path / "exp-runs" / variant / "seed-1" for variant in ("baseline", "short"))
    command = [sys.executable, "-m", "gptlab", "experiment", "run", str(experiment_file), "--no-progress"]
    process = subprocess.Popen(
        command + (["--launcher", launcher] if launcher else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while (
        not (first_run / "metrics.jsonl").is_file() and process.poll() is None and time.monotonic() < deadline
    ):  # after 3 steps
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)

    assert process.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert f"{first_run}: stopped before its last step by SIGTERM" in stderr and "Traceback" not in stderr
    assert run_state(first_run) == INTERRUPTED and not (second_run / "checkpoints").exists()
    stopped_at = max(r["step"] for r in read_metrics(first_run))

    resumed = run_cli("experiment", "run", str(experiment_file), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"({first_run}): resuming after step" in resumed.stdout
    assert run_state(first_run) == FINISHED and run_state(second_run) == FINISHED
    assert [r["step"] for r in read_metrics(first_run)] == list(range(60)) and stopped_at < 59
