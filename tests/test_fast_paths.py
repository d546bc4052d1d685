"""Speed switches give the plain path's results within float tolerance."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL, read_metrics
from safetensors.torch import load_model

from gptlab.config import ModelConfig
from gptlab.evaluate.sample import generate_tokens
from gptlab.linear_cross_entropy import linear_cross_entropy
from gptlab.model import GPT
from gptlab.train.loop import train_run


@pytest.mark.parametrize("dtype, tolerance", [(None, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("padded_rows", [0, 47])
def test_chunked_head_and_loss_match_the_plain_computation(dtype, tolerance, padded_rows):
    torch.manual_seed(0)
    vocab, width, tokens = 1000, 64, 300
    hidden = torch.randn(tokens, width, requires_grad=True)
    weight = (torch.randn(vocab + padded_rows, width) * 0.05).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,))
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with autocast:
        expected = F.cross_entropy((hidden @ weight[:vocab].T).float(), targets)
    expected.backward()
    expected_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with autocast:
        fused = linear_cross_entropy(hidden, weight, targets, vocab_size=vocab, chunk_tokens=64)
    (2.0 * fused).backward()  # the upstream gradient must scale both results
    assert float(fused.detach()) == pytest.approx(float(expected.detach()), rel=tolerance / 10)

    def relative_error(actual, wanted):  # over the whole tensor: bf16 rounds single elements differently per chunk
        return float((actual - wanted).norm() / wanted.norm())

    assert relative_error(hidden.grad, 2 * expected_grads[0]) < tolerance
    assert relative_error(weight.grad[:vocab], 2 * expected_grads[1][:vocab]) < tolerance
    assert torch.count_nonzero(weight.grad[vocab:]) == 0  # padding rows get nothing
    with torch.no_grad(), autocast:
        assert float(linear_cross_entropy(hidden, weight, targets, vocab_size=vocab)) == pytest.approx(
            float(expected), rel=tolerance / 10
        )


@pytest.mark.parametrize(
    "switch",
    [
        {"fused_cross_entropy": True},
        {"pad_vocab_multiple": 64},
        {"pad_vocab_multiple": 64, "fused_cross_entropy": True},
    ],
)
def test_training_with_a_fast_path_matches_the_plain_path(make_run, switch):
    plain = make_run(
        "plain", model={"tie_weights": True}, train={"fused_cross_entropy": False, "pad_vocab_multiple": 1}
    )
    fast = make_run("fast", model={"tie_weights": True}, train=switch)
    train_run(plain, show_progress=False)
    summary = train_run(fast, show_progress=False)
    assert summary["fast_paths"]["pad_vocab_multiple"] == switch.get("pad_vocab_multiple", 1)
    assert [r["loss"] for r in read_metrics(fast)] == pytest.approx(
        [r["loss"] for r in read_metrics(plain)], rel=1e-5, abs=1e-5
    )
    # Checkpoints keep the book layout and the true vocabulary whatever the padding inside.
    from llms_from_scratch.ch04 import GPTModel

    book = GPTModel({**TINY_MODEL, "tie_weights": True})
    book.out_head.weight = book.tok_emb.weight
    load_model(book, fast / "checkpoints" / "latest" / "model.safetensors")
    assert book.tok_emb.weight.shape[0] == 50257
    assert (
        summary["parameters"] == json.loads((plain / "summary.json").read_text())["parameters"]
    )  # padding is not counted


def test_padded_vocabulary_never_yields_a_padding_token():
    config = ModelConfig(**{**TINY_MODEL, "vocab_size": 1000})
    torch.manual_seed(0)
    model = GPT(config, vocab_multiple=64)
    assert model.padded_vocab_size == 1024
    with torch.no_grad():
        model.lm_head.weight[1000:] = 50.0  # padding rows that would win every draw if they were not cut off
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape[-1] == 1000
    generator = torch.Generator().manual_seed(0)
    ids = generate_tokens(model, [1, 2, 3], 40, temperature=5.0, top_k=None, generator=generator)
    assert max(ids) < 1000
    greedy = generate_tokens(model, [1, 2, 3], 10, temperature=0)
    assert max(greedy) < 1000
    loss = model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    assert torch.isfinite(loss)


def test_padding_and_parameter_count():
    config = ModelConfig(vocab_size=50257, tie_weights=False)
    with torch.device("meta"):
        padded, plain = GPT(config, vocab_multiple=64), GPT(config)
    assert padded.padded_vocab_size == 50304 and padded.parameter_count() == plain.parameter_count() == 163_009_536


def test_compiled_training_matches_eager(make_run):
    eager = make_run("eager", train={"min_train_tokens": 4 * 32 * 4, "compile": False})
    compiled = make_run("compiled", train={"min_train_tokens": 4 * 32 * 4, "compile": True})
    train_run(eager, show_progress=False)
    summary = train_run(compiled, show_progress=False)
    assert summary["fast_paths"]["compile"] is True and summary["compile_seconds"] > 0
    assert [r["loss"] for r in read_metrics(compiled)] == pytest.approx(
        [r["loss"] for r in read_metrics(eager)], rel=1e-4
    )
