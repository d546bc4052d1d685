"""`gptlab compare`: groups by seed, noise labels, formats and refusals, on real tiny runs trained here."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_run
from PIL import Image
from scipy import stats as scipy_stats

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
    """Train (once per test session; reused by test_report, which may run in another pytest-xdist worker: the
    lock has the second wait for the first) and evaluate every run of RUNS under `root`."""
    done = root / "complete"
    runs = {name: [root / f"{name}-seed{seed}" for seed in seeds] for name, (_, seeds) in RUNS.items()}
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            for name, (overrides, seeds) in RUNS.items():
                for seed, run_dir in zip(seeds, runs[name]):
                    shutil.rmtree(run_dir, ignore_errors=True)
                    write_run(run_dir, dataset, train={**overrides, "random_seed": seed})
                    train_run(run_dir, show_progress=False)
                    evaluate_and_save(run_dir, EVALUATION)
            done.write_text("ok")
    return runs


def shared_temporary(tmp_path_factory) -> Path:
    """The session's temporary folder, shared by every pytest-xdist worker (each has its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture
def trained(tmp_path_factory, brown_dataset) -> dict[str, list[Path]]:
    return comparison_runs(shared_temporary(tmp_path_factory) / "comparison-runs", brown_dataset)


def _all(trained: dict[str, list[Path]]) -> list[str]:
    return [str(run_dir) for runs in trained.values() for run_dir in runs]


def _loss(run_dir: Path) -> float:
    return json.loads((run_dir / EVALUATION_FILE).read_text())["loss"]


def _holm(p_values: list[float]) -> list[float]:
    """Holm's adjusted p-values by their definition: max over the smaller ones of (m - rank) * p, capped at 1."""
    order = np.argsort(p_values)
    adjusted = np.minimum(
        1, np.maximum.accumulate([(len(p_values) - rank) * p_values[i] for rank, i in enumerate(order)])
    )
    result = [0.0] * len(p_values)
    for rank, i in enumerate(order):
        result[i] = float(adjusted[rank])
    return result


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

    # lr10x has the baseline's seeds and data order: the paired t-test on per-seed differences decides, Welch beside it
    faster = rows["lr10x"]
    base_losses = [_loss(d) for d in trained["baseline"]]
    faster_losses = [_loss(d) for d in trained["lr10x"]]
    paired = scipy_stats.ttest_rel(base_losses, faster_losses)
    assert (
        faster["noise"] == "better, beyond noise"
        and faster["decided_by"] == "paired"
        and faster["test"].startswith("paired t-test (decides)")
    )
    assert faster["p_value"] == pytest.approx(paired.pvalue, rel=1e-9)
    assert faster["improvement_ci"] == pytest.approx(list(paired.confidence_interval(0.95)), rel=1e-9)
    assert faster["p_welch"] == pytest.approx(
        scipy_stats.ttest_ind(base_losses, faster_losses, equal_var=False).pvalue, rel=1e-9
    )
    assert faster["improvement"] == pytest.approx(baseline["test_loss"] - statistics.fmean(faster_losses))
    assert faster["improvement"] > 0 and faster["changes"] == "learning_rate=0.03"
    assert faster["verdict"].startswith("better, beyond noise (paired t, Holm p=") and "Welch p=" in faster["verdict"]

    same = rows["ckpt5"]  # computes exactly what the baseline computes: every per-seed difference is 0
    assert (
        same["noise"] == "no noise estimate"
        and same["verdict"].startswith("no noise estimate: every seed gave exactly its baseline seed's result")
        and same["p_value"] is None
        and same["improvement"] == 0
    )
    assert same["changes"] == "checkpoint_interval=5"

    single = rows["lr20x"]  # a single run, judged by the single-run t-test and its distance from the baseline seeds
    assert single["seeds"] == 1 and single["noise"] == "better, beyond noise" and "baseline SDs" in single["test"]
    assert single["baseline_sds"] == pytest.approx(
        (baseline["test_loss"] - _loss(trained["lr20x"][0])) / baseline["sd"]
    )
    assert single["p_value"] == pytest.approx(
        scipy_stats.ttest_ind(base_losses, [_loss(trained["lr20x"][0])]).pvalue, rel=1e-9
    )
    assert single["improvement"] > 0 and single["decided_by"] == "single run"

    lone = rows["ckpt6"]  # a single run that computes what baseline seed 2 computed
    assert lone["seeds"] == 1 and lone["noise"] == "within noise" and "baseline SDs" in lone["test"]

    # one Holm family of the three testable interventions; every row carries what a reader signs off on
    tested = [rows[name] for name in ("lr10x", "lr20x", "ckpt6")]
    assert [row["p_holm"] for row in tested] == pytest.approx(_holm([row["p_value"] for row in tested]))
    for row in tested:
        assert {"improvement_ci", "cohens_d", "p_value", "p_holm", "verdict"} <= set(row)
        direction = "better" if row["improvement"] > 0 else "worse"
        assert row["noise"] == (f"{direction}, beyond noise" if row["p_holm"] < 0.05 else "within noise")
    assert any("Holm-adjusted p-values over the 3 interventions" in note for note in table["notes"])

    summary = json.loads((trained["lr10x"][0] / "summary.json").read_text())
    assert faster["tokens_seen"] == summary["tokens_seen"] and faster["skipped_steps"] == 0
    assert faster["training_seconds"] == pytest.approx(
        statistics.fmean(json.loads((d / "summary.json").read_text())["training_seconds"] for d in trained["lr10x"])
    )
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

    terminal = run_cli("compare", *runs, env={"COLUMNS": "400"}).stdout  # wide enough that no cell wraps
    for name in RUNS:
        assert name in terminal
    assert (
        "better, beyond noise (paired t, Holm p=" in terminal
        and "no noise estimate: every seed gave exactly" in terminal
        and re.search(r"^lr20x .*better, beyond noise \(single run, Holm p=[^,]+, \+[\d.]+ SD\)", terminal, re.M)
    )
    assert "improvement 95% CI" in terminal and "p (Holm)" in terminal


