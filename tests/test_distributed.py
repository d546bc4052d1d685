"""Several processes with real torchrun and the gloo backend on CPU."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import read_metrics
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(
    shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun not installed",
)
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # One thread per process: two processes share this machine's two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "gptlab", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def train_two_processes_and_one(two, one) -> tuple[list[dict], list[dict]]:
    """Train `two` with 2 torchrun processes and `one` in one process (one thread, as each rank has); their metrics."""
    result = torchrun(2, "train", str(two), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    result = subprocess.run(
        [sys.executable, "-m", "gptlab", "train", str(one), "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return read_metrics(two), read_metrics(one)


def final_weights(run_dir):
    return load_file(run_dir / "checkpoints" / "latest" / "model.safetensors")


def test_two_processes_match_one_process_with_accumulation(make_run):
    common = {"min_train_tokens": 4 * 32 * 2 * 8, "checkpoint_interval": 4, "validation_batches": 3}
    two = make_run("two", train={**common, "gradient_accumulation_steps": 1})
    one = make_run("one", train={**common, "gradient_accumulation_steps": 2})
    two_records, one_records = train_two_processes_and_one(two, one)
    assert [r["step"] for r in two_records] == [r["step"] for r in one_records] == list(range(8))
    for a, b in zip(two_records, one_records):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        if "validation_loss" in b:
            assert a["validation_loss"] == pytest.approx(b["validation_loss"], abs=1e-5)
    assert sum("validation_loss" in r for r in two_records) == 3  # steps 0, 4 and 7
    two_weights, one_weights = final_weights(two), final_weights(one)
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=0, atol=1e-5)

    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens_seen"] == 8 * 2 * 4 * 32
    log = (two / "train.log").read_text()
    assert log.count("Training complete in") == 1 and log.count("world size 2") == 1  # only rank 0 prints and writes


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_at_world_size_two_is_bit_identical(make_run, precision):
    train = {"min_train_tokens": 4 * 32 * 2 * 8, "checkpoint_interval": 3, "precision": precision}
    whole = make_run("whole", model={"drop_rate": 0.1}, train=train)
    assert torchrun(2, "train", str(whole), "--no-progress").returncode == 0
    # The run the machine died in: the same run's folder (copied: a second identical training would only
    # repeat the first), keeping only the checkpoints up to step 3, as if it died during step 4.
    split = whole.parent / "split"
    shutil.copytree(whole, split, symlinks=True)
    kept = None
    for path in sorted((split / "checkpoints").glob("*-iteration-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])):
        if int(path.name.rsplit("-", 1)[1]) > 3:
            shutil.rmtree(path)
        else:
            kept = path.name
    (split / "summary.json").unlink()
    result = torchrun(2, "train", str(split), "--no-progress", "--resume", kept)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stdout and "at step 4" in result.stdout
    assert [r["loss"] for r in read_metrics(split)] == [r["loss"] for r in read_metrics(whole)]
    expected, resumed = final_weights(whole), final_weights(split)
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
