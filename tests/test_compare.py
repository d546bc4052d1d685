"""`gptlab compare`: groups by seed, noise labels, formats and refusals, on real tiny runs trained here."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_run
from gptlab.config import EvaluationSettings
from gptlab.data.prepare import prepare_dataset
from gptlab.experiments.charts import DIFFERENCE_CHART, OVERLAY_CHART
from gptlab.experiments.compare import evaluate_and_save
from gptlab.rundir import EVALUATION as EVALUATION_FILE
from gptlab.train.charts import draw_run_charts
from gptlab.train.loop import train_run

EVALUATION = EvaluationSettings(checkpoint="latest", batches=40)
BASELINE_SEEDS = (1, 2, 3)
# name -> (train overrides, seeds). The learning rate over 12 steps moves the test loss by far more than the seeds do;
# checkpoint_interval changes nothing the model computes, so with the baseline's seeds it gives the baseline's losses.
RUNS = {
    "baseline": ({}, BASELINE_SEEDS),
    "lr10x": ({"learning_rate": 0.03}, BASELINE_SEEDS),
    "ckpt5": ({"checkpoint_interval": 5}, BASELINE_SEEDS),
    "lr20x": ({"learning_rate": 0.06}, (7,)),
    "ckpt6": ({"checkpoint_interval": 6}, (2,)),
}


def comparison_runs(root: Path, dataset: Path) -> dict[str, list[Path]]:
    """Train (once per test session; reused by test_report) and evaluate every run of RUNS under `root`."""
    done = root / "complete"
    runs = {name: [root / f"{name}-seed{seed}" for seed in seeds] for name, (_, seeds) in RUNS.items()}
    if not done.is_file():
        for name, (overrides, seeds) in RUNS.items():
            for seed, run_dir in zip(seeds, runs[name]):
                shutil.rmtree(run_dir, ignore_errors=True)
                write_run(run_dir, dataset, train={**overrides, "random_seed": seed})
                train_run(run_dir, show_progress=False)
                evaluate_and_save(run_dir, EVALUATION)
        done.write_text("ok")
    return runs


@pytest.fixture
def trained(tmp_path_factory, brown_dataset) -> dict[str, list[Path]]:
    return comparison_runs(tmp_path_factory.getbasetemp() / "comparison-runs", brown_dataset)


def _all(trained: dict[str, list[Path]]) -> list[str]:
    return [str(run_dir) for runs in trained.values() for run_dir in runs]


def _loss(run_dir: Path) -> float:
    return json.loads((run_dir / EVALUATION_FILE).read_text())["loss"]


def _compare_json(*args: str) -> dict:
    result = run_cli("compare", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_table_groups_seeds_and_labels_differences_beyond_and_within_noise(trained):
    table = _compare_json(*_all(trained))
    rows = {row["run"]: row for row in table["rows"]}
    assert table["baseline"] == "baseline" and set(rows) == set(RUNS)
    assert [row["test_loss"] for row in table["rows"]] == sorted(row["test_loss"] for row in table["rows"])

    baseline_losses = [_loss(run_dir) for run_dir in trained["baseline"]]
    baseline = rows["baseline"]
    assert baseline["seeds"] == 3 and baseline["noise"] == "baseline"
    assert baseline["test_loss"] == pytest.approx(statistics.fmean(baseline_losses))
    assert baseline["sd"] == pytest.approx(statistics.stdev(baseline_losses))
    assert (baseline["min"], baseline["max"]) == (min(baseline_losses), max(baseline_losses))
    assert baseline["ci95_low"] < baseline["test_loss"] < baseline["ci95_high"]

    faster = rows["lr10x"]
    assert faster["noise"] == "beyond noise" and faster["test"].startswith("Welch's t-test") and faster["p_value"] < 0.05
    assert faster["improvement"] == pytest.approx(baseline["test_loss"] - statistics.fmean(_loss(d) for d in trained["lr10x"]))
    assert faster["improvement"] > 0 and faster["changes"] == "learning_rate=0.03"

    same = rows["ckpt5"]
    assert same["noise"] == "within noise" and same["test"].startswith("Welch's t-test") and same["p_value"] > 0.5
    assert same["changes"] == "checkpoint_interval=5"

    single = rows["lr20x"]  # a single run, judged by its distance from the baseline seeds
    assert single["seeds"] == 1 and single["noise"] == "beyond noise" and "baseline SDs" in single["test"]
    assert single["baseline_sds"] == pytest.approx((_loss(trained["lr20x"][0]) - baseline["test_loss"]) / baseline["sd"])
    assert single["improvement"] > 0

    lone = rows["ckpt6"]  # a single run that computes what baseline seed 2 computed
    assert lone["seeds"] == 1 and lone["noise"] == "within noise" and "baseline SDs" in lone["test"]

    summary = json.loads((trained["lr10x"][0] / "summary.json").read_text())
    assert faster["tokens_seen"] == summary["tokens_seen"] and faster["skipped_steps"] == 0
    assert faster["training_seconds"] == pytest.approx(statistics.fmean(
        json.loads((d / "summary.json").read_text())["training_seconds"] for d in trained["lr10x"]))
    assert "Welch's t-test" in " ".join(table["notes"]) and table["evaluation"]["batches"] == 40


def test_markdown_csv_and_terminal_show_the_same_rows(trained):
    runs = _all(trained)
    markdown = run_cli("compare", *runs, "--format", "markdown").stdout
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert table_lines[0].startswith("| run | seeds | test loss |") and len(table_lines) == 2 + len(RUNS)

    rows = list(csv.DictReader(io.StringIO(run_cli("compare", *runs, "--format", "csv").stdout)))
    as_json = _compare_json(*runs)["rows"]
    assert [row["run"] for row in rows] == [row["run"] for row in as_json]
    assert [float(row["test_loss"]) for row in rows] == pytest.approx([row["test_loss"] for row in as_json])

    terminal = run_cli("compare", *runs).stdout
    for name in RUNS:
        assert name in terminal
    assert "beyond noise (Welch p=" in terminal and "within noise (Welch p=" in terminal and " SD)" in terminal


def test_one_baseline_seed_says_noise_cannot_be_judged_and_how_many_seeds(trained):
    result = run_cli("compare", str(trained["baseline"][0]), *map(str, trained["lr10x"]), "--baseline", str(trained["baseline"][0]))
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("lr10x"))
    assert "noise cannot be judged: 1 baseline seed;" in row and "seeds needed" in row
    assert "The baseline has 1 seed" in result.stdout
    table = _compare_json(str(trained["baseline"][0]), *map(str, trained["lr10x"]))
    assert table["rows"][0]["noise"] == "cannot judge" and table["rows"][0]["seeds_needed"] >= 3


def test_refuses_runs_evaluated_on_other_test_tokens(trained, tmp_path, brown_dataset):
    # the same corpus split with another seed: other documents in the test split
    other_split = tmp_path / "brown-split-99"
    prepare_dataset("brown", other_split, seed=99, show_progress=False)
    elsewhere = write_run(tmp_path / "other-data-seed1", other_split)
    train_run(elsewhere, show_progress=False)
    evaluate_and_save(elsewhere, EVALUATION)
    refused = run_cli("compare", *map(str, trained["baseline"]), str(elsewhere))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "not computed on the same tokens" in refused.stderr
    assert f"{elsewhere}: evaluated on other test tokens" in refused.stderr and "dataset split_seed" in refused.stderr

    # the same run's tokens read in another slice (fewer batches), saved with `gptlab eval --save`
    shorter = tmp_path / "short-eval"
    shutil.copytree(trained["baseline"][0], shorter, symlinks=True)
    saved = run_cli("eval", str(shorter), "--save", "--checkpoint", "latest", "--batches", "10")
    assert saved.returncode == 0, saved.stderr
    assert json.loads((shorter / EVALUATION_FILE).read_text())["batches"] == 10
    refused = run_cli("compare", *map(str, trained["baseline"]), str(shorter))
    assert refused.returncode == 2 and "differs in: batches" in refused.stderr and "--batches 40" in refused.stderr


def test_a_run_without_evaluation_is_evaluated_as_the_baseline_was(trained, tmp_path):
    copy = tmp_path / "unevaluated"
    shutil.copytree(trained["lr10x"][1], copy, symlinks=True)
    (copy / EVALUATION_FILE).unlink()
    result = run_cli("compare", *map(str, trained["baseline"]), str(copy), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert f"Evaluating {copy}" in result.stderr
    saved = json.loads((copy / EVALUATION_FILE).read_text())
    original = json.loads((trained["lr10x"][1] / EVALUATION_FILE).read_text())
    assert saved["batches"] == 40 and saved["tokens_sha256"] == original["tokens_sha256"]
    assert saved["loss"] == pytest.approx(original["loss"], rel=1e-9)


def test_comparison_and_run_charts_are_real_pngs(trained, tmp_path):
    from PIL import Image

    result = run_cli("compare", *_all(trained), "--charts", str(tmp_path / "charts"))
    assert result.returncode == 0, result.stderr
    for name, size in ((OVERLAY_CHART, (1200, 450)), (DIFFERENCE_CHART, (800, 450))):
        with Image.open(tmp_path / "charts" / name) as image:
            assert image.format == "PNG" and image.size == size
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn

    run_dir = tmp_path / "partial"
    shutil.copytree(trained["ckpt5"][0], run_dir, symlinks=True)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    torn = lines[:5] + [json.dumps({**json.loads(lines[5]), "loss": None, "grad_norm": None}), lines[6][: len(lines[6]) // 2]]
    (run_dir / "metrics.jsonl").write_text("\n".join(torn))  # a run killed mid-write, with a non-finite step
    drawn = draw_run_charts(run_dir)
    assert [path.name for path in drawn] == ["loss-chart.png", "grad-norm-chart.png", "learning-rate-chart.png"]
    for path in drawn:
        with Image.open(path) as image:
            assert image.size == (800, 450)
    (run_dir / "metrics.jsonl").write_text("")
    assert draw_run_charts(run_dir) == []
