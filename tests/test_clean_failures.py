"""Damaged, hostile or read-only inputs end in one line naming the file and what is wrong, never a traceback
(issue 28, item 4). Each test calls the real `gptlab` entry point in this process (argv, exit code, stderr)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import write_run
from safetensors.torch import load_file, save_file

from gptlab.cli import main
from gptlab.runtime.checkpoint import Checkpoint, list_checkpoints, offer_good_checkpoint, write_checksums
from gptlab.train.loop import train_run


def gptlab(capsys, *args) -> tuple[int, str]:
    """Exit code and stderr of `gptlab ARGS`; a traceback fails the test."""
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
    gptlab.out = captured.out
    return code, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, brown_dataset) -> Path:
    run = write_run(
        tmp_path_factory.mktemp("clean") / "run",
        brown_dataset,
        train={"min_train_tokens": 4 * 32 * 4, "checkpoint_interval": 1, "validation_batches": 1},
    )
    train_run(run, show_progress=False)
    return run


@pytest.fixture
def copy(trained, tmp_path):
    return lambda: Path(shutil.copytree(trained, tmp_path / "run", symlinks=True))


@pytest.mark.parametrize("content", ["", "[]"])
def test_empty_or_list_summary_is_named_by_compare(copy, capsys, content):
    run = copy()
    (run / "summary.json").write_text(content)
    code, err = gptlab(capsys, "compare", run, run)
    assert code == 2 and f"{run / 'summary.json'}:" in err and "Traceback" not in err
    assert ("is empty" if not content else "must hold a JSON object, not list") in err


@pytest.mark.parametrize(
    "content, says", [("", "is empty"), ('{"model": {}}', "train missing"), ("{", "not valid JSON")]
)
def test_damaged_resolved_config_is_named_by_eval_and_generate(copy, capsys, content, says):
    run = copy()
    (run / "resolved_config.json").write_text(content)
    for command in (["eval", run], ["generate", run, "--prompt", "The", "--max-new-tokens", "2"]):
        code, err = gptlab(capsys, *command)
        assert code == 2 and f"{run / 'resolved_config.json'}: {says}" in err, err


def test_a_100000_deep_model_json_is_one_line(tmp_path, capsys, brown_dataset):
    run = write_run(tmp_path / "deep", brown_dataset)
    (run / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    code, err = gptlab(capsys, "train", run, "--no-progress")
    assert code == 2 and "model.json: nested too deeply" in err


def test_torn_last_metrics_line_is_dropped_on_resume(copy, capsys):
    run = copy()
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 9, "lo')
    older = list_checkpoints(run)[1].name
    code, err = gptlab(capsys, "train", run, "--resume", older, "--no-progress")
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records if "loss" in record]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_a_copied_aside_checkpoint_is_ignored_and_named(copy, capsys):
    run = copy()
    latest = (run / "checkpoints" / "latest").resolve()
    shutil.copytree(latest, run / "checkpoints" / f"{latest.name}9-backup")
    assert [path.name for path in list_checkpoints(run)][-1] == latest.name
    code, err = gptlab(capsys, "eval", run, "--checkpoint", "best", "--batches", "1")
    assert code == 0, err
    older = list_checkpoints(run)[-2].name
    code, err = gptlab(capsys, "train", run, "--resume", older, "--no-progress")
    assert code == 0, err
    assert (
        f"ignored in checkpoints/, not named <UTC time>-iteration-<step> like a checkpoint: {latest.name}9-backup"
        in (run / "train.log").read_text()
    )


def test_nan_weights_are_named_at_eval_exit_3_and_nothing_saved(copy, capsys):
    run = copy()
    latest = (run / "checkpoints" / "latest").resolve()
    weights = load_file(str(latest / "model.safetensors"))
    weights["trf_blocks.1.ff.layers.0.weight"][0, 0] = float("nan")
    save_file(weights, str(latest / "model.safetensors"))
    write_checksums(latest)  # the checksum matches: the NaN was written, not damaged afterwards
    before = (run / "evaluation.json").exists()
    code, err = gptlab(capsys, "eval", run, "--save", "--batches", "1")
    assert code == 3 and "NaN or infinite" in err and "trf_blocks.1.ff.layers.0.weight" in err, err
    assert (run / "evaluation.json").exists() == before
    code, err = gptlab(capsys, "generate", run, "--prompt", "The", "--max-new-tokens", "2")
    assert code == 3 and "NaN or infinite" in err


def test_advice_never_names_the_damaged_checkpoint(copy):
    run = copy()
    newest = list_checkpoints(run)[-1]
    # A quick check that passes everything must still not offer the checkpoint that just failed to load.
    offer = offer_good_checkpoint(run, "choose it with --checkpoint", lambda other: None, damaged=newest)
    assert newest.name not in offer and list_checkpoints(run)[-2].name in offer


def _read_only_mount(folder: Path):
    """Bind-mount `folder` over itself read-only (root in a test still cannot write there); None if not allowed."""
    if shutil.which("mount") is None:
        return None
    first = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if first.returncode != 0:
        return None
    second = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
    if second.returncode != 0:
        subprocess.run(["umount", str(folder)], check=False)
        return None
    return folder


@pytest.fixture
def read_only(tmp_path):
    folder = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    yield folder
    subprocess.run(["umount", str(folder)], check=False, capture_output=True)


def test_a_read_only_run_directory_says_it_is_read_only(trained, read_only, capsys):
    run = Path(shutil.copytree(trained, read_only / "run", symlinks=True))
    if _read_only_mount(read_only) is None:
        pytest.skip("a read-only bind mount needs root and mount(8); not allowed here")
    code, err = gptlab(capsys, "eval", run, "--save", "--batches", "1")
    # the run's writer lock is the first write an evaluation makes into the run, so it is what names the mount
    assert code == 2 and f"run {run}: cannot write into {run}: the file system is read-only" in err, err
    code, err = gptlab(capsys, "init", read_only / "new", "--preset", "demo")
    assert code == 2 and f"{read_only / 'new'}: cannot be written: the file system is read-only" in err, err
    code, err = gptlab(capsys, "train", run, "--resume", "latest", "--no-progress", "--set", "log_interval=2")
    assert code == 2 and "read-only" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=1, n_head=4)).save_pretrained(
        str(folder)
    )
    return folder


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda f: _edit_config(f, n_embd="32"), 'n_embd is "32"; it must be a positive integer'),
        (
            lambda f: _edit_config(f, n_positions=10**12),
            "n_positions is 1000000000000 but transformer.wpe.weight has 32",
        ),
        (lambda f: (f / "config.json").write_bytes(b'{"model_type": "gpt2", "n_embd": "\xff"}'), "not UTF-8 text"),
        (lambda f: _nan_weights(f), "weights hold NaN or infinite values (in transformer.h.0.mlp.c_fc.weight)"),
        (lambda f: _bad_index(f), "not a weight index"),
    ],
    ids=["string-type", "huge-n_positions", "non-utf8", "nan-weights", "bad-index"],
)
def test_import_hf_refuses_a_damaged_folder_in_one_line(hf_folder, tmp_path, capsys, brown_dataset, damage, says):
    folder = Path(shutil.copytree(hf_folder, tmp_path / "gpt2"))
    damage(folder)
    code, err = gptlab(capsys, "import-hf", folder, tmp_path / "imported", "--dataset", brown_dataset)
    assert code == 2 and says in err and "Traceback" not in err, err
    assert not (tmp_path / "imported").exists()


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def _nan_weights(folder: Path) -> None:
    weights = load_file(str(folder / "model.safetensors"))
    weights["transformer.h.0.mlp.c_fc.weight"][1, 2] = float("inf")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _bad_index(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "model-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": 5}}))


def test_checkpoint_verify_names_a_torn_meta(copy):
    run = copy()
    latest = (run / "checkpoints" / "latest").resolve()
    (latest / "meta.json").write_text("")
    with pytest.raises(ValueError, match="meta.json: is empty"):
        Checkpoint(latest).meta


def test_upload_to_a_hub_answering_garbage_is_one_line(trained, tmp_path):
    """A 200 answer that is not the Hub's JSON (a captive portal, a proxy's page) to `whoami`."""
    from conftest import run_cli
    from standins import StandIn

    class Garbage(StandIn):
        def handle(self, handler, method, path, body) -> None:
            payload = b"<html>garbage\xff"
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)

    with Garbage() as hub:
        result = run_cli(
            "upload",
            str(trained),
            "alice/tiny",
            env={"HF_TOKEN": "hf_planted_token_123", "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")},
            timeout=120,
        )
    assert result.returncode == 2 and "gave an answer that is not what a Hub answers" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "hf_planted_token_123" not in result.stdout + result.stderr


def test_eval_save_names_the_file_it_wrote(copy, capsys):
    run = copy()
    code, err = gptlab(capsys, "eval", run, "--save", "--batches", "1")
    assert code == 0 and gptlab.out.splitlines()[-1] == f"Saved to {run / 'evaluation.json'}", err
    code, err = gptlab(capsys, "eval", run, "--save", "--batches", "1", "--json")
    assert code == 0 and f"Saved to {run / 'evaluation.json'}" in err and json.loads(gptlab.out)["loss"] > 0
