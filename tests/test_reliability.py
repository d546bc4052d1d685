"""Fault tests: nothing lost, nothing silently accepted, no traceback (issue 19).

One test per class of fault. Each drives the real code (real training, real files, the real `gptlab`
entry point in this process) and would fail if the fault got through: a traceback escapes `main()`,
an exit code is 0, or a file is lost. docs/reliability.md lists the promise each test backs.
Runs use a 256-token vocabulary over synthetic token files so that checkpoints weigh kilobytes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import start_cli
from safetensors.numpy import save_file

from gptlab.cli import cli, main
from gptlab.config import load_run_config
from gptlab.data.tokens import TokenDataset, TokenSplitWriter
from gptlab.errors import UserError
from gptlab.files import atomic_write_json
from gptlab.runtime import checkpoint as checkpoints
from gptlab.runtime.checkpoint import find_resumable_checkpoint, list_checkpoints, write_checksums
from gptlab.train import checkpoint_writer
from gptlab.train.loop import train_run

VOCAB = 256
MODEL = {"vocab_size": VOCAB, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0}
TRAIN = {
    "microbatch_size": 2,
    "min_train_tokens": 2 * 16 * 6,
    "learning_rate": 0.003,
    "precision": "fp32",
    "validation_batches": 1,
    "checkpoint_interval": 1,
    "log_interval": 1,
    "best_by": "train",
}


def write_tokens(path: Path, tokens: np.ndarray, recorded: bool = True) -> None:
    """A split as `gptlab prepare` writes it (max id recorded), or as a bare safetensors file (the users' downloads)."""
    if recorded:
        writer = TokenSplitWriter(path)
        writer.write(tokens)
        writer.close()
    else:
        save_file({"tokens": tokens.astype(np.uint16)}, str(path))


def make_dataset(
    directory: Path,
    splits=("train", "validation", "test"),
    tokens: int = 2000,
    seed: int = 0,
    bad_id_at: int | None = None,
    recorded: bool = True,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in splits:
        ids = rng.integers(0, VOCAB, tokens).astype(np.uint16)
        if bad_id_at is not None and name == "train":
            ids[bad_id_at] = VOCAB + 44
        write_tokens(directory / f"{name}.safetensors", ids, recorded)
    return directory


def make_small_run(run_dir: Path, dataset: Path, model: dict | None = None, train: dict | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "model.json").write_text(json.dumps({**MODEL, **(model or {})}))
    (run_dir / "train.json").write_text(json.dumps({"dataset": str(dataset), **TRAIN, **(train or {})}))
    return run_dir


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tokens") / "data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_dataset) -> Path:
    """A finished run with a checkpoint after every one of its 6 steps."""
    run = make_small_run(tmp_path_factory.mktemp("trained") / "run", small_dataset)
    train_run(run, show_progress=False)
    return run


@pytest.fixture
def copy_of(tmp_path):
    def copy(run: Path) -> Path:
        return Path(shutil.copytree(run, tmp_path / run.name, symlinks=True))

    return copy


def gptlab(capsys, *args: str) -> tuple[int, str]:
    """The real entry point, in this process: (exit code, stderr). A traceback would propagate and fail the test."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["gptlab", *args])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    return code, capsys.readouterr().err


def one_clear_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert lines and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def steps(run: Path) -> list[int]:
    return [checkpoints.step_of(path) for path in list_checkpoints(run)]


# --- data loss -------------------------------------------------------------------------------------


class StopAfterFirstPrune(Exception):
    pass


def test_resuming_from_an_older_checkpoint_keeps_the_new_line_and_moves_the_old_one_aside(
    trained, copy_of, monkeypatch
):
    run = copy_of(trained)
    old_line = [path.name for path in list_checkpoints(run) if checkpoints.step_of(path) > 2]
    resumed = next(path.name for path in list_checkpoints(run) if checkpoints.step_of(path) == 2)
    real_prune = checkpoint_writer.prune_checkpoints

    def prune_then_stop(*args, **kwargs):  # the process stops right after the first new checkpoint is pruned
        real_prune(*args, **kwargs)
        raise StopAfterFirstPrune

    monkeypatch.setattr(checkpoint_writer, "prune_checkpoints", prune_then_stop)
    with pytest.raises(StopAfterFirstPrune):
        train_run(run, resume=resumed, overrides={"train": {"keep_checkpoints": 2}}, show_progress=False)

    kept = steps(run)  # the one resumed from and the new step 3, plus `best` when it is older
    best = checkpoints.step_of((run / "checkpoints" / "best").resolve())
    assert kept[-2:] == [2, 3] and kept == sorted({2, 3, best})
    abandoned = [path for path in (run / "checkpoints").iterdir() if path.name.startswith("abandoned-")]
    assert len(abandoned) == 1
    assert sorted(path.name for path in abandoned[0].iterdir() if path.is_dir()) == sorted(old_line)
    # The new step 3 sits in checkpoints/ itself; the old line's step 3 (same name when both were written within
    # one second) is the one moved aside.
    latest = find_resumable_checkpoint(run, "latest")
    assert checkpoints.step_of(latest.path) == 3 and latest.path.resolve().parent == (run / "checkpoints").resolve()
    assert (abandoned[0] / "metrics.jsonl").is_file()
    assert (run / "checkpoints" / "best").exists()
    assert "new line of history" in (run / "train.log").read_text()


# --- accepted when it must be refused --------------------------------------------------------------


def test_non_finite_config_values_are_refused_and_written_json_is_strict(tmp_path, small_dataset):
    run = make_small_run(tmp_path / "run", small_dataset)
    train = (run / "train.json").read_text()
    (run / "train.json").write_text(train[:-1] + ', "weight_decay": Infinity, "clipping_max_norm": NaN}')
    (run / "train.json").write_text(
        (run / "train.json").read_text().replace('"learning_rate": 0.003', '"learning_rate": Infinity')
    )
    with pytest.raises(UserError) as refused:
        load_run_config(run)
    assert {"learning_rate", "weight_decay", "clipping_max_norm"} <= {
        line.split(": ")[1] for line in refused.value.lines
    }
    with pytest.raises(UserError, match="learning_rate"):
        load_run_config(make_small_run(tmp_path / "other", small_dataset), {"train": {"learning_rate": float("inf")}})

    atomic_write_json(tmp_path / "out.json", {"loss": float("nan"), "values": [1.5, float("-inf")]})
    text = (tmp_path / "out.json").read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in written JSON")) == {
        "loss": None,
        "values": [1.5, None],
    }


def test_overwritten_tensor_bytes_are_caught_by_the_checksum(trained, copy_of, capsys):
    run = copy_of(trained)
    latest = (run / "checkpoints" / "latest").resolve()
    weights = latest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4000:-3000] = b"\xff" * 1000  # NaN bytes inside a tensor; the header is untouched
    weights.write_bytes(bytes(data))
    previous = list_checkpoints(run)[-2].name

    code, err = gptlab(capsys, "eval", str(run), "--checkpoint", "latest")
    one_clear_line(code, err, f"{weights}: damaged", f"the newest good checkpoint is {previous}")
    code, err = gptlab(capsys, "generate", str(run), "--checkpoint", "latest")
    one_clear_line(code, err, f"{weights}: damaged")
    with pytest.raises(UserError, match=f"damaged.*resume with --resume {previous}"):
        train_run(run, resume="latest", show_progress=False)
    assert "checksums.sha256" in {path.name for path in latest.iterdir()}


@pytest.mark.parametrize("recorded", [True, False], ids=["max-id-recorded", "bare-file-scanned"])
def test_token_ids_outside_the_vocabulary_are_refused_with_one_line(tmp_path, recorded, capsys):
    data = make_dataset(tmp_path / "data", bad_id_at=150, recorded=recorded)
    run = make_small_run(tmp_path / "run", data)
    code, err = gptlab(capsys, "train", str(run), "--no-progress")
    one_clear_line(
        code, err, f"{data / 'train.safetensors'}", str(VOCAB + 44) if not recorded else "holds token ids up to 300"
    )
    assert not (run / "checkpoints").exists()


def test_token_ids_beyond_the_scanned_start_are_caught_when_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("gptlab.data.tokens.SCAN_TOKENS", 64)
    data = make_dataset(tmp_path / "data", bad_id_at=150, recorded=False)
    run = make_small_run(tmp_path / "run", data)
    code, err = gptlab(capsys, "train", str(run), "--no-progress")
    one_clear_line(code, err, "token 150 is id 300, outside the vocabulary [0, 256)")


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "RUN", "--batches", "0"],
        ["eval", "RUN", "--batches", "-1"],
        ["eval", "RUN", "--batch-size", "0"],
        ["eval", "RUN", "--start-token", "-100"],
        ["generate", "RUN", "--temperature", "nan"],
        ["generate", "RUN", "--temperature", "inf"],
        ["generate", "RUN", "--temperature", "-1"],
        ["generate", "RUN", "--top-k", "0"],
        ["generate", "RUN", "--tokens", "-5"],
        ["generate", "RUN", "--seed", "-1"],
        ["demo", "--seconds", "nan"],
        ["demo", "--seconds", "0"],
        ["demo", "--seed", str(2**64)],
        ["prepare", "brown", "OUT", "--validation-fraction", "1.5"],
        ["prepare", "brown", "OUT", "--test-fraction", "nan"],
        ["bench", "RUN", "--steps", "0"],
        ["bench", "RUN", "--warmup-steps", "-1"],
        ["bench", "RUN", "--peak-tflops", "inf"],
        ["export", "RUN", "OUT", "--seed", "-3"],
        ["cloud", "watch", "--instance-type", "x", "--interval", "nan"],
    ],
    ids=lambda args: " ".join(args[:1] + args[-2:]),
)
def test_numeric_options_are_checked_when_parsed(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Invalid value" in result.output, result.output


def test_a_dataset_without_validation_split_says_validation_is_off(tmp_path):
    data = make_dataset(tmp_path / "data", splits=("train",))
    run = make_small_run(tmp_path / "run", data, train={"min_train_tokens": 2 * 16 * 2, "checkpoint_interval": None})
    train_run(run, show_progress=False)
    log = (run / "train.log").read_text()
    assert "validation_batches is 1 but" in log and "has no validation split, so validation is off" in log


def test_duplicate_keys_are_refused_naming_the_key(tmp_path, small_dataset):
    run = make_small_run(tmp_path / "run", small_dataset)
    (run / "model.json").write_text('{"vocab_size": 256, "emb_dim": 32, "n_heads": 4, "emb_dim": 64}')
    with pytest.raises(UserError, match=r"model.json: emb_dim: the key appears more than once"):
        load_run_config(run)
    experiment = tmp_path / "exp.json"
    experiment.write_text(
        '{"baseline": "run", "seeds": [1], "interventions": {"a": {"drop_rate": 0.1}, "a": {"drop_rate": 0.2}}}'
    )
    from gptlab.experiments.spec import load_experiment

    with pytest.raises(UserError, match="exp.json: a: the key appears more than once"):
        load_experiment(experiment)


def test_eval_and_generate_say_which_config_they_use_when_model_json_was_edited(trained, copy_of, capsys):
    run = copy_of(trained)
    code, err = gptlab(capsys, "generate", str(run), "--prompt", "Every effort")
    one_clear_line(code, err, "--prompt: its GPT-2 token id")  # ids of 'Every effort' lie beyond a 256-token vocabulary
    code, err = gptlab(capsys, "generate", str(run), "--prompt", "a", "--tokens", "2", "--seed", "1")
    assert code == 0 and "note:" not in err
    (run / "model.json").write_text(json.dumps({**MODEL, "n_layers": 3, "drop_rate": 0.2}))
    code, err = gptlab(capsys, "generate", str(run), "--prompt", "a", "--tokens", "2", "--seed", "1")
    assert (
        code == 0
        and "differ from resolved_config.json in model.n_layers, model.drop_rate; using resolved_config.json" in err
    )


# --- disk full ---------------------------------------------------------------------------------------


@pytest.fixture
def small_device(tmp_path):
    """A 2 MiB tmpfs: a real device that fills (needs root and mount; skipped where either is missing)."""
    mount_point = tmp_path / "device"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root; the disk-full tests run where that is allowed")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", f"gptlab-test-{uuid.uuid4().hex[:8]}", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path: Path, leave_bytes: int) -> None:
    """Make `path` as large as it can be while `leave_bytes` stay free on its device."""
    path.unlink(missing_ok=True)
    free = shutil.disk_usage(path.parent).free
    with open(path, "wb") as handle:
        try:
            handle.write(b"\0" * max(0, free - leave_bytes))
        except OSError:
            pass


def leftovers(directory: Path) -> list[str]:
    return [str(path) for path in directory.rglob("*") if ".tmp" in path.name or path.name.endswith(".old")]


def test_disk_full_is_one_line_with_the_space_needed_and_cleans_up(
    small_device, small_dataset, trained, tmp_path, capsys
):
    # training: the first checkpoint fits, a later one does not; `latest` stays on the last good one
    run = make_small_run(small_device / "run", small_dataset, train={"checkpoint_interval": 1})
    code, err = gptlab(capsys, "train", str(run), "--no-progress")
    one_clear_line(
        code, err, "could not be written: no space left on the device (about", "needed", "`latest` still points to"
    )
    assert not leftovers(small_device)
    assert find_resumable_checkpoint(run, "latest")  # whole, verified

    shutil.rmtree(run)

    # eval --save into a full run directory
    evaluated = Path(
        shutil.copytree(
            trained,
            small_device / "evaluated",
            symlinks=True,
            ignore=shutil.ignore_patterns("*iteration-[0-4]", "*.png"),
        )
    )
    fill(small_device / "filler", 0)
    code, err = gptlab(capsys, "eval", str(evaluated), "--checkpoint", "latest", "--save")
    one_clear_line(code, err, "evaluation.json: could not be written: no space left")
    assert not leftovers(small_device)
    shutil.rmtree(evaluated)

    # export and prepare onto a device with 100 KiB left
    fill(small_device / "filler", 100 << 10)
    code, err = gptlab(capsys, "export", str(trained), str(tmp_path / "refused"))
    one_clear_line(code, err, "vocab_size 256 is smaller than the GPT-2 tokenizer's 50257 tokens")
    gpt2_sized = make_small_run(
        tmp_path / "gpt2-sized",
        small_dataset,
        model={"vocab_size": 50257, "emb_dim": 8, "n_heads": 2},
        train={"min_train_tokens": 32, "checkpoint_interval": None, "validation_batches": 0},
    )
    train_run(gpt2_sized, show_progress=False)
    code, err = gptlab(capsys, "export", str(gpt2_sized), str(small_device / "exported"), "--checkpoint", "latest")
    one_clear_line(code, err, "exported: could not be written: no space left on the device (about")
    assert not leftovers(small_device) and not (small_device / "exported").exists()
    code, err = gptlab(capsys, "prepare", "brown", str(small_device / "brown"))
    one_clear_line(code, err, "no space left on", "removed")  # prepare's own line (data/prepare.py)
    assert not leftovers(small_device)


# --- tracebacks that must be one clear line ------------------------------------------------------------


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_broken_dataset_meta_json_is_one_line(tmp_path, small_dataset, content):
    data = Path(shutil.copytree(small_dataset, tmp_path / "data"))
    (data / "meta.json").write_text(content)
    with pytest.raises(UserError, match=f"{data / 'meta.json'}: (not valid JSON|must hold a JSON object)"):
        TokenDataset(data)


def test_compare_on_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = gptlab(capsys, "compare", str(tmp_path / "empty"))
    one_clear_line(code, err, "not a run directory")


def test_a_latest_without_its_model_file_says_what_is_missing(trained, copy_of, capsys):
    run = copy_of(trained)
    (run / "checkpoints" / "latest" / "model.safetensors").unlink()
    code, err = gptlab(capsys, "eval", str(run), "--checkpoint", "latest")
    one_clear_line(code, err, "latest: has no model.safetensors (it holds: ")
    os.unlink(run / "checkpoints" / "best")
    os.symlink("gone", run / "checkpoints" / "best")
    code, err = gptlab(capsys, "generate", str(run), "--checkpoint", "best")
    one_clear_line(code, err, "best: points to gone, which does not exist")


class NotPlainData:
    pass


def test_a_refused_pickle_or_foreign_training_state_is_one_line(trained, copy_of):
    import torch

    run = copy_of(trained)
    latest = (run / "checkpoints" / "latest").resolve()
    torch.save({"step": 5, "payload": NotPlainData()}, latest / "training_state.pt")
    write_checksums(latest)  # a deliberately made file, not a damaged one: its checksum matches
    with pytest.raises(UserError) as refused:
        train_run(run, resume="latest", show_progress=False)
    message = str(refused.value)
    assert (
        "training_state.pt: refused" in message
        and "weights_only=False" not in message
        and "newest good checkpoint" in message
    )
    torch.save({"step": 5, "totals": [1, 2]}, latest / "training_state.pt")  # plain data, but not a training state
    write_checksums(latest)
    with pytest.raises(
        UserError, match=r"training_state.pt: not a gptlab training state \(totals, rng missing or of the wrong type\)"
    ):
        train_run(run, resume="latest", show_progress=False)


def test_experiment_plan_reports_every_problem_at_once(trained, tmp_path, capsys):
    baseline = Path(shutil.copytree(trained, tmp_path / "baseline", symlinks=True))
    experiment = tmp_path / "exp.json"
    experiment.write_text(
        json.dumps(
            {
                "baseline": "baseline",
                "seeds": "many",
                "interventions": {
                    "fast": {"learning_rate": "fast"},
                    "wide": {"model": {"emb_dim": 12.5}},
                    "odd": {"no_such_key": 1},
                },
            }
        )
    )
    code, err = gptlab(capsys, "experiment", "plan", str(experiment))
    one_clear_line(code, err, "seeds:", "fast over", "learning_rate", "wide over", "emb_dim", "odd.no_such_key")
    assert baseline.is_dir()


def test_generate_library_call_refuses_non_finite_temperature(trained):
    from gptlab.evaluate.sample import generate_from_run

    with pytest.raises(UserError, match="--temperature: nan"):
        generate_from_run(trained, temperature=math.nan)


# --- checkpoints written in the background (issue 30) -------------------------------------------------
# Training goes on while a checkpoint is written; these hold it to every promise the synchronous save kept.
# A model of 4 layers 256 wide weighs about 40 MB with its AdamW state: its save takes a good part of a second (a
# real write, fsynced), long enough for a signal to land in it, with no pause put into the code for tests.

LARGE = {"emb_dim": 256, "n_heads": 8, "n_layers": 4}
STAGING = re.compile(r"\.(?P<name>.+-iteration-(?P<step>\d+))\.\d+-[0-9a-f]{8}\.tmp")  # files.atomic_folder's


def save_in_flight(run: Path) -> tuple[str, int] | None:
    """(checkpoint name, step) of a checkpoint being written, its staging folder holding its weights already."""
    for path in (run / "checkpoints").glob(".*.tmp"):
        match = STAGING.fullmatch(path.name)
        if match and (path / "model.safetensors").exists():
            return match["name"], int(match["step"])
    return None


def newest_recorded_step(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    complete = [json.loads(line) for line in lines if line.endswith("}")]
    return max((record["step"] for record in complete), default=-1)


def start_training_and_catch_a_save_in_flight(run: Path) -> tuple[subprocess.Popen, str]:
    """`gptlab train` in a process of its own, caught while a checkpoint is being written after an earlier one
    was finished; returns the process and the name of the checkpoint being written."""
    process = start_cli("train", str(run), "--no-progress")
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        flight = save_in_flight(run) if list_checkpoints(run) else None  # one finished checkpoint first
        if flight is not None:
            return process, flight[0]
        time.sleep(0.002)
    process.kill()
    pytest.fail(f"never caught a save in flight: {process.communicate()[1][-2000:]}")


@pytest.fixture
def large_run(tmp_path) -> Path:
    """A run of 300 steps of LARGE with a checkpoint after every step: one is nearly always being written."""
    data = make_dataset(tmp_path / "data", splits=("train",), tokens=2 * 16 * 300 + 1)
    train = {"min_train_tokens": 2 * 16 * 300, "checkpoint_interval": 1, "keep_checkpoints": 2, "validation_batches": 0}
    return make_small_run(tmp_path / "run", data, model=LARGE, train=train)


@pytest.mark.slow  # a real process, a real signal
def test_sigkill_during_a_background_save_leaves_latest_loadable_and_verified(large_run):
    run = large_run
    process, _ = start_training_and_catch_a_save_in_flight(run)
    process.kill()
    process.communicate()

    latest = find_resumable_checkpoint(run, "latest")  # reads every file and checks it against its checksum
    left = save_in_flight(run)
    assert left is not None  # killed mid-save: its staging folder is what is left of it
    assert checkpoints.step_of(latest.path) < left[1] and not (run / "checkpoints" / left[0]).exists()
    checkpoints.remove_stale_checkpoint_staging(run)  # what the next start does
    assert not [path for path in (run / "checkpoints").iterdir() if path.name.startswith(".")]


@pytest.mark.slow  # a real process, a real signal
def test_sigterm_waits_for_the_save_in_flight_then_checkpoints_and_exits(large_run):
    run = large_run
    process, being_written = start_training_and_catch_a_save_in_flight(run)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 0, stderr[-2000:]
    stopped_at = int(stdout.split("Stopped by SIGTERM after step ")[1].split(";")[0])
    find_resumable_checkpoint(run, being_written)  # the save in flight was finished, whole
    latest = find_resumable_checkpoint(run, "latest")
    assert checkpoints.step_of(latest.path) == stopped_at > checkpoints.step_of(Path(being_written))
    assert not [path for path in (run / "checkpoints").iterdir() if path.name.startswith(".")]


def test_disk_full_during_a_background_save_stops_training_and_keeps_every_earlier_checkpoint(
    small_device, small_dataset, capsys
):
    run = make_small_run(
        small_device / "run", small_dataset, train={"min_train_tokens": 2 * 16 * 40, "checkpoint_interval": 2}
    )
    code, err = gptlab(capsys, "train", str(run), "--no-progress")
    one_clear_line(code, err, "could not be written: no space left on the device", "`latest` still points to")
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err

    kept = list_checkpoints(run)
    assert kept and all(find_resumable_checkpoint(run, path.name) for path in kept)  # each whole and verified
    assert find_resumable_checkpoint(run, "latest").path == kept[-1]
    assert f"`latest` still points to {kept[-1].name}" in err
    assert newest_recorded_step(run) < 39 and not (run / "summary.json").exists()  # stopped, not run to the end
    assert not leftovers(small_device)


@pytest.mark.parametrize("background", [None, False], ids=["background", "synchronous"])
def test_the_end_of_a_run_waits_for_its_saves_and_announces_each_once_on_disk(
    tmp_path, small_dataset, monkeypatch, background
):
    from gptlab.notify.training import TrainingNotifier

    run = make_small_run(
        tmp_path / "run",
        small_dataset,
        train={"checkpoint_interval": 2, "keep_checkpoints": 2, "background_checkpoints": background},
    )
    announced = []
    real_announce = TrainingNotifier.checkpoint

    def announce(notifier, event):  # what a CheckpointWritten message would be sent about: already on disk?
        latest = run / "checkpoints" / "latest"
        announced.append((event.step, checkpoints.step_of(latest.resolve()) if latest.exists() else None))
        real_announce(notifier, event)

    monkeypatch.setattr(TrainingNotifier, "checkpoint", announce)
    summary = train_run(run, show_progress=False)

    assert announced == [(0, 0), (2, 2), (4, 4), (5, 5)]
    assert steps(run)[-2:] == [4, 5] and find_resumable_checkpoint(run, "latest").path == list_checkpoints(run)[-1]
    assert not [path for path in (run / "checkpoints").iterdir() if path.name.startswith(".")]
    assert summary["checkpoint_save_seconds"] > 0 and summary["checkpoint_blocked_seconds"] > 0
    written = json.loads((run / "summary.json").read_text())
    assert written["checkpoint_save_seconds"] == summary["checkpoint_save_seconds"]
    assert "Checkpoints: saving took" in (run / "train.log").read_text()


def test_a_snapshot_is_a_copy_the_next_optimizer_step_cannot_change(tmp_path):
    import torch

    from gptlab.config import ModelConfig, TrainConfig
    from gptlab.train.optim import build_optimizer
    from gptlab.weights import build_model, read_book_safetensors, to_book_state_dict

    model = build_model(ModelConfig(**MODEL))
    optimizer = build_optimizer(model, TrainConfig(dataset="-", microbatch_size=1), torch.device("cpu"))

    def step() -> None:
        for parameter in model.parameters():
            parameter.grad = torch.randn_like(parameter)
        optimizer.step()

    step()
    weights = {name: tensor.clone() for name, tensor in to_book_state_dict(model, with_masks=False).items()}
    moments = {index: entry["exp_avg"].clone() for index, entry in optimizer.state_dict()["state"].items()}
    state = {"step": 0, "totals": {}, "rng": []}
    snapshot = checkpoints.snapshot_checkpoint(0, model, optimizer, None, state, {}, {}, is_best=True)
    writer = checkpoint_writer.CheckpointWriter(tmp_path, None, background=True)
    writer.save(snapshot)
    path = tmp_path / "checkpoints" / snapshot.name
    assert writer.in_flight and not path.exists()  # handed over: the files are written while training goes on
    del snapshot
    step()  # what the loop does while the snapshot is written
    writer.wait()

    written = read_book_safetensors(path / "model.safetensors")
    assert all(torch.equal(written[name], tensor) for name, tensor in weights.items())
    saved = checkpoints.Checkpoint(path).optimizer_state()["state"]
    assert all(torch.equal(saved[index]["exp_avg"], moment) for index, moment in moments.items())
    assert not torch.equal(moments[0], optimizer.state_dict()["state"][0]["exp_avg"])  # training did move on
    checkpoints.Checkpoint(path).verify()  # the checksums hashed while writing match the files on disk
