"""`prepare` never writes into its own source, and its worker processes end with it, SIGKILL included."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli
from standins import children_of, is_running


def test_prepare_refuses_to_write_into_its_source(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("Some text to tokenise. " * 50)
    for out in (texts, texts / "tokens"):
        result = run_cli("prepare", str(texts), str(out))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip() == (
            f"error: {out}: OUT_DIR is inside the source {texts}, whose next prepare would read the dataset's "
            "files as text; choose a folder outside it"
        )
    assert sorted(path.name for path in texts.iterdir()) == ["a.txt"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads process children from /proc (Linux)")
def test_workers_end_when_prepare_is_killed(tmp_path):
    source = tmp_path / "big.txt"
    with source.open("w") as handle:
        for number in range(40000):
            handle.write(f"Document {number} says something long enough to keep a tokeniser busy. " * 12 + "\n\n")
    prepare = subprocess.Popen(
        [sys.executable, "-m", "gptlab", "prepare", str(source), str(tmp_path / "out"), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(children_of(prepare.pid)) < 2 and time.monotonic() < deadline:  # a worker and the resource tracker
        assert prepare.poll() is None, "prepare finished before its workers could be seen"
        time.sleep(0.1)
    children = children_of(prepare.pid)
    assert len(children) >= 2
    os.kill(prepare.pid, signal.SIGKILL)
    prepare.wait()
    deadline = time.monotonic() + 10
    while any(is_running(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [child for child in children if is_running(child)]
    for child in left:
        os.kill(child, signal.SIGKILL)
    assert left == []
