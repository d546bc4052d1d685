"""Seeds are one range without aliases: torch wraps -1 to 2**64-1 and NumPy takes seeds modulo 2**32, so
only 0..2**32-1 gives every seed its own weights; anything else is one line, exit 2."""

import json

import pytest
from conftest import run_cli

from gptlab.click_types import SEED
from gptlab.config import SEED_MAX
from gptlab.errors import UserError
from gptlab.experiments.spec import load_experiment


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 2**64 - 1])
def test_random_seed_outside_the_range_is_one_line(make_run, seed):
    run = make_run(train={"random_seed": seed})
    result = run_cli("train", str(run), "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "random_seed" in line and str(seed) in line and not (run / "checkpoints").exists()


def test_every_seed_option_takes_the_same_range():
    assert (SEED.min, SEED.max) == (0, SEED_MAX)


def test_experiment_seeds_outside_the_range_are_refused_and_the_edges_accepted(tmp_path, make_run):
    make_run("base")
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"baseline": "base", "seeds": [1, -1, 2**64 - 1]}))
    with pytest.raises(UserError) as raised:
        load_experiment(path)
    assert raised.value.lines == [
        f"{path}: seeds: -1, 18446744073709551615 is outside 0..4294967295, the range in which every seed gives "
        "different weights (outside it seeds alias: -1 trains as 18446744073709551615)"
    ]
    path.write_text(json.dumps({"baseline": "base", "seeds": [0, SEED_MAX]}))
    assert load_experiment(path).seeds == (0, SEED_MAX)
