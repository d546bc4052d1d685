"""Resuming exactly, surviving kills and preemption, and never losing a good checkpoint."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import read_metrics, run_cli, start_cli
from safetensors.torch import load_file

from gptlab.errors import UserError
from gptlab.runtime.checkpoint import find_resumable_checkpoint, list_checkpoints
from gptlab.train.loop import train_run


def final_weights(run_dir):
    return load_file(run_dir / "checkpoints" / "latest" / "model.safetensors")


def cut_back_to(run_dir, last_step):
    """Delete the checkpoints after `last_step` and the summary, as a crash after that checkpoint would leave the run."""
    for path in list_checkpoints(run_dir):
        if int(path.name.rsplit("-", 1)[1]) > last_step:
            shutil.rmtree(path)
    keep = [p for p in list_checkpoints(run_dir)][-1].name
    (run_dir / "checkpoints" / "latest").unlink()
    os.symlink(keep, run_dir / "checkpoints" / "latest")
    (run_dir / "summary.json").unlink(missing_ok=True)
    return keep


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resumed_run_ends_bit_identical_to_an_uninterrupted_one(make_run, precision):
    train = {"min_train_tokens": 4 * 32 * 12, "checkpoint_interval": 5, "precision": precision}
    whole = make_run("whole", model={"drop_rate": 0.1}, train=train)
    train_run(whole, show_progress=False)
    split = whole.parent / "split"  # the same run's folder: a second identical training would only repeat it
    shutil.copytree(whole, split, symlinks=True)
    cut_back_to(split, 5)
    train_run(split, resume="latest", show_progress=False)
    assert [r["step"] for r in read_metrics(split)] == list(range(12))
    assert [r["loss"] for r in read_metrics(split)] == [r["loss"] for r in read_metrics(whole)]
    expected, resumed = final_weights(whole), final_weights(split)
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    a, b = (json.loads((run / "summary.json").read_text()) for run in (whole, split))
    assert (a["final_validation_loss"], a["skipped_steps"], a["tokens_seen"]) == (
        b["final_validation_loss"],
        b["skipped_steps"],
        b["tokens_seen"],
    )


def test_sigterm_finishes_the_step_checkpoints_and_resumes_to_the_same_result(make_run):
    train = {"min_train_tokens": 4 * 32 * 60, "checkpoint_interval": 1000, "log_interval": 1, "validation_batches": 1}
    whole = make_run("whole", model={"drop_rate": 0.1}, train=train)
    train_run(whole, show_progress=False)
    run = make_run("preempted", model={"drop_rate": 0.1}, train=train)
    process = start_cli("train", str(run), "--no-progress")
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(read_metrics(run)) >= 10):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert "Stopped by SIGTERM after step" in stdout and f"Resume with: gptlab train {run} --resume latest" in stdout
    stopped_at = int(stdout.split("Stopped by SIGTERM after step ")[1].split(";")[0])
    assert 9 <= stopped_at < 59 and not (run / "summary.json").exists()
    assert find_resumable_checkpoint(run, "latest").name.endswith(f"-iteration-{stopped_at}")

    result = run_cli("train", str(run), "--resume", "latest", "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    expected, resumed = final_weights(whole), final_weights(run)
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_sigkill_at_any_instant_of_a_save_leaves_latest_loadable(make_run):
    """Checkpoint after every step (saving dominates), kill -9 at random instants, check, resume, repeat."""
    run = make_run(
        model={"emb_dim": 64, "n_layers": 3},
        train={
            "min_train_tokens": 4 * 32 * 2000,
            "checkpoint_interval": 1,
            "keep_checkpoints": 3,
            "validation_batches": 0,
        },
    )
    draw = random.Random(0)
    kills = 0
    resume = []
    while kills < 6:  # random instants: with a checkpoint every step, the kills land in writes and renames alike
        process = subprocess.Popen(
            [sys.executable, "-m", "gptlab", "train", str(run), "--no-progress", *resume],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        before = len(list_checkpoints(run))
        deadline = time.time() + 60
        while time.time() < deadline and len(list_checkpoints(run)) <= before:
            time.sleep(0.01)
        time.sleep(draw.uniform(0.0, 0.4))
        process.kill()
        process.wait()
        kills += 1
        checkpoint = find_resumable_checkpoint(run, "latest")  # verifies every file of it
        assert (checkpoint.path / "model.safetensors").is_file()
        resume = ["--resume", "latest"]
    # After the kills, resuming cleans the half-written staging folders and goes on.
    resumed_from = find_resumable_checkpoint(run, "latest").name
    process = start_cli("train", str(run), "--no-progress", "--resume", "latest")
    deadline = time.time() + 60
    while time.time() < deadline and os.readlink(run / "checkpoints" / "latest") == resumed_from:
        time.sleep(0.05)  # training (and its signal handler) is running once a new checkpoint appears
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-2000:]
    assert not [
        p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")
    ]  # no staging folders or pointer links
    assert len(list_checkpoints(run)) <= 3 + 1  # keep_checkpoints newest, plus best if older


def test_keep_checkpoints_keeps_the_newest_and_best(make_run):
    run = make_run(
        train={
            "min_train_tokens": 4 * 32 * 12,
            "checkpoint_interval": 2,
            "keep_checkpoints": 2,
            "best_by": "train",
            "learning_rate": 0.05,
        }
    )
    train_run(run, show_progress=False)
    remaining = [p.name.rsplit("-", 1)[1] for p in list_checkpoints(run)]
    best = os.readlink(run / "checkpoints" / "best").rsplit("-", 1)[1]
    assert remaining[-2:] == ["10", "11"]
    assert best in remaining and len(remaining) == (2 if best in ("10", "11") else 3)


@pytest.mark.parametrize("broken_file", ["model.safetensors", "optimizer.pt", "training_state.pt"])
def test_a_corrupt_checkpoint_is_named_and_the_newest_good_one_offered(make_run, broken_file):
    run = make_run(train={"min_train_tokens": 4 * 32 * 6, "checkpoint_interval": 2})
    train_run(run, show_progress=False)
    latest = (run / "checkpoints" / "latest").resolve()
    data = (latest / broken_file).read_bytes()
    (latest / broken_file).write_bytes(data[: len(data) // 2])
    (run / "summary.json").unlink()
    result = run_cli("train", str(run), "--resume", "latest", "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{latest / broken_file}" in result.stderr
    previous = list_checkpoints(run)[-2].name
    assert f"the newest good checkpoint is {previous}: resume with --resume {previous}" in result.stderr
    result = run_cli("train", str(run), "--resume", previous, "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]


def test_resume_refuses_a_changed_model_and_unsafe_train_keys_but_reports_safe_ones(make_run):
    run = make_run(train={"min_train_tokens": 4 * 32 * 6, "checkpoint_interval": 2})
    train_run(run, show_progress=False)
    cut_back_to(run, 2)
    config = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**config, "n_layers": 3, "qkv_bias": True}))
    with pytest.raises(UserError, match="differs from checkpoint .* in n_layers, qkv_bias"):
        train_run(run, resume="latest", show_progress=False)
    (run / "model.json").write_text(json.dumps(config))
    train = json.loads((run / "train.json").read_text())
    (run / "train.json").write_text(json.dumps({**train, "learning_rate": 0.1}))
    with pytest.raises(UserError, match="in learning_rate, which would change what is trained"):
        train_run(run, resume="latest", show_progress=False)
    (run / "train.json").write_text(json.dumps({**train, "checkpoint_interval": 3, "validation_batches": 1}))
    train_run(run, resume="latest", show_progress=False)
    assert (
        "Resuming from" in (run / "train.log").read_text()
        and "changed: checkpoint_interval, validation_batches" in (run / "train.log").read_text()
    )


def test_a_checkpoint_of_an_older_gptlab_resumes_and_its_totals_carry_on(make_run):
    """Before the fast-path switches, training_state.pt's totals were a dict without timed_steps and
    compile_seconds; such a checkpoint must still resume, and the counts it holds must carry on."""
    run = make_run(train={"min_train_tokens": 4 * 32 * 6, "checkpoint_interval": 2})
    train_run(run, show_progress=False)
    kept = cut_back_to(run, 2)
    path = run / "checkpoints" / kept / "training_state.pt"
    state = torch.load(path, weights_only=True)
    state["totals"] = {
        "skipped_steps": 7,
        "consecutive_skipped": 0,
        "clipped_steps": 0,
        "train_seconds": 1000.0,
        "best_metric": state["totals"]["best_metric"],
        "peak_learning_rate": 0.003,
        "last_train_loss": 5.0,
        "last_validation_loss": None,
    }
    del state["interval"]  # older still: no interval statistics either
    torch.save(state, path)
    (
        path.parent / "checksums.sha256"
    ).unlink()  # an older gptlab wrote no checksums (a changed file with them is refused)
    summary = train_run(run, resume="latest", show_progress=False)
    assert summary["skipped_steps"] == 7 and summary["training_seconds"] > 1000.0
    assert summary["steps"] == 6 and len(list_checkpoints(run)) == 4
