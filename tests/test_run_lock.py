"""One writer per run directory: real `gptlab train` processes on one run, a resume and an evaluation while
one trains, an experiment file run twice, and a lock left by a process that died."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli, start_cli

import gptlab.rundir as rundir
from gptlab.errors import UserError
from gptlab.locks import exclusive
from gptlab.rundir import LOCK_FILE, lock_run, write_evaluation


def _holder(path):
    try:
        return json.loads((path).read_text() or "null")
    except (OSError, ValueError):
        return None


def _wait_for_holder(path, pid, process, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        holder = _holder(path)
        if holder and holder.get("pid") == pid:
            return holder
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    raise AssertionError(f"{path} never named PID {pid}")


def test_a_second_train_a_resume_and_an_evaluation_are_refused_while_a_run_trains(make_run, monkeypatch):
    run = make_run(train={"min_train_tokens": 4 * 32 * 9000, "checkpoint_interval": 1})
    first = start_cli("train", str(run), "--no-progress")
    try:
        holder = _wait_for_holder(run / LOCK_FILE, first.pid, first)
        assert holder["command"] == "gptlab train" and holder["host"]
        for args in (["train", str(run)], ["train", str(run), "--resume", "latest"]):
            second = run_cli(*args, "--no-progress")
            assert second.returncode == 2, second.stderr
            (line,) = second.stderr.strip().splitlines()
            assert line == (
                f"error: run {run} is being written by PID {first.pid} on host {holder['host']} (gptlab train, since "
                f"{holder['since']}); wait for it to finish or stop it, then try again"
            )
        monkeypatch.setattr(rundir, "EVALUATION_LOCK_WAIT", 0.2)
        with pytest.raises(UserError, match=f"is being written by PID {first.pid}"):
            write_evaluation(run, {"loss": 1.0}, "latest")
        assert not (run / "evaluation.json").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one writer: no step twice, none out of order
    assert _holder(run / LOCK_FILE) is None  # released on the way out, and emptied: no note for the next writer


HOLD = """
import sys, time
from pathlib import Path
from gptlab.locks import exclusive
with exclusive(Path(sys.argv[1]), "thing", "gptlab test-holder"):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold(path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_an_experiment_file_has_one_runner(tmp_path, make_run):
    make_run("base")
    experiment = tmp_path / "exp.json"
    experiment.write_text(json.dumps({"baseline": "base", "seeds": [1]}))
    holder = _hold(tmp_path / ".exp.json.gptlab.lock")
    try:
        result = run_cli("experiment", "run", str(experiment))
        assert result.returncode == 2
        assert f"experiment {experiment} is being written by PID {holder.pid}" in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "exp-runs").exists()  # refused before planning
    finally:
        holder.kill()
        holder.wait()


def test_evaluations_wait_for_each_other_and_both_entries_stay(tmp_path):
    # two processes merging their parts into evaluation.json at once: without the lock one part gets lost
    script = """
import sys
from pathlib import Path
from gptlab.rundir import write_evaluation, write_hellaswag_evaluation
run, which = Path(sys.argv[1]), sys.argv[2]
for i in range(150):
    if which == "loss":
        write_evaluation(run, {"loss": float(i)}, "latest")
    else:
        write_hellaswag_evaluation(run, {"acc": float(i)}, "latest")
"""
    writers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), which]) for which in ("loss", "hs")]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["loss"] == 149.0 and saved["hellaswag"]["acc"] == 149.0


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(
        json.dumps({"pid": dead.pid, "host": os.uname().nodename, "command": "gptlab train", "since": "then"})
    )
    notes = []
    with exclusive(tmp_path / LOCK_FILE, f"run {tmp_path}", "gptlab train", note=notes.append):
        assert _holder(tmp_path / LOCK_FILE)["pid"] == os.getpid()
        with lock_run(tmp_path, "gptlab eval --save"):  # the same process again: not a second writer
            pass
    assert notes == [
        f"Note: run {tmp_path} was last written by PID {dead.pid} on host {os.uname().nodename} (gptlab train, "
        "since then), which has exited without releasing its lock file; taking it over"
    ]


def test_a_torchrun_rank_other_than_0_takes_no_lock(tmp_path, monkeypatch):
    holder = _hold(tmp_path / LOCK_FILE)
    try:
        monkeypatch.setenv("RANK", "1")
        with lock_run(tmp_path, "gptlab train"):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(UserError, match=f"PID {holder.pid}"):
            with lock_run(tmp_path, "gptlab train"):
                pass
    finally:
        holder.kill()
        holder.wait()
