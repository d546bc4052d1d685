"""A new user's seams (issue 28): a run finds its data from any directory, the Python API's notebook example
runs as a plain script, a finished run can be extended."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from conftest import TINY_MODEL, TINY_TRAIN

from gptlab.cli import main
from gptlab.rundir import DATASET_LOCATION, RESOLVED_CONFIG


def gptlab(capsys, *args) -> tuple[int, str, str]:
    argv = sys.argv
    sys.argv = ["gptlab", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_relative_dataset_is_found_from_another_directory(tmp_path, brown_dataset, monkeypatch, capsys):
    """Trained in A with `"dataset": "data"` (a folder of A's, not of the run's), evaluated from B by absolute
    path: `data` reads like a Hub id only when nothing local matches, and the recorded location matches."""
    first, elsewhere = tmp_path / "A", tmp_path / "B"
    shutil.copytree(brown_dataset, first / "data" / "brown")
    elsewhere.mkdir()
    run = first / "runs" / "r"
    run.mkdir(parents=True)
    (run / "model.json").write_text(json.dumps(TINY_MODEL))
    (run / "train.json").write_text(
        json.dumps({**TINY_TRAIN, "dataset": "data/brown", "min_train_tokens": 4 * 32 * 2, "validation_batches": 1})
    )
    monkeypatch.chdir(first)
    code, _, err = gptlab(capsys, "train", "runs/r", "--no-progress")
    assert code == 0, err
    recorded = json.loads((run / RESOLVED_CONFIG).read_text())[DATASET_LOCATION]
    assert recorded == str((first / "data" / "brown").resolve())

    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would fail here, not reach the network
    code, out, err = gptlab(capsys, "eval", run, "--batches", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["loss"] > 0

    # Moved away: the message names every place it looked before it tried the Hub
    shutil.move(first / "data", tmp_path / "moved")
    code, _, err = gptlab(capsys, "eval", run, "--batches", "1")
    assert code == 2 and str(run / "data" / "brown") in err and recorded in err and "Hub" in err, err


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_finished_run_is_extended_when_its_schedule_allows(make_run, capsys, schedule):
    step_tokens = 4 * 32
    run = make_run(train={"min_train_tokens": step_tokens * 2, "lr_schedule": schedule, "validation_batches": 1})
    code, _, err = gptlab(capsys, "train", run, "--no-progress")
    assert code == 0, err
    code, out, err = gptlab(
        capsys, "train", run, "--resume", "latest", "--set", f"min_train_tokens={step_tokens * 4}", "--no-progress"
    )
    if schedule == "constant":
        assert code == 0, err
        assert "Extending the run from 2 steps to 4 steps" in out
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert sorted(set(steps)) == [0, 1, 2, 3]
        assert json.loads((run / "summary.json").read_text())["steps"] == 4
    else:
        assert code == 2 and "the 'cosine' learning-rate schedule spans the run's length" in err, err
        assert '"init_from": "' in err and "Traceback" not in err
        assert json.loads((run / "summary.json").read_text())["steps"] == 2  # nothing trained
