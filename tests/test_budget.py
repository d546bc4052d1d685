"""`gptlab compare --budget`: runs at equal time, money and tokens, reach times and the learning-curve projection.

Run directories are written here (summary.json, evaluation.json and metrics.jsonl as training writes them, with
validation curves whose answers are known exactly), so these tests train nothing; the last test trains two tiny
real runs to check the loop records what the budget reads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, run_cli
from scipy import stats as scipy_stats
from scipy.optimize import curve_fit

from gptlab.errors import UserError
from gptlab.experiments.budget import (
    budget_comparison,
    draw_budget_charts,
    first_reach,
    fit_learning_curve,
    parse_prices,
    render_with_budget,
    value_at,
)
from gptlab.experiments.compare import compare_runs

TOKENS_PER_STEP = 100


def fake_run(
    path: Path,
    points: list[tuple[float, float]],
    price: float | None = None,
    seed: int = 1,
    train: dict | None = None,
    steps: int = 10,
    validate: bool = True,
) -> Path:
    """A finished run: `steps` steps of TOKENS_PER_STEP tokens, `points` = (train_seconds, validation_loss) spread over
    the steps (the last on the last step), summary.json and an evaluation.json every fake run shares the tokens of."""
    path.mkdir(parents=True)
    at_step = {round((index + 1) * steps / len(points)) - 1: point for index, point in enumerate(points)}
    records, seconds = [], 0.0
    for step in range(steps):
        if step in at_step:
            seconds = at_step[step][0]
        record = {"step": step, "loss": 4.0, "tokens_seen": (step + 1) * TOKENS_PER_STEP, "train_seconds": seconds}
        if validate and step in at_step:
            record["validation_loss"] = at_step[step][1]
        records.append(record)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    total = points[-1][0]
    config = {
        "model": TINY_MODEL,
        "train": {"dataset": "data", "random_seed": seed, "cost_per_hour": price, **(train or {})},
    }
    summary = {
        "training_seconds": total,
        "tokens_seen": steps * TOKENS_PER_STEP,
        "steps": steps,
        "world_size": 1,
        "cost_per_hour": price,
        "cost": total / 3600 * price if price is not None else None,
        "compile_seconds": None,
        "validation_seconds": 1.5,
        "config": config,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    evaluation = {
        "loss": points[-1][1] + 0.1,
        "tokens_sha256": "0" * 64,
        "tokenizer_fingerprint": "gpt2",
        "precision": "fp32",
        "checkpoint": f"20260101Z000000-iteration-{steps - 1}",
        "checkpoint_choice": "latest",
        "split": "validation",
        "start_token": 0,
        "batches": 2,
        "batch_size": 4,
        "context_length": 32,
        "dataset": "data",
        "tokens": 256,
    }
    (path / "evaluation.json").write_text(json.dumps(evaluation))
    return path


def line(intercept: float, slope: float, seconds: list[float]) -> list[tuple[float, float]]:
    return [(t, intercept + slope * t) for t in seconds]


@pytest.fixture
def crossing(tmp_path) -> dict[str, list[Path]]:
    """Baseline (3 seeds, $2/h): L = 5 - 0.02 t over 100 s, offsets -0.01, 0, +0.01 (final mean 3.0).
    fp32 ($0.90/h): L = 4 - 0.0075 t over 200 s: worse at 100 s (3.25), reaches 3.0 at 133.3 s, better per dollar.
    slow ($2/h): L = 5 - 0.001 t over 100 s: never reaches 3.0."""
    base_seconds = [10.0 * k for k in range(1, 11)]
    baseline = [
        fake_run(
            tmp_path / f"baseline-seed{seed}", [(t, y + offset) for t, y in line(5, -0.02, base_seconds)], 2.0, seed
        )
        for seed, offset in ((1, -0.01), (2, 0.0), (3, 0.01))
    ]
    fp32 = [
        fake_run(tmp_path / "fp32", line(4, -0.0075, [20.0 * k for k in range(1, 11)]), 0.9, 1, {"precision": "fp32"})
    ]
    slow = [fake_run(tmp_path / "slow", line(5, -0.001, base_seconds), 2.0, 1, {"learning_rate": 1e-5})]
    return {"baseline": baseline, "fp32": fp32, "slow": slow}


def _budget(runs: dict[str, list[Path]], kind: str, prices: dict[str, float] | None = None, allow_mixed: bool = False):
    comparison = compare_runs(
        [p for group in runs.values() for p in group], echo=lambda line: None, allow_mixed_checkpoints=allow_mixed
    )
    return comparison, budget_comparison(comparison, kind, prices)


def _rows(budget) -> dict[str, dict]:
    return {row["run"]: row for row in budget.rows}


def test_interpolation_and_reach_never_extrapolate():
    xs, ys = [10.0, 20.0, 40.0], [5.0, 4.0, 3.0]
    assert value_at(xs, ys, 30.0) == pytest.approx(3.5)
    assert value_at(xs, ys, 5.0) is None and value_at(xs, ys, 41.0) is None  # outside the points: no value
    assert first_reach(xs, ys, 3.5) == pytest.approx(30.0)
    assert first_reach(xs, ys, 2.9) is None
    assert first_reach(xs, ys, 6.0) == 10.0  # already below at its first point: reached there at the latest


def test_equal_time_on_two_crossing_lines(crossing):
    _, budget = _budget(crossing, "time")
    rows = _rows(budget)
    assert budget.budget == pytest.approx(100.0) and budget.target == pytest.approx(3.0)
    assert rows["baseline"]["loss_at_budget"] == pytest.approx(3.0)
    assert rows["fp32"]["loss_at_budget"] == pytest.approx(
        4 - 0.0075 * 100
    )  # read between its points at 80 s and 120 s
    assert rows["fp32"]["improvement_at_budget"] == pytest.approx(3.0 - 3.25)
    # fp32 is seed 1 with the baseline's data order, so it must reach baseline seed 1's final loss, 2.99
    reach = (4 - 2.99) / 0.0075
    assert rows["fp32"]["runs"][0]["reach_target"] == pytest.approx(2.99)
    assert rows["fp32"]["reach_seconds"] == pytest.approx(reach)
    assert rows["fp32"]["reach_cost"] == pytest.approx(reach / 3600 * 0.9)
    assert rows["fp32"]["reach_tokens"] == pytest.approx(reach / 20 * TOKENS_PER_STEP)  # 20 s per step
    assert rows["slow"]["reached"] == 0 and rows["slow"]["reach_seconds"] is None
    # each baseline seed reaches its own final loss at its end
    assert rows["baseline"]["reached"] == 3 and rows["baseline"]["reach_seconds"] == pytest.approx(100)
    text = render_with_budget(*_budget(crossing, "time"), "terminal")
    assert "not reached" in text and "time to baseline's loss" in text
    fp32_verdict = next(v for v in budget.verdicts if v.startswith("fp32:"))
    assert "per hour worse (-0.2500 nats" in fp32_verdict and "per dollar better" in fp32_verdict


def test_runs_that_cannot_pair_by_seed_must_reach_the_baselines_mean(crossing, tmp_path):
    """Another microbatch size reads the batches in another order: no pairing, so the target is the mean, 3.0."""
    other_order = fake_run(
        tmp_path / "bigbatch", line(4, -0.0075, [20.0 * k for k in range(1, 11)]), 0.9, 1, {"microbatch_size": 16}
    )
    _, budget = _budget({**crossing, "bigbatch": [other_order]}, "time", None, allow_mixed=True)
    row = _rows(budget)["bigbatch"]
    assert row["runs"][0]["reach_target"] == pytest.approx(3.0)
    assert row["reach_seconds"] == pytest.approx(1 / 0.0075)


def test_equal_money_reads_each_run_at_the_cheapest_runs_dollars(crossing):
    _, budget = _budget(crossing, "cost")
    rows = _rows(budget)
    cheapest = 200 / 3600 * 0.9  # fp32: 200 s at $0.90/h, below the baseline's 100 s at $2/h
    assert budget.budget == pytest.approx(cheapest) and budget.cheapest.endswith("fp32")
    baseline_seconds = cheapest * 3600 / 2.0  # 90 s of the baseline
    assert rows["baseline"]["loss_at_budget"] == pytest.approx(5 - 0.02 * baseline_seconds)
    assert rows["fp32"]["loss_at_budget"] == pytest.approx(2.5)
    assert rows["fp32"]["verdict_per_dollar"]["improvement"] == pytest.approx(5 - 0.02 * baseline_seconds - 2.5)
    # the baseline's seed SD is 0.01, so a single run 0.7 nats better per dollar (0.25 worse per hour) is beyond noise
    assert rows["fp32"]["verdict_per_dollar"]["noise"] == "better, beyond noise"
    assert rows["fp32"]["verdict_per_hour"]["noise"] == "worse, beyond noise"  # 3.25 at 100 s against 3.0


def test_equal_tokens_and_group_verdicts_match_the_main_tables_tests(tmp_path):
    """Same tokens, so each run at the budget is at its end; two seeded groups are judged by the paired t-test."""
    seconds = [10.0 * k for k in range(1, 11)]
    offsets = {1: 0.0, 2: 0.03, 3: -0.02}
    runs = {
        "baseline": [
            fake_run(tmp_path / f"b-seed{s}", line(5 + o, -0.02, seconds), 1.0, s) for s, o in offsets.items()
        ],
        "lr": [
            fake_run(tmp_path / f"lr-seed{s}", line(5 + o + d, -0.02, seconds), 1.0, s, {"learning_rate": 0.01})
            for (s, o), d in zip(offsets.items(), (-0.05, -0.06, -0.02))
        ],
    }
    _, budget = _budget(runs, "tokens")
    rows = _rows(budget)
    base = [3.0 + o for o in offsets.values()]
    ours = [3.0 + o + d for o, d in zip(offsets.values(), (-0.05, -0.06, -0.02))]
    assert rows["lr"]["loss_at_budget"] == pytest.approx(np.mean(ours))
    assert rows["lr"]["loss_at_budget_min"] == pytest.approx(min(ours))
    expected_p = scipy_stats.ttest_rel(base, ours).pvalue
    verdict = rows["lr"]["verdict_per_hour"]
    assert verdict["test"] == "paired" and verdict["p"] == pytest.approx(expected_p, rel=1e-6)
    assert verdict["noise"] == ("better, beyond noise" if expected_p < 0.05 else "within noise")


def test_learning_curve_recovers_its_parameters_as_scipy_does_and_the_interval_holds_the_truth():
    a, b, c = 3.0, 20.0, 0.5
    t = np.linspace(50, 1000, 30)
    exact = fit_learning_curve(t, a + b * t**-c)
    assert (exact.a, exact.b, exact.c) == pytest.approx((a, b, c), rel=1e-6)

    noisy_losses = a + b * t**-c + np.random.default_rng(0).normal(0, 0.003, t.size)
    fit = fit_learning_curve(t, noisy_losses)
    popt, pcov = curve_fit(lambda x, a, b, c: a + b * x**-c, t, noisy_losses, p0=(2.5, 10, 0.3), maxfev=20000)
    assert (fit.a, fit.b, fit.c) == pytest.approx(tuple(popt), rel=1e-5)
    far = 3000.0
    gradient = np.array([1.0, far ** -popt[2], -popt[1] * far ** -popt[2] * math.log(far)])
    half = scipy_stats.t.ppf(0.975, t.size - 3) * math.sqrt(gradient @ pcov @ gradient)
    low, high = fit.interval(far)
    assert (low, high) == pytest.approx((fit(far) - half, fit(far) + half), rel=1e-4)
    assert low < a + b * far**-c < high  # the projection's interval holds the true curve
    assert high - low < 0.05


def test_the_table_starts_with_the_baseline_then_by_loss_at_the_budget(crossing):
    _, budget = _budget(crossing, "time")
    assert [row["run"] for row in budget.rows] == ["baseline", "fp32", "slow"]
    assert any("No projection" in note and "power law" in note for note in budget.notes)  # fp32 went further; lines


def test_a_curve_that_is_no_power_law_or_too_short_gets_no_fit():
    assert fit_learning_curve([1.0, 2.0, 3.0], [3.0, 2.0, 1.5]) is None  # three points: no interval
    assert fit_learning_curve(np.linspace(1, 10, 10), np.linspace(5, 3, 10)) is None  # a straight line: c at its end


def test_a_longer_run_gets_the_baselines_projected_loss_apart_from_measured_numbers(tmp_path):
    a, b, c = 3.0, 20.0, 0.5
    base_t = np.linspace(50, 1000, 20)
    long_t = np.linspace(100, 3000, 20)
    runs = {
        "baseline": [fake_run(tmp_path / "baseline", [(t, a + b * t**-c) for t in base_t], 1.0, steps=20)],
        "fp32": [
            fake_run(tmp_path / "fp32", [(t, a + 0.9 * b * t**-c) for t in long_t], 1.0, 1, {"precision": "fp32"}, 20)
        ],
    }
    comparison, budget = _budget(runs, "time")
    projection = _rows(budget)["fp32"]["projection"]
    assert projection["projection"] is True and projection["budget"] == pytest.approx(3000)
    assert projection["baseline_loss"] == pytest.approx(a + b * 3000**-c, rel=1e-6)
    assert projection["measured_loss"] == pytest.approx(a + 0.9 * b * 3000**-c)
    assert _rows(budget)["baseline"]["projection"] is None
    data = json.loads(render_with_budget(comparison, budget, "json"))
    assert data["budget"]["learning_curve"]["projection"] is True
    text = render_with_budget(comparison, budget, "terminal")
    assert "PROJECTED" in text and "not measured" in text
    # measured columns hold measured numbers only: fp32 at the baseline's 1000 s, read from its own curve
    assert _rows(budget)["fp32"]["loss_at_budget"] == pytest.approx(
        float(np.interp(1000, long_t, a + 0.9 * b * long_t**-c))
    )


def test_a_run_without_validation_points_is_named_and_skipped(crossing, tmp_path):
    blind = fake_run(
        tmp_path / "blind",
        line(5, -0.02, [10.0 * k for k in range(1, 11)]),
        2.0,
        1,
        {"validation_batches": 0},
        validate=False,
    )
    _, budget = _budget({**crossing, "blind": [blind]}, "time")
    assert any(str(blind) in note and "no validation points" in note and "skipped" in note for note in budget.notes)
    assert _rows(budget)["blind"]["seeds_with_curve"] == 0 and _rows(budget)["blind"]["loss_at_budget"] is None
    assert _rows(budget)["fp32"]["loss_at_budget"] == pytest.approx(3.25)  # the others as before


def test_prices_are_parsed_and_bad_ones_refused():
    assert parse_prices(["runs/a=2.49", "fp32=0"]) == {"runs/a": 2.49, "fp32": 0.0}
    for bad in ("runs/a", "runs/a=cheap", "runs/a=-1", "runs/a=nan", "=3"):
        with pytest.raises(UserError):
            parse_prices([bad])


def test_charts_overlay_hours_and_dollars(crossing, tmp_path):
    _, budget = _budget(crossing, "cost")
    (path,) = draw_budget_charts(budget, tmp_path / "charts", "svg")
    svg = path.read_text()
    assert path.name == "loss-by-budget.svg" and "<svg" in svg


def _cli_json(*args: str) -> dict:
    result = run_cli("compare", *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_cli_budget_json_and_cost_per_hour(crossing, tmp_path):
    runs = [str(p) for group in crossing.values() for p in group]
    data = _cli_json(*runs, "--budget", "time")
    rows = {row["run"]: row for row in data["budget"]["rows"]}
    assert data["budget"]["kind"] == "time" and data["budget"]["budget"] == pytest.approx(100.0)
    assert [run["loss_at_budget"] for run in rows["baseline"]["runs"]] == pytest.approx([2.99, 3.0, 3.01])
    assert rows["fp32"]["runs"][0]["loss_at_budget"] == pytest.approx(3.25)
    assert rows["slow"]["reach_seconds"] is None and rows["fp32"]["reach_seconds"] == pytest.approx(134.667, rel=1e-4)

    # fp32 really cost $3/h: now the baseline is the cheapest in dollars too, and fp32 is worse per dollar
    data = _cli_json(*runs, "--budget", "cost", "--cost-per-hour", f"{crossing['fp32'][0]}=3")
    rows = {row["run"]: row for row in data["budget"]["rows"]}
    assert rows["fp32"]["cost_per_hour"] == 3.0 and data["budget"]["budget"] == pytest.approx(100 / 3600 * 2)
    assert rows["fp32"]["verdict_per_dollar"]["improvement"] < 0
    data = _cli_json(*runs, "--budget", "cost", "--cost-per-hour", "baseline=0.5")  # a group label sets every seed
    rows = {row["run"]: row for row in data["budget"]["rows"]}
    assert [run["cost_per_hour"] for run in rows["baseline"]["runs"]] == [0.5, 0.5, 0.5]
    assert rows["slow"]["cost_per_hour"] == 2.0

    charts = tmp_path / "charts"
    result = run_cli("compare", *runs, "--budget", "time", "--charts", str(charts))
    assert result.returncode == 0, result.stderr
    assert "Equal training time" in result.stdout and (charts / "loss-by-budget.png").is_file()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--budget", "cost", "--cost-per-hour", "fp32=lots"], "PRICE must be a finite number"),
        (["--budget", "time", "--cost-per-hour", "nosuchrun=2"], "neither a run compared nor a group label"),
        (["--cost-per-hour", "fp32=2"], "only with --budget"),
    ],
)
def test_cli_bad_price_is_one_line_and_exit_2(crossing, args, words):
    result = run_cli("compare", *[str(p) for group in crossing.values() for p in group], *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and words in result.stderr and "Traceback" not in result.stderr


def test_budget_cost_without_prices_says_how_to_give_them(tmp_path):
    seconds = [10.0 * k for k in range(1, 11)]
    runs = [
        fake_run(tmp_path / "a", line(5, -0.02, seconds)),
        fake_run(tmp_path / "b", line(5, -0.01, seconds), train={"learning_rate": 1}),
    ]
    result = run_cli("compare", *map(str, runs), "--budget", "cost")
    assert result.returncode == 2 and "--cost-per-hour RUN=PRICE" in result.stderr
    result = run_cli(
        "compare",
        *map(str, runs),
        "--budget",
        "cost",
        "--cost-per-hour",
        f"{runs[0]}=1",
        "--cost-per-hour",
        f"{runs[1]}=2",
    )
    assert result.returncode == 0, result.stderr


def test_report_has_the_budget_section_and_chart(crossing, tmp_path):
    from gptlab.experiments.report import write_report

    comparison, budget = _budget(crossing, "time")
    page = write_report(comparison, tmp_path / "report.html", "budget", budget).read_text()
    assert '<table id="budget">' in page and "Was it worth it: equal training time" in page
    assert 'alt="validation loss against time and money"' in page and "not reached" in page
    assert '<table id="budget">' not in write_report(comparison, tmp_path / "plain.html").read_text()


@pytest.mark.slow
def test_training_records_what_the_budget_reads(make_run):
    """A tiny real run: validation time kept apart in summary.json, and every validation point carries the timed
    training seconds so far, the last one the run's whole training time."""
    from gptlab.config import EvaluationSettings
    from gptlab.experiments.compare import evaluate_and_save
    from gptlab.train.loop import train_run

    runs = [
        make_run("a", train={"validation_interval": 4}),
        make_run("b", train={"validation_interval": 4, "learning_rate": 0.03}),
    ]
    for run in runs:
        summary = train_run(run, show_progress=False)
        evaluate_and_save(run, EvaluationSettings(batches=2))
        assert summary["validation_seconds"] > 0 and summary["training_seconds"] > 0
        points = [
            r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "validation_loss" in r
        ]
        assert [p["step"] for p in points] == [0, 4, 8, 11]
        assert all(a["train_seconds"] < b["train_seconds"] for a, b in zip(points, points[1:]))
        assert points[-1]["train_seconds"] == pytest.approx(summary["training_seconds"], abs=1e-3)
    comparison, budget = _budget({"a": [runs[0]], "b": [runs[1]]}, "tokens")
    for row in budget.rows:  # equal tokens: each run is read at its last validation point
        assert row["loss_at_budget"] == pytest.approx(row["final_validation_loss"])
        assert row["validation_seconds"] > 0


