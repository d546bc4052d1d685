"""The Python API, run as a notebook would: docs/python-api.md's code block, executed as written in a fresh folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def _notebook_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.slow
def test_the_documented_notebook_runs_and_matches_the_commands(tmp_path):
    code = (
        _notebook_code()
        + "\nimport json, pathlib\npathlib.Path('out.json').write_text(json.dumps({'loss': result['loss'], 'text': sample['text']}))\n"
    )
    # Saved as a script and run as `python notebook.py`, with no `if __name__ == "__main__":` guard: prepare's
    # spawned workers must not re-run it (`python -c` would hide that: it has no file to re-import).
    (tmp_path / "notebook.py").write_text(code)
    done = subprocess.run([sys.executable, "notebook.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("overrides.learning_rat:")  # a UserError, caught, with the command's message
    assert any(line.startswith("| ") for line in lines)  # the markdown comparison table
    run = tmp_path / "runs" / "tiny"
    assert (run / "summary.json").is_file() and (run / "evaluation.json").is_file()
    # Thin wrappers: the same numbers as the commands on the same run.
    from_api = json.loads((tmp_path / "out.json").read_text())
    evaluated = run_cli("eval", str(run), "--batches", "4", "--json", cwd=tmp_path)
    assert json.loads(evaluated.stdout)["loss"] == from_api["loss"]
    generated = run_cli("generate", str(run), "--max-new-tokens", "10", "--seed", "1", "--json", cwd=tmp_path)
    assert json.loads(generated.stdout)["text"] == from_api["text"]


def test_import_is_light_and_every_api_name_resolves():
    code = (
        "import sys, gptlab; light = 'torch' not in sys.modules; import gptlab.train.loop as loop; "
        "print(light, all(callable(getattr(gptlab, n)) for n in gptlab.API), loop.__name__, gptlab.UserError.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "True", "gptlab.train.loop", "UserError"], done.stderr


def test_bad_overrides_raise_user_error(make_run):
    import gptlab

    with pytest.raises(gptlab.UserError, match="learning_rat"):
        gptlab.plan(make_run(), overrides={"learning_rat": 0.1})
