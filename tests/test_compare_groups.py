"""Groups are runs whose resolved settings agree: the precision a run actually trained in counts, not train.json's
'auto'. Fake finished runs (configs, summary.json, evaluation.json): nothing is trained."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_MODEL

from gptlab.experiments.compare import compare_runs


def fake_run(root: Path, name: str, seed: int, loss: float, trained_in: str, asked: str | None = "auto") -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    train = {"dataset": "data", "microbatch_size": 4, "random_seed": seed}
    if asked is not None:
        train["precision"] = asked
    (run_dir / "model.json").write_text(json.dumps(TINY_MODEL))
    (run_dir / "train.json").write_text(json.dumps(train))
    summary = {"config": {"model": TINY_MODEL, "train": train}, "steps": 12, "tokens_seen": 4096, "world_size": 1}
    (run_dir / "summary.json").write_text(json.dumps({**summary, "precision": trained_in}))
    evaluation = {
        "loss": loss,
        "checkpoint": "20260101Z000000-iteration-11",
        "split": "test",
        "batches": 4,
        "batch_size": 4,
        "context_length": 32,
        "tokens": 512,
        "precision": "fp32",
        "tokens_sha256": "ab" * 32,
        "tokenizer_fingerprint": "gpt2",
    }
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation))
    return run_dir


def test_seeds_that_auto_trained_in_different_precisions_are_not_pooled_and_say_why(tmp_path):
    runs = [
        fake_run(tmp_path, "base-seed1", 1, 5.00, "fp32"),
        fake_run(tmp_path, "base-seed2", 2, 5.02, "fp32"),
        fake_run(tmp_path, "base-seed3", 3, 4.90, "bf16"),  # the machine was busy when it measured
    ]
    comparison = compare_runs(runs, baseline_dir=runs[0], echo=lambda line: None)
    rows = {row["run"]: row for row in comparison.rows}
    assert rows["base"]["seeds"] == 2 and rows["base"]["run_seeds"] == [1, 2]
    other = rows["base (2)"]
    assert other["seeds"] == 1 and other["changes"] == 'precision="bf16"'
    [note] = [note for note in comparison.notes if note.startswith("base (2): trained in bf16")]
    assert "base in fp32" in note and "as precision 'auto' chose" in note


def test_runs_trained_alike_pool_and_explicit_precisions_need_no_auto_note(tmp_path):
    runs = [fake_run(tmp_path, f"base-seed{seed}", seed, 5 + seed / 100, "fp32") for seed in (1, 2)]
    runs += [
        fake_run(tmp_path, "bf-seed1", 1, 4.9, "bf16", asked="bf16"),
        fake_run(tmp_path, "fp-seed1", 1, 4.9, "fp32", asked="fp32"),
    ]
    comparison = compare_runs(runs[:2] + runs[2:3], baseline_dir=runs[0], echo=lambda line: None)
    assert [row["seeds"] for row in comparison.rows if row["run"] == "base"] == [2]
    assert not any("as precision 'auto' chose" in note for note in comparison.notes)