def test_python_api_compare_with_a_budget(crossing):
    import gptlab

    runs = [p for group in crossing.values() for p in group]
    data = gptlab.compare(runs, budget="cost", cost_per_hour={"fp32": 3.0})
    rows = {row["run"]: row for row in data["budget"]["rows"]}
    assert data["rows"] and rows["fp32"]["cost_per_hour"] == 3.0
    assert data["budget"]["budget"] == pytest.approx(100 / 3600 * 2)
    assert "Equal money" in gptlab.compare(runs, budget="cost", output_format="markdown")
    with pytest.raises(UserError, match="cost_per_hour: only with --budget"):
        gptlab.compare(runs, cost_per_hour={"fp32": 3.0})


def test_budget_compares_runs_of_any_length_without_a_flag_and_notes_the_lengths(crossing, tmp_path):
    longer = fake_run(
        tmp_path / "long", line(5, -0.02, [10.0 * k for k in range(1, 21)]), 2.0, 1, {"learning_rate": 0.01}, steps=20
    )
    runs = [p for group in crossing.values() for p in group] + [longer]
    with pytest.raises(UserError, match="trained for different lengths"):
        compare_runs(runs, echo=lambda line: None)
    comparison = compare_runs(runs, echo=lambda line: None, budget=True)
    budget = budget_comparison(comparison, "tokens", None)
    assert _rows(budget)["long"]["loss_at_budget"] == pytest.approx(5 - 0.02 * 100)  # read at the others' 1,000 tokens
    [note] = [note for note in comparison.notes if note.startswith("Runs of different lengths")]
    assert f"{longer}" in note and "at its own end" in note and "equal budget" in note
    assert not any("--allow-mixed-checkpoints" in note for note in comparison.notes)


def test_a_curve_that_ends_before_the_budget_says_after_last_point(crossing):
    """The baseline's last validation came before its last step: at the budget (its own end) it has no point."""
    from gptlab.experiments.budget import budget_cells

    for run_dir in crossing["baseline"]:
        records = [json.loads(text) for text in (run_dir / "metrics.jsonl").read_text().splitlines()]
        records[-1].pop("validation_loss")
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _, budget = _budget(crossing, "tokens")
    row = _rows(budget)["baseline"]
    assert row["seeds_at_budget"] == 0 and row["budget_outside"] == ["after last point"]
    assert "after last point" in budget_cells(row) and "before first point" not in budget_cells(row)


def test_the_budget_table_fits_the_terminal_as_the_main_table_does(crossing):
    comparison, budget = _budget(crossing, "time")
    text = render_with_budget(comparison, budget, "terminal", width=120)
    assert max(len(line) for line in text.splitlines()) <= 120
    section = text[text.index("Equal training time") :]
    assert "fp32" in section and "baseline" in section
    wide = render_with_budget(comparison, budget, "terminal", width=10_000)
    assert max(len(line) for line in wide[wide.index("Equal training time") :].splitlines()) > 120  # it did wrap
