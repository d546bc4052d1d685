"""The ift column in compare, the report and the model card: the mean IFT test loss with its own seed-noise
verdict (the test loss's rules), and the judge's mean where every run has one."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from scipy import stats as scipy_stats
from test_hellaswag import CHECKPOINT, _compare, fake_run

from gptlab.rundir import write_task_evaluation

BASE = [2.000, 2.020, 1.990]
BETTER = [1.900, 1.915, 1.880]
SAME = [2.005, 2.010, 2.000]
SHA = "ab" * 32


def add_ift(run_dir: Path, test_loss: float, judge_mean=None, **changes) -> Path:
    entry = {
        "task": "ift",
        "base_checkpoint": CHECKPOINT,
        "checkpoint": str(run_dir / "ift" / "model.safetensors"),
        "test_loss": test_loss,
        "base_test_loss": test_loss + 1,
        "val_losses": [test_loss + 0.1, test_loss + 0.05, test_loss + 0.07],
        "items": {"train": 935, "test": 110, "validation": 55},
        "file": "/data/instruction-data.json",
        "file_sha256": SHA,
        "settings": {"batch_size": 8, "learning_rate": 5e-5},
        "precision": "fp32",
        **({"judge": {"mean": judge_mean, "scored": 110, "failed": 0}} if judge_mean is not None else {}),
        **changes,
    }
    write_task_evaluation(run_dir, "ift", entry, "latest")
    return run_dir


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    made = []
    for seed, base, better, same in zip((1, 2, 3), BASE, BETTER, SAME):
        made.append(
            add_ift(fake_run(tmp_path, f"baseline-seed{seed}", seed, 0.003, 5.00 + seed / 100), base, 40 + seed)
        )
        made.append(
            add_ift(fake_run(tmp_path, f"lr-high-seed{seed}", seed, 0.006, 4.90 + seed / 100), better, 60 + seed)
        )
        made.append(add_ift(fake_run(tmp_path, f"lr-low-seed{seed}", seed, 0.002, 5.01 + seed / 90), same, 41))
    return made


def test_compare_shows_the_ift_loss_with_its_own_verdict_and_the_judges_mean(runs):
    table = _compare(*runs)
    rows = {row["run"]: row for row in table["rows"]}
    assert (
        rows["baseline"]["ift"] == pytest.approx(statistics.fmean(BASE))
        and rows["baseline"]["ift_verdict"] == "baseline"
    )
    better, same = rows["lr-high"], rows["lr-low"]
    p_better = scipy_stats.ttest_rel(BASE, BETTER).pvalue
    p_same = scipy_stats.ttest_rel(BASE, SAME).pvalue
    assert better["ift_p"] == pytest.approx(p_better, rel=1e-9) and same["ift_p"] == pytest.approx(p_same, rel=1e-9)
    assert better["ift_p_holm"] == pytest.approx(min(1, 2 * min(p_better, p_same)), rel=1e-9)
    assert better["ift_improvement"] == pytest.approx(statistics.fmean(BASE) - statistics.fmean(BETTER))
    assert better["ift_noise"] == "better, beyond noise" and same["ift_noise"] == "within noise"
    assert better["ift_judge"] == pytest.approx(62.0) and rows["baseline"]["ift_judge"] == pytest.approx(42.0)
    assert any(note.startswith("ift: the IFT test loss") and "110 test items" in note for note in table["notes"])

    terminal = _compare(*runs, output_format="terminal")
    line = next(text for text in terminal.splitlines() if text.startswith("lr-high"))
    assert f"{statistics.fmean(BETTER):.4f} (+0.1050, better, beyond noise (paired t" in line and "judge 62.0" in line
    csv = _compare(*runs, output_format="csv")
    assert "ift,ift_sd,ift_improvement,ift_p,ift_p_holm,ift_verdict,ift_judge" in csv.splitlines()[0]

    from gptlab.experiments.compare import build_comparison, load_results
    from gptlab.experiments.report import table_html

    html = table_html(build_comparison(load_results(runs)))
    assert "<th>ift</th>" in html and "(+0.1050, better, beyond noise" in html


def test_the_column_is_left_out_unless_every_run_has_the_same_recipe(runs, tmp_path):
    other = add_ift(fake_run(tmp_path, "lr-low-seed4", 4, 0.002, 5.03), 2.0, settings={"batch_size": 4})
    table = _compare(*runs, other)
    assert all(row["ift"] is None for row in table["rows"])
    [note] = [note for note in table["notes"] if note.startswith("ift: not compared")]
    assert f"{other} differs from" in note and "settings" in note
    bare = fake_run(tmp_path, "lr-low-seed5", 5, 0.002, 5.03)
    [note] = [note for note in _compare(*runs, bare)["notes"] if note.startswith("ift: not compared")]
    assert f"{bare} has none (`gptlab eval {bare} --task ift --save`)" in note
    plain = [fake_run(tmp_path / "plain", f"run-seed{seed}", seed, 0.003, 5 + seed / 100) for seed in (1, 2)]
    assert "ift" not in _compare(*plain, output_format="terminal").splitlines()[0].split()


def test_model_card_carries_the_ift_result_of_its_checkpoint(tmp_path):
    from test_ift import make_base_run

    from gptlab.export.hf import export_run
    from gptlab.runtime.checkpoint import find_checkpoint

    run = make_base_run(tmp_path / "run")
    name = find_checkpoint(run, "latest").name
    add_ift(run, 1.2345, judge_mean=55.5, base_checkpoint=name)
    export_run(run, tmp_path / "export")
    text = (tmp_path / "export" / "README.md").read_text()
    assert "IFT test loss 1.2345 (masked cross-entropy on 110 held-out items" in text
    assert "judge's mean score 55.5/100" in text
