"""Training runs end to end on the real Brown corpus with a tiny model."""

import json
import os

import pytest
import torch
from conftest import read_metrics, run_cli
from safetensors.torch import load_model
from users_harness import users_harness_losses

from gptlab.train.loop import train_run


def test_short_run_learns_and_writes_its_files(make_run):
    run = make_run(train={"min_train_tokens": 4 * 32 * 40, "checkpoint_interval": 15, "learning_rate": 0.01})
    summary = train_run(run, show_progress=False)
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(40))
    for key in ("loss", "learning_rate", "tokens_seen", "elapsed_seconds", "grad_norm"):
        assert key in records[0]
    assert records[-1]["tokens_seen"] == 40 * 4 * 32 == summary["tokens_seen"]
    first, last = sum(r["loss"] for r in records[:5]) / 5, sum(r["loss"] for r in records[-5:]) / 5
    assert last < first - 1.0, (first, last)  # from ~10.8 (uniform over 50,257) well down

    checkpoints = run / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir() if not p.is_symlink())
    assert [n.rsplit("-", 1)[1] for n in names] == ["0", "15", "30", "39"]
    assert os.readlink(checkpoints / "latest").endswith("-iteration-39") and not os.path.isabs(
        os.readlink(checkpoints / "latest")
    )
    assert (checkpoints / "best").resolve().is_dir()
    latest = checkpoints / "latest"
    for file in ("model.safetensors", "optimizer.pt", "meta.json", "config.json", "training_state.pt"):
        assert (latest / file).is_file(), file
    meta = json.loads((latest / "meta.json").read_text())
    for key in (
        "learning_rate",
        "min_train_loss",
        "max_train_loss",
        "avg_train_loss",
        "max_grad_norms",
        "avg_grad_norms",
        "frac_clipped",
        "global_step",
        "is_best",
    ):
        assert key in meta, key
    assert meta["global_step"] == 39 and meta["frac_clipped"] is None
    assert torch.load(latest / "training_state.pt", weights_only=True)["step"] == 39

    saved = json.loads((run / "summary.json").read_text())
    assert saved["tokens_seen"] == 40 * 128 and saved["final_train_loss"] == pytest.approx(records[-1]["loss"])
    assert (
        saved["tokens_per_second"] > 0
        and saved["precision"] == "fp32"
        and saved["torch_version" if False else "environment"]["torch"] == torch.__version__
    )
    log = (run / "train.log").read_text()
    for line in ("Training complete in", "Tokens seen: 5,120", "Throughput:", "Final train loss:"):
        assert line in log


def test_checkpoint_loads_into_the_book_model(make_run):
    from conftest import TINY_MODEL
    from llms_from_scratch.ch04 import GPTModel

    run = make_run(train={"min_train_tokens": 4 * 32 * 2})
    train_run(run, show_progress=False)
    book = GPTModel(TINY_MODEL)
    load_model(book, run / "checkpoints" / "latest" / "model.safetensors")  # strict, as the users' tools load


def test_reproduces_the_users_harness_step_by_step(make_run, brown_dataset):
    """fp32, dropout 0: the same initialisation under the seed and the same batches give the same loss at every step."""
    from conftest import TINY_MODEL

    train = {
        "min_train_tokens": 4 * 32 * 2 * 8,
        "gradient_accumulation_steps": 2,
        "use_amp": False,
        "random_seed": 7,
        "learning_rate": 0.001,
        "weight_decay": 0.1,
        "start_train_token": 1000,
    }
    run = make_run(train={**train, "precision": None, "validation_batches": 0})
    train_run(run, show_progress=False)
    ours = [r["loss"] for r in read_metrics(run)]
    theirs = users_harness_losses(brown_dataset, TINY_MODEL, {"microbatch_size": 4, **train})
    assert len(ours) == len(theirs) == 8
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-5)


