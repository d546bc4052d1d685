"""A model too large for the machine is refused before it is built, with the figure `--dry-run` counts."""

import time

from conftest import run_cli

from gptlab.train.host import available_memory_bytes


def test_a_million_layers_is_refused_in_seconds_with_one_line(make_run):
    run = make_run(model={"n_layers": 1000000})
    started = time.monotonic()
    result = run_cli("train", str(run), "--no-progress", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {run / 'model.json'}: the model's weights, gradients and AdamW state need ")
    assert "GiB are available on this machine" in line and f"gptlab train {run} --dry-run" in line
    assert time.monotonic() - started < 60  # building it would take minutes and then run out of memory
    assert not (run / "checkpoints").exists()


def test_available_memory_is_read():
    available = available_memory_bytes()
    assert available is not None and 0 < available < 2**50
