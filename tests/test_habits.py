"""Habits users bring: one checkpoint default, `--max-new-tokens`, the harness named, readable paths and counts, `gptlab init`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_cli, write_run

from gptlab.config import EvaluationSettings, load_run_config
from gptlab.model import parameter_counts
from gptlab.presets import PRESETS, preset_files
from gptlab.rundir import DEFAULT_CHECKPOINT
from gptlab.train.loop import train_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_whose_best_is_not_latest(tmp_path_factory, brown_dataset):
    """A trained run with three checkpoints whose `best` link is then pointed at the first one."""
    run = write_run(
        tmp_path_factory.mktemp("habits") / "run",
        brown_dataset,
        train={"min_train_tokens": 4 * 32 * 9, "checkpoint_interval": 4},
    )
    train_run(run, show_progress=False)
    checkpoints = run / "checkpoints"
    folders = sorted(path.name for path in checkpoints.iterdir() if not path.is_symlink())
    assert len(folders) == 3
    (checkpoints / "best").unlink()
    (checkpoints / "best").symlink_to(folders[0])
    return run, folders[0], os.readlink(checkpoints / "latest")


def test_eval_generate_and_experiments_default_to_latest(run_whose_best_is_not_latest):
    run, first, latest = run_whose_best_is_not_latest
    assert DEFAULT_CHECKPOINT == "latest" and EvaluationSettings().checkpoint == "latest"
    evaluated = run_cli("eval", str(run), "--batches", "2", "--json")
    assert json.loads(evaluated.stdout)["checkpoint"] == Path(latest).name != first
    generated = run_cli("generate", str(run), "--max-new-tokens", "3", "--seed", "1", "--json")
    assert json.loads(generated.stdout)["checkpoint"] == Path(latest).name
    best = run_cli("eval", str(run), "--batches", "2", "--json", "--checkpoint", "best")
    assert json.loads(best.stdout)["checkpoint"] == first


def test_export_defaults_to_latest(run_whose_best_is_not_latest, tmp_path):
    pytest.importorskip("transformers")
    run, first, latest = run_whose_best_is_not_latest
    result = run_cli("export", str(run), str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert f"(checkpoint {Path(latest).name})" in result.stdout


def test_max_new_tokens_and_its_older_alias(run_whose_best_is_not_latest):
    run, *_ = run_whose_best_is_not_latest
    new = json.loads(run_cli("generate", str(run), "--max-new-tokens", "4", "--seed", "3", "--json").stdout)
    old = json.loads(run_cli("generate", str(run), "--tokens", "4", "--seed", "3", "--json").stdout)
    from gptlab.tokenizer import encode

    assert new == old and len(new["token_ids"]) == len(encode("Every effort moves you")) + 4


def test_help_and_docs_name_the_harness():
    texts = [run_cli(*command, "--help").stdout for command in (("train",), ("eval",), ("generate",), ())]
    texts += [path.read_text(encoding="utf-8") for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
    for text in texts:
        assert "users' harness" not in text and "users' DDP harness" not in text and "your harness" not in text
    assert "ddp-base-model-from-scratch" in run_cli("--help").stdout.replace("\n", " ").replace("  ", " ")


@pytest.mark.slow
def test_dataset_paths_are_normalised_and_one_layer_is_singular(tmp_path, brown_dataset):
    (tmp_path / "data").symlink_to(brown_dataset)
    run = write_run(
        tmp_path / "runs" / "one",
        Path("../../data"),
        model={"n_layers": 1, "n_heads": 1},
        train={"min_train_tokens": 4 * 32 * 2},
    )
    result = run_cli("train", "runs/one", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    log = (run / "train.log").read_text()
    assert "(1 layer, 32 wide, 1 head," in log
    assert "../" not in log and f"Data: {brown_dataset.resolve()}" in log
    evaluated = json.loads(run_cli("eval", "runs/one", "--batches", "1", "--json", cwd=tmp_path).stdout)
    assert ".." not in evaluated["dataset"]


@pytest.mark.parametrize("preset", PRESETS)
def test_init_writes_a_run_that_validates_and_plans(tmp_path, preset):
    run = tmp_path / "runs" / preset
    result = run_cli("init", str(run), "--preset", preset, "--dataset", "owner/name")
    assert result.returncode == 0, result.stderr
    config = load_run_config(run)
    assert config.train.dataset == "owner/name"
    plan = run_cli(
        "train", str(run), "--dry-run", "--json", "--world-size", "8", "--datasets-dir", str(tmp_path / "datasets")
    )
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["steps"] > 0


def test_init_uses_the_books_values_and_the_users_baseline():
    model, train = preset_files("gpt2-small")
    assert model == {
        "vocab_size": 50257,
        "context_length": 1024,
        "drop_rate": 0.1,
        "qkv_bias": False,
        "emb_dim": 768,
        "n_layers": 12,
        "n_heads": 12,
    }
    assert train["min_train_tokens"] == 3260190720 == 20 * 163009536 and train["checkpoint_interval"] == 617
    assert train["microbatch_size"] == 12 and train["learning_rate"] == 0.0004 and train["weight_decay"] == 0.1
    xl, _ = preset_files("gpt2-xl")
    assert parameter_counts(load_config(xl)).total > 1.5e9


def load_config(model: dict):
    from gptlab.config import ModelConfig

    return ModelConfig(**model)


def test_init_never_overwrites(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.json").write_text('{"mine": true}')
    result = run_cli("init", str(run), "--preset", "gpt2-small")
    assert result.returncode == 2 and "train.json: already exists" in result.stderr
    assert (run / "train.json").read_text() == '{"mine": true}' and not (run / "model.json").exists()


def test_the_gpt2_small_preset_is_the_users_baseline():
    from gptlab.presets import BOOK_OPTIMIZER, USERS_MODEL, USERS_TRAIN

    model, train = preset_files("gpt2-small")
    assert model == USERS_MODEL and train == {**USERS_TRAIN, **BOOK_OPTIMIZER}
