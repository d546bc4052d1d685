import json
import math
import re

import pytest
from conftest import run_cli

from gptlab.evaluate.loss import evaluate_run
from gptlab.evaluate.sample import generate_from_run
from gptlab.train.loop import train_run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, brown_dataset):
    from conftest import write_run

    run = write_run(
        tmp_path_factory.mktemp("trained") / "run",
        brown_dataset,
        train={"min_train_tokens": 4 * 32 * 20, "checkpoint_interval": 10, "learning_rate": 0.01},
    )
    train_run(run, show_progress=False)
    return run


def test_eval_is_reproducible_and_names_its_tokens(trained_run):
    first = evaluate_run(trained_run, "latest", batches=5)
    second = evaluate_run(trained_run, "latest", batches=5)
    assert first["loss"] == second["loss"]
    assert first["split"] == "test" and first["tokens"] == 5 * 4 * 32 and first["start_token"] == 0
    assert 4.0 < first["loss"] < 10.9
    other = evaluate_run(trained_run, "latest", batches=5, start_token=1000)
    assert other["loss"] != first["loss"]


def test_eval_whole_split_by_default_and_json_cli(tmp_path):
    """On a corpus cut to 100k tokens (the whole Brown test split takes a minute to score twice on 2 cores)."""
    from conftest import write_run

    from gptlab.data.prepare import prepare_dataset
    from gptlab.data.tokens import TokenDataset

    small = tmp_path / "small-brown"
    prepare_dataset("brown", small, show_progress=False, max_tokens=100_000)
    run = write_run(tmp_path / "run", small, train={"min_train_tokens": 4 * 32 * 4})
    train_run(run, show_progress=False)
    result = run_cli("eval", str(run), "--checkpoint", "latest", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    test_tokens = len(TokenDataset(small).split("test"))
    assert data["batches"] == (test_tokens - 1) // (4 * 32) > 10
    assert data["loss"] == pytest.approx(evaluate_run(run, "latest")["loss"], rel=1e-9)


def test_eval_prints_the_perplexity_beside_the_loss(trained_run):
    result = run_cli("eval", str(trained_run), "--checkpoint", "latest", "--batches", "5")
    assert result.returncode == 0, result.stderr
    found = re.match(
        r"test loss: (\d+\.\d{4}) \(perplexity ([\d,]+\.\d\d)\) on 640 tokens from token 0 ", result.stdout
    )
    assert found, result.stdout
    loss = evaluate_run(trained_run, "latest", batches=5)["loss"]
    assert found.group(1) == f"{loss:.4f}" and found.group(2) == f"{math.exp(loss):,.2f}"


def test_eval_of_an_earlier_checkpoint_differs(trained_run):
    names = sorted(p.name for p in (trained_run / "checkpoints").glob("*-iteration-*"))
    early = evaluate_run(trained_run, next(n for n in names if n.endswith("-iteration-0")), batches=5)
    late = evaluate_run(trained_run, "latest", batches=5)
    assert late["loss"] < early["loss"]


def test_eval_errors(trained_run, tmp_path):
    result = run_cli("eval", str(trained_run), "--checkpoint", "nope")
    assert result.returncode == 2 and "no checkpoint 'nope'" in result.stderr and "latest" in result.stderr
    result = run_cli("eval", str(trained_run), "--batches", "100000")
    assert result.returncode == 2 and "--batches 100000" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_cli("eval", str(tmp_path / "empty"))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_generate_is_reproducible_with_a_seed(trained_run):
    a = generate_from_run(trained_run, seed=3, checkpoint="latest")
    b = generate_from_run(trained_run, seed=3, checkpoint="latest")
    c = generate_from_run(trained_run, seed=4, checkpoint="latest")
    assert a["text"] == b["text"] and a["text"].startswith("Every effort moves you")
    assert len(a["token_ids"]) == 4 + 20
    assert a["token_ids"] != c["token_ids"]


def test_greedy_decoding_is_deterministic_and_picks_the_argmax(trained_run):
    import torch

    from gptlab.runtime.runs import open_trained_run

    greedy = generate_from_run(trained_run, temperature=0, new_tokens=5, checkpoint="latest")
    assert generate_from_run(trained_run, temperature=0, new_tokens=5, seed=99, checkpoint="latest") == {
        **greedy,
        "seed": 99,
    }
    model = open_trained_run(trained_run, "latest").model
    ids = greedy["token_ids"]
    for position in range(4, len(ids)):
        logits = model(torch.tensor([ids[:position]]))[0, -1]
        assert ids[position] == int(logits.argmax())


def test_top_k_one_equals_greedy(trained_run):
    greedy = generate_from_run(trained_run, temperature=0, new_tokens=6, checkpoint="latest")
    top1 = generate_from_run(trained_run, temperature=1.0, top_k=1, new_tokens=6, seed=1, checkpoint="latest")
    assert top1["token_ids"] == greedy["token_ids"]


def test_generate_cli(trained_run):
    result = run_cli("generate", str(trained_run), "--seed", "1", "--tokens", "5", "--checkpoint", "latest")
    assert result.returncode == 0 and result.stdout.startswith("Every effort moves you")
    result = run_cli("generate", str(trained_run), "--temperature", "-1")
    assert result.returncode == 2 and "--temperature" in result.stderr
