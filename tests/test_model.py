import pytest
import torch
from llms_from_scratch.ch04 import GPTModel

from gptlab.config import ModelConfig
from gptlab.model import GPT
from gptlab.weights import build_model

SMALL = dict(vocab_size=300, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


@pytest.mark.parametrize(
    "qkv_bias, tie_weights, expected",
    [(False, False, 163_009_536), (False, True, 124_412_160), (True, False, 163_037_184), (True, True, 124_439_808)],
)
def test_gpt2_small_parameter_counts(qkv_bias, tie_weights, expected):
    with torch.device("meta"):
        model = GPT(ModelConfig(qkv_bias=qkv_bias, tie_weights=tie_weights))
    assert model.parameter_count() == expected


def test_output_shape():
    model = build_model(ModelConfig(**SMALL))
    logits = model(torch.randint(0, 300, (3, 16)))
    assert logits.shape == (3, 16, 300)


def test_later_tokens_do_not_change_earlier_logits():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL)).eval()
    tokens = torch.randint(0, 300, (1, 16))
    changed = tokens.clone()
    changed[0, 10:] = (changed[0, 10:] + 7) % 300
    before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[0, :10], after[0, :10])
    assert not torch.allclose(before[0, 10:], after[0, 10:])


def test_sequence_longer_than_context_is_refused():
    model = build_model(ModelConfig(**SMALL))
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("tie_weights", [False, True])
def test_same_seed_gives_the_books_model_and_outputs(qkv_bias, tie_weights):
    """Under the users' seed, gptlab's default initialisation equals the real book GPTModel's, and so do logits."""
    config = ModelConfig(**SMALL, qkv_bias=qkv_bias, tie_weights=tie_weights)
    torch.manual_seed(123)
    book = GPTModel(config.model_dump())
    if tie_weights:
        book.out_head.weight = book.tok_emb.weight
    book_rng_after = torch.get_rng_state()
    torch.manual_seed(123)
    ours = build_model(config)
    assert torch.equal(torch.get_rng_state(), book_rng_after), "initialisation must draw exactly what the book draws"
    assert ours.parameter_count() == sum(p.numel() for p in book.parameters())
    tokens = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(ours.eval()(tokens), book.eval()(tokens), rtol=1e-5, atol=2e-5)


def test_gpt2_init_statistics():
    config = ModelConfig(vocab_size=1000, context_length=64, emb_dim=256, n_heads=4, n_layers=8, init="gpt2")
    torch.manual_seed(0)
    model = build_model(config)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)  # 1/sqrt(2 * 8)
    assert model.h[0].attn.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert torch.count_nonzero(model.h[0].mlp.c_fc.bias) == 0


def test_dropout_is_active_only_in_training_mode():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**SMALL, "drop_rate": 0.5}))
    tokens = torch.randint(0, 300, (2, 16))
    model.train()
    assert not torch.equal(model(tokens), model(tokens))
    model.eval()
    assert torch.equal(model(tokens), model(tokens))
