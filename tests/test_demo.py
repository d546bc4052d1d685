"""The README's first command, on a reduced time budget."""

import json
import os
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
    result = subprocess.run(
        f"{command} --steps 120 --no-progress --out {tmp_path / 'demo'}",
        shell=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        # as a user runs it: every core (a test worker's OMP_NUM_THREADS would have the demo measure one core's
        # speed and plan a smaller model than the README promises)
        env={name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for line in (
        "Training complete in",
        "Tokens seen:",
        "Throughput:",
        "Final train loss:",
        "Test loss:",
        "Unigram baseline",
        'Sample: "Every effort moves you',
    ):
        assert line in out, line
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert f"Test loss: {saved['test_loss']:.4f}" in out
    assert f"on the same tokens: {saved['unigram_test_loss']:.4f}" in out
    assert 6.5 < saved["unigram_test_loss"] < 8.0
    assert saved["test_loss"] < saved["unigram_test_loss"], "the demo's model must learn more than token frequencies"


def test_demo_plan_shrinks_the_model_until_enough_steps_fit_the_budget():
    from gptlab.demo import DEMO_MODEL, MIN_STEPS, SMALLER_SIZES, TRAINING_SHARE, plan_demo

    widths = [DEMO_MODEL["emb_dim"]] + [model["emb_dim"] for model, _ in SMALLER_SIZES]
    seconds_by_width = dict(zip(widths, (4.0, 1.0, 0.5)))
    measure = lambda model, train: seconds_by_width[model.emb_dim]  # noqa: E731  (step times of a slow machine)

    model, train, steps, lines = plan_demo(MIN_STEPS * 4.0 / TRAINING_SHARE, measure)
    assert model == DEMO_MODEL and steps == MIN_STEPS and not any("Shrunk" in line for line in lines)

    model, train, steps, lines = plan_demo(
        180, measure
    )  # 162 s of training: 40 steps of the default size, 162 of the next
    assert (model, train) == ({**DEMO_MODEL, **SMALLER_SIZES[0][0]}, {**train, **SMALLER_SIZES[0][1]}) and steps == 162
    assert lines[-1].startswith("Shrunk the model to 2 layers x 128 wide")

    model, train, steps, lines = plan_demo(
        20, measure
    )  # not even the smallest fits: it trains the minimum and says by how much it overruns
    assert model["emb_dim"] == widths[-1] and steps == MIN_STEPS
    assert f"{MIN_STEPS * 0.5 / (20 * TRAINING_SHARE):.1f}x the budget of 20 s" in lines[-1]
