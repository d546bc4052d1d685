"""Shared fixtures: a real prepared corpus, tiny run configurations, and a clean global state per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlab.data.prepare import prepare_dataset

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist's workers set COLUMNS=80 and LINES=24 for themselves; every `gptlab` a test starts would then draw
    # its tables 80 wide instead of whole lines, as it does for a pipe. The tests are written for the pipe.
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)
    # The cores shared among the workers, in this process and in every process a test starts (torch reads
    # OMP_NUM_THREADS at start): two workers of two threads each on two cores ran the compute-heavy tests 3x
    # slower than alone, as their threads spun waiting for each other.
    _cores = len(os.sched_getaffinity(0))
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, _cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    )
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# A named tiny preset: the real GPT-2 vocabulary (the data holds real token ids), everything else small.
TINY_MODEL = {
    "vocab_size": 50257,
    "context_length": 32,
    "emb_dim": 32,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": False,
}
TINY_TRAIN = {
    "microbatch_size": 4,
    "min_train_tokens": 4 * 32 * 12,
    "learning_rate": 0.003,
    "precision": "fp32",
    "validation_batches": 2,
    "log_interval": 3,
}


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory):
    """$XDG_CACHE_HOME for the whole session (subprocesses included): tests never read or fill the user's cache, e.g.
    the CPU's bf16 speedup that precision 'auto' measures once per machine."""
    patch = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("xdg-cache")
    patch.setenv("XDG_CACHE_HOME", str(path))
    yield path
    patch.undo()


@pytest.fixture(autouse=True)
def restore_torch_state():
    """Tests that train change process-wide torch settings; put them back."""
    dtype, threads, precision = torch.get_default_dtype(), torch.get_num_threads(), torch.get_float32_matmul_precision()
    rng = torch.get_rng_state()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(precision)
    torch.set_rng_state(rng)


@pytest.fixture(scope="session")
def brown_dataset(tmp_path_factory) -> Path:
    """The embedded Brown Corpus, prepared once per test session."""
    out = tmp_path_factory.mktemp("brown")
    prepare_dataset("brown", out, show_progress=False)
    return out


def write_run(run_dir: Path, dataset: Path, model: dict | None = None, train: dict | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "model.json").write_text(json.dumps({**TINY_MODEL, **(model or {})}))
    (run_dir / "train.json").write_text(json.dumps({"dataset": str(dataset), **TINY_TRAIN, **(train or {})}))
    return run_dir


def run_with_model(run_dir: Path, model, model_json: dict | None = None) -> Path:
    """A run directory holding `model` (a gptlab GPT) as its one checkpoint, written as training writes checkpoints."""
    from gptlab.files import atomic_write_json
    from gptlab.runtime.checkpoint import checkpoint_name, point, write_checksums
    from gptlab.weights import save_book_safetensors

    run_dir.mkdir(parents=True)
    (run_dir / "model.json").write_text(json.dumps(model_json or TINY_MODEL))
    (run_dir / "train.json").write_text(json.dumps({"dataset": "alice/unused", **TINY_TRAIN}))
    name = checkpoint_name(0)
    folder = run_dir / "checkpoints" / name
    folder.mkdir(parents=True)
    save_book_safetensors(model, folder / "model.safetensors")
    atomic_write_json(folder / "meta.json", {"global_step": 0})
    write_checksums(folder)
    point(run_dir, "latest", name)
    point(run_dir, "best", name)
    return run_dir


@pytest.fixture
def make_run(tmp_path, brown_dataset):
    def make(name: str = "run", model: dict | None = None, train: dict | None = None) -> Path:
        return write_run(tmp_path / name, brown_dataset, model, train)

    return make


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run the real `gptlab` entry point in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "gptlab", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def start_cli(*args: str) -> subprocess.Popen:
    """Start the real `gptlab` entry point in a process of its own, its output captured as text, for a test
    that signals, kills or waits on it while it runs."""
    return subprocess.Popen(
        [sys.executable, "-m", "gptlab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
