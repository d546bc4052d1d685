"""The README's first command, on a reduced time budget."""

import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_demo_command() -> str:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    return block.splitlines()[0].split("#")[0].strip()


def test_readme_demo_command_trains_a_model_that_beats_the_unigram_baseline(tmp_path):
    command = readme_demo_command()
    assert command == "bash scripts/demo.sh"
    result = subprocess.run(f"{command} --steps 120 --no-progress --out {tmp_path / 'demo'}", shell=True, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for line in ("Training complete in", "Tokens seen:", "Throughput:", "Final train loss:", "Test loss:", "Unigram baseline", "Sample: \"Every effort moves you"):
        assert line in out, line
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert f"Test loss: {saved['test_loss']:.4f}" in out
    assert f"on the same tokens: {saved['unigram_test_loss']:.4f}" in out
    assert 6.5 < saved["unigram_test_loss"] < 8.0
    assert saved["test_loss"] < saved["unigram_test_loss"], "the demo's model must learn more than token frequencies"