def test_terminal_table_fits_the_width_and_shows_perplexity_beside_the_loss(trained):
    runs = _all(trained)
    rows = _compare_json(*runs)["rows"]
    for row in rows:
        assert row["ppl"] == pytest.approx(math.exp(row["test_loss"]))

    narrow = run_cli("compare", *runs, env={"COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].split()[:4] == ["run", "test", "loss", "ppl"]
    for row in rows:  # each row's first line: its name, its loss and exp(loss) beside it
        first = next(line for line in lines if line.startswith(row["run"] + " "))
        assert first.split()[1:3] == [f"{row['test_loss']:.4f}", f"{math.exp(row['test_loss']):,.2f}"], first
    assert "Left out to fit 80 characters: " in narrow.stdout and "tokens_s" in narrow.stdout

    wide = run_cli("compare", *runs, env={"COLUMNS": "400"}).stdout
    assert "Left out" not in wide and all(header in wide.splitlines()[0] for header in ("sd", "tokens/s", "changes"))


def test_columns_choose_and_order_the_markdown_csv_and_terminal_tables(trained):
    runs = _all(trained)
    rows = {row["run"]: row for row in _compare_json(*runs)["rows"]}
    markdown = run_cli("compare", *runs, "--format", "markdown", "--columns", "verdict,run,test_loss,ppl").stdout
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert table[0] == "| verdict | run | test loss | ppl |" and len(table) == 2 + len(RUNS)
    for line in table[2:]:
        verdict, run, loss, ppl = [cell.strip() for cell in line.strip("|").split("|")]
        assert verdict == rows[run]["verdict"] and float(loss) == pytest.approx(rows[run]["test_loss"], abs=1e-4)
        assert float(ppl.replace(",", "")) == pytest.approx(math.exp(float(loss)), rel=1e-3)

    csv_text = run_cli("compare", *runs, "--format", "csv", "--columns", "run, ppl,test_loss").stdout
    reader = csv.DictReader(io.StringIO(csv_text))
    assert reader.fieldnames == ["run", "ppl", "test_loss"]
    for row in reader:
        assert float(row["ppl"]) == pytest.approx(math.exp(float(row["test_loss"])))

    terminal = run_cli("compare", *runs, "--columns", "run,improvement,ppl", env={"COLUMNS": "80"}).stdout
    assert terminal.splitlines()[0].split() == ["run", "improvement", "ppl"] and "Left out" not in terminal


@pytest.mark.parametrize(
    "arguments, words",
    [
        (
            ["--columns", "run,bogus"],
            "error: --columns bogus: not a column of --format terminal; choose from run, seeds, ",
        ),
        (
            ["--format", "csv", "--columns", "run,d"],
            "error: --columns d: not a column of --format csv; choose from run, ",
        ),
        (["--format", "json", "--columns", "run"], "error: --columns: only for --format terminal, markdown, csv"),
    ],
)
def test_unknown_columns_are_one_line_naming_the_allowed_ones(trained, arguments, words):
    result = run_cli("compare", *map(str, trained["baseline"]), *arguments)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(words) and len(result.stderr.splitlines()) == 1, result.stderr


def test_one_baseline_seed_says_noise_cannot_be_judged_and_how_many_seeds(trained):
    result = run_cli(
        "compare", str(trained["baseline"][0]), *map(str, trained["lr10x"]), "--baseline", str(trained["baseline"][0])
    )
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
    torn = lines[:5] + [
        json.dumps({**json.loads(lines[5]), "loss": None, "grad_norm": None}),
        lines[6][: len(lines[6]) // 2],
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(torn))  # a run killed mid-write, with a non-finite step
    drawn = draw_run_charts(run_dir)
    assert [path.name for path in drawn] == ["loss-chart.png", "grad-norm-chart.png", "learning-rate-chart.png"]
    for path in drawn:
        with Image.open(path) as image:
            assert image.size == (800, 450)
    (run_dir / "metrics.jsonl").write_text("")
    assert draw_run_charts(run_dir) == []


# --- runs that go wrong, seeds that change nothing, checkpoints that differ ------------------------------


def troubled_runs(root: Path, dataset: Path, seed_source: Path) -> dict[str, list[Path]]:
    """Real runs (once per session): one that diverges (learning rate 1e6: every step after the first is non-finite),
    one that stops itself on non-finite steps (2e6), and three seeds that start from one run's weights without dropout."""
    from gptlab.train.loop import TrainingStopped

    done = root / "complete"
    runs = {
        "diverged": [root / "diverged-seed1"],
        "stopped": [root / "stopped-seed1"],
        "seedblind": [root / f"seedblind-seed{seed}" for seed in (1, 2, 3)],
    }
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        train_run(
            write_run(runs["diverged"][0], dataset, train={"learning_rate": 1e6, "random_seed": 1}), show_progress=False
        )
        evaluate_and_save(runs["diverged"][0], EVALUATION)
        with pytest.raises(TrainingStopped):
            # another learning rate too: max_consecutive_skipped_steps alone is bookkeeping, which would put both in one group
            train_run(
                write_run(
                    runs["stopped"][0],
                    dataset,
                    train={"learning_rate": 2e6, "max_consecutive_skipped_steps": 2, "random_seed": 1},
                ),
                show_progress=False,
            )
        for seed, run_dir in zip((1, 2, 3), runs["seedblind"]):
            train_run(
                write_run(run_dir, dataset, train={"init_from": str(seed_source), "random_seed": seed}),
                show_progress=False,
            )
            evaluate_and_save(run_dir, EVALUATION)
        done.write_text("ok")
    return runs


@pytest.fixture
def troubled(tmp_path_factory, brown_dataset, trained) -> dict[str, list[Path]]:
    return troubled_runs(tmp_path_factory.getbasetemp() / "troubled-runs", brown_dataset, trained["baseline"][0])


def _strict_json(text: str) -> dict:
    def refuse(constant: str):
        raise AssertionError(f"{constant} in JSON output")

    return json.loads(text, parse_constant=refuse)


def test_diverged_and_stopped_runs_are_verdicts_of_their_own_listed_last(trained, troubled, tmp_path):
    runs = [
        *map(str, trained["baseline"]),
        *map(str, trained["lr10x"]),
        str(troubled["diverged"][0]),
        str(troubled["stopped"][0]),
    ]
    result = run_cli("compare", *runs, "--format", "json", "--charts", str(tmp_path / "charts"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    table = _strict_json(result.stdout)
    assert [row["run"] for row in table["rows"]][-2:] == ["diverged", "stopped"]
    rows = {row["run"]: row for row in table["rows"]}
    assert rows["diverged"]["noise"] == "diverged" and rows["diverged"]["verdict"] == "diverged at step 1"
    assert rows["stopped"]["noise"] == "diverged" and rows["stopped"]["verdict"] == "stopped: non-finite from step 1"
    for name in ("diverged", "stopped"):
        assert rows[name]["test_loss"] is None and rows[name]["p_value"] is None and rows[name]["p_holm"] is None
    # the diverged runs are not in the Holm family: lr10x is the only intervention tested, so its p is not adjusted
    assert rows["lr10x"]["p_holm"] == rows["lr10x"]["p_value"]
    with Image.open(tmp_path / "charts" / DIFFERENCE_CHART) as image:
        assert image.format == "PNG"
    terminal = run_cli("compare", *runs)
    assert (
        terminal.returncode == 0
        and "diverged at step 1" in terminal.stdout
        and "stopped: non-finite from step 1" in terminal.stdout
    )


def test_a_nan_seed_within_a_group_or_the_baseline_is_left_out_of_every_statistic(trained, troubled):
    from gptlab.experiments.compare import build_comparison, load_results
    from gptlab.experiments.tables import render

    diverged = troubled["diverged"][0]
    results = load_results([*trained["baseline"], *trained["lr10x"], diverged])
    labels = {
        **{d.resolve(): "baseline" for d in trained["baseline"]},
        **{d.resolve(): "mixed" for d in [*trained["lr10x"], diverged]},
    }
    comparison = build_comparison(results, labels=labels)
    mixed = next(row for row in comparison.rows if row["run"] == "mixed")
    assert mixed["noise"] == "diverged" and mixed["verdict"] == "diverged at step 1 (1 of 4 seeds)"
    assert mixed["test_loss"] == pytest.approx(statistics.fmean(_loss(d) for d in trained["lr10x"]))
    for output_format in ("terminal", "markdown", "csv"):
        assert "mixed" in render(comparison, output_format)
    _strict_json(render(comparison, "json"))

    labels = {
        **{d.resolve(): "baseline" for d in [*trained["baseline"], diverged]},
        **{d.resolve(): "lr10x" for d in trained["lr10x"]},
    }
    with_nan = build_comparison(results, labels=labels)
    without = build_comparison(load_results([*trained["baseline"], *trained["lr10x"]]))
    row_nan, row_clean = (next(r for r in c.rows if r["run"] == "lr10x") for c in (with_nan, without))
    assert row_nan["p_value"] == pytest.approx(row_clean["p_value"]) and row_nan["improvement_ci"] == pytest.approx(
        row_clean["improvement_ci"]
    )
    assert any("1 of 4 seeds did not give a finite test loss (diverged at step 1)" in note for note in with_nan.notes)


def test_seeds_that_change_nothing_give_no_noise_estimate_and_say_why(trained, troubled):
    losses = [_loss(d) for d in troubled["seedblind"]]
    assert (
        max(losses) - min(losses) < 1e-9 * losses[0]
    )  # the premise: init_from and no dropout leave the seed nothing to do
    table = _compare_json(
        *map(str, troubled["seedblind"]), *map(str, trained["lr10x"]), "--baseline", str(troubled["seedblind"][0])
    )
    row = next(row for row in table["rows"] if row["run"] == "lr10x")
    assert row["noise"] == "no noise estimate" and row["p_value"] is None and row["p_holm"] is None
    assert row["verdict"] == (
        "no noise estimate: the seeds did not change the result "
        "(the seed changes neither initialisation (init_from is set) nor dropout (drop_rate is 0) here)"
    )


def test_runs_evaluated_at_other_checkpoints_are_refused_unless_allowed(trained, tmp_path):
    early = tmp_path / "early-eval"
    shutil.copytree(trained["ckpt5"][0], early, symlinks=True)
    step5 = next(path.name for path in (early / "checkpoints").iterdir() if path.name.endswith("-iteration-5"))
    saved = run_cli("eval", str(early), "--save", "--checkpoint", step5, "--batches", "40")
    assert saved.returncode == 0, saved.stderr
    refused = run_cli("compare", *map(str, trained["baseline"]), str(early))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{early}: evaluated at checkpoint step 5, tokens trained 768;" in refused.stderr
    assert "checkpoint step 11, tokens trained 1,536 (differs in: checkpoint step, tokens trained)" in refused.stderr
    assert "--allow-mixed-checkpoints" in refused.stderr
    allowed = run_cli(
        "compare", *map(str, trained["baseline"]), str(early), "--allow-mixed-checkpoints", "--format", "json"
    )
    assert allowed.returncode == 0, allowed.stderr
    notes = json.loads(allowed.stdout)["notes"]
    assert any(
        note.startswith("Mixed checkpoints allowed (--allow-mixed-checkpoints): ") and str(early) in note
        for note in notes
    )


def test_seeds_command_plans_by_exact_power_given_or_measured(trained, tmp_path):
    result = run_cli("experiment", "seeds", "--sd", "1", "--effect", "2", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["seeds_per_arm"] == 6 and plan["power_by_seeds"]["5"] == pytest.approx(0.79, abs=0.01)
    holm = json.loads(
        run_cli("experiment", "seeds", "--sd", "1", "--effect", "2", "--interventions", "5", "--json").stdout
    )
    assert holm["seeds_per_arm"] > 6 and holm["alpha_per_intervention"] == pytest.approx(0.01)
    assert run_cli("experiment", "seeds", "--sd", "1", "--effect", "2").stdout.startswith("6 seeds per arm")
    missing = run_cli("experiment", "seeds", "--effect", "2")
    assert missing.returncode == 2 and "give --sd" in missing.stderr and "Traceback" not in missing.stderr


def test_seeds_command_measures_the_sd_of_an_experiments_baseline(trained, tmp_path):
    template = tmp_path / "template"
    template.mkdir()
    for name in ("model.json", "train.json"):  # the trained baseline's own files, without its seed
        data = json.loads((trained["baseline"][0] / name).read_text())
        data.pop("random_seed", None)
        (template / name).write_text(json.dumps(data))
    for seed, run_dir in zip(BASELINE_SEEDS, trained["baseline"]):  # already trained: `experiment run` would skip them
        shutil.copytree(run_dir, tmp_path / "runs" / "baseline" / f"seed-{seed}", symlinks=True)
    experiment = tmp_path / "measured.json"
    experiment.write_text(
        json.dumps(
            {
                "baseline": "template",
                "runs_dir": "runs",
                "seeds": list(BASELINE_SEEDS),
                "interventions": {"lr": {"learning_rate": 0.03}, "wd": {"weight_decay": 0.0}},
                "evaluation": {"checkpoint": "latest", "batches": 40},
            }
        )
    )  # as EVALUATION
    result = run_cli("experiment", "seeds", str(experiment), "--effect", "0.05", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    sd = statistics.stdev(_loss(d) for d in trained["baseline"])
    assert (
        plan["sd"] == pytest.approx(sd)
        and plan["interventions"] == 2
        and "measured over 3 baseline seeds" in plan["sd_source"]
    )
    from gptlab.experiments import stats

    assert plan["seeds_per_arm"] == stats.seeds_per_arm(0.05, sd, comparisons=2)