def test_same_seed_is_bit_identical_and_another_seed_differs(make_run):
    runs = [
        make_run(name, model={"drop_rate": 0.1}, train={"random_seed": seed})
        for name, seed in (("a", 1), ("b", 1), ("c", 2))
    ]
    losses = []
    for run in runs:
        train_run(run, show_progress=False)
        losses.append([r["loss"] for r in read_metrics(run)])
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_refuses_to_start_over_a_run_with_checkpoints(make_run):
    run = make_run(train={"min_train_tokens": 4 * 32 * 2})
    train_run(run, show_progress=False)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    result = run_cli("train", str(run), "--no-progress")
    assert result.returncode == 2 and "--resume latest" in result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_resume_from_a_checkpoint_continues_to_the_same_end(make_run):
    train = {"min_train_tokens": 4 * 32 * 10, "checkpoint_interval": 4}
    whole = make_run("whole", model={"drop_rate": 0.1}, train=train)
    train_run(whole, show_progress=False)
    import shutil

    split = whole.parent / "split"  # the same run's folder: a second identical training would only repeat it
    shutil.copytree(whole, split, symlinks=True)
    checkpoints = sorted((split / "checkpoints").glob("*-iteration-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    for later in checkpoints[2:]:  # keep iterations 0 and 4, as if the process died after step 4's checkpoint
        shutil.rmtree(later)
    (split / "checkpoints" / "latest").unlink()
    os.symlink(checkpoints[1].name, split / "checkpoints" / "latest")
    train_run(split, resume="latest", show_progress=False)
    assert [r["step"] for r in read_metrics(split)] == list(range(10))
    assert [r["loss"] for r in read_metrics(split)] == [r["loss"] for r in read_metrics(whole)]
    a = torch.load(whole / "checkpoints" / "latest" / "optimizer.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "latest" / "optimizer.pt", weights_only=True)
    for key in a["state"]:
        assert torch.equal(a["state"][key]["exp_avg"], b["state"][key]["exp_avg"])


def test_charts_are_drawn_in_the_run_directory(make_run):
    from PIL import Image

    run = make_run(train={"clipping_max_norm": 1.0, "checkpoint_interval": 4})
    train_run(run, show_progress=False)
    for name in ("loss-chart.png", "grad-norm-chart.png", "learning-rate-chart.png"):
        with Image.open(run / name) as image:
            assert image.format == "PNG" and image.size[0] > 300


def test_init_from_starts_from_another_runs_weights(make_run):
    from gptlab.runtime.runs import open_trained_run
    from gptlab.train.loop import setup

    first = make_run("first", train={"learning_rate": 0.01})
    train_run(first, show_progress=False)
    second = make_run("second", train={"init_from": "../first", "start_train_token": 5000})
    summary = train_run(second, show_progress=False)
    # Step 0 of the second run is the first run's final model on the second run's first batch.
    inputs, targets = setup(make_run("probe", train={"start_train_token": 5000}), show_progress=False).reader.read(0)
    with torch.no_grad():
        expected = float(open_trained_run(first, "latest").model(inputs, targets))
    assert read_metrics(second)[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert summary["config"]["train"]["init_from"] == "../first"
    bad = make_run("bad", train={"init_from": "../nowhere"})
    result = run_cli("train", str(bad), "--no-progress")
    assert result.returncode == 2 and "init_from: '../nowhere'" in result.stderr


def test_users_hugging_face_dataset_id_is_found_in_the_datasets_folder(tmp_path, brown_dataset):
    """A dataset downloaded by the users' harness (DATASETS_DIR/<owner>/<name>/ with train and validation
    safetensors only, no meta.json, no test split) is used as it is, with the users' train.json unchanged."""
    import shutil

    from conftest import TINY_MODEL

    from gptlab.evaluate.loss import evaluate_run

    downloaded = tmp_path / "datasets" / "gpjt" / "fineweb-gpt2-tokens"
    downloaded.mkdir(parents=True)
    for split in ("train", "validation"):
        shutil.copy(brown_dataset / f"{split}.safetensors", downloaded / f"{split}.safetensors")
    run = tmp_path / "runs" / "baseline"
    run.mkdir(parents=True)
    (run / "model.json").write_text(json.dumps({**TINY_MODEL, "drop_rate": 0.1}))
    (run / "train.json").write_text(
        json.dumps(
            {
                "microbatch_size": 4,
                "checkpoint_interval": 617,
                "dataset": "gpjt/fineweb-gpt2-tokens",
                "min_train_tokens": 4 * 32 * 3,
                "start_train_token": 0,
                "start_val_token": 0,
                "use_amp": False,
            }
        )
    )
    result = run_cli(
        "train", str(run), "--datasets-dir", str(tmp_path / "datasets"), "--no-progress", env={"HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(downloaded) in (run / "train.log").read_text()
    evaluation = evaluate_run(run, "latest", batches=2, datasets_dir=tmp_path / "datasets")
    assert evaluation["split"] == "validation"  # the published sets have no test split
