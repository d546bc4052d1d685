"""Common random numbers (train.json random_streams): each parameter's initial values come from its own stream."""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.config import ModelConfig
from gptlab.random_streams import init_with_streams
from gptlab.weights import build_model

TINY = {"vocab_size": 300, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "drop_rate": 0.1}


def _streamed(seed: int = 7, **overrides) -> dict[str, torch.Tensor]:
    model = build_model(ModelConfig(**{**TINY, **overrides}), initialise=False)
    init_with_streams(model, seed)
    return model.state_dict()


def _default(seed: int = 7, **overrides) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(ModelConfig(**{**TINY, **overrides})).state_dict()


@pytest.mark.parametrize("init", ["torch", "gpt2"])
def test_adding_qkv_bias_leaves_every_other_parameter_bit_identical_with_streams(init):
    without, with_bias = _streamed(init=init), _streamed(init=init, qkv_bias=True)
    assert set(with_bias) - set(without) == {f"h.{i}.attn.c_attn.bias" for i in range(2)}
    for name, tensor in without.items():
        assert torch.equal(tensor, with_bias[name]), name


def test_without_streams_adding_qkv_bias_shifts_later_parameters():
    without, with_bias = _default(), _default(qkv_bias=True)
    assert torch.equal(without["wte.weight"], with_bias["wte.weight"])  # drawn before the first bias
    assert not torch.equal(without["h.1.mlp.c_fc.weight"], with_bias["h.1.mlp.c_fc.weight"])


def test_streams_depend_on_the_seed_and_reproduce():
    assert torch.equal(_streamed(3)["wte.weight"], _streamed(3)["wte.weight"])
    assert not torch.equal(_streamed(3)["wte.weight"], _streamed(4)["wte.weight"])


def test_streams_draw_each_module_types_default_distribution():
    state = _streamed(emb_dim=64, n_heads=4)
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=sqrt(5)) on fan_in 64, and the bias's bound
    for name in ("h.0.attn.c_attn.weight", "h.0.attn.c_proj.bias", "h.0.mlp.c_fc.weight"):
        values = state[name]
        assert values.abs().max() <= bound and values.abs().max() > 0.9 * bound, name
        assert values.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1), name
    assert state["h.0.mlp.c_proj.weight"].abs().max() <= 1 / math.sqrt(256)
    assert state["wte.weight"].std().item() == pytest.approx(1.0, rel=0.05)
    assert torch.equal(state["h.0.ln_1.weight"], torch.ones(64))
    assert torch.equal(state["h.0.ln_1.bias"], torch.zeros(64))
    # The fused query/key/value draw is not one parameter's values repeated: Q, K and V differ.
    q, k, _ = state["h.0.attn.c_attn.weight"].chunk(3)
    assert not torch.equal(q, k)


def test_streams_cover_experts_and_tied_heads():
    moe = {"num_experts": 3, "num_active_experts": 2}
    dense, experts = _streamed(), _streamed(moe=moe)
    assert torch.equal(dense["wte.weight"], experts["wte.weight"])
    first, second = experts["h.0.mlp.experts.0.c_fc.weight"], experts["h.0.mlp.experts.1.c_fc.weight"]
    assert not torch.equal(first, second) and first.abs().max() <= 1 / math.sqrt(32)
    tied = _streamed(tie_weights=True)
    assert torch.equal(tied["lm_head.weight"], tied["wte.weight"])


def test_dropout_has_its_own_stream_after_the_initialisation():
    _streamed(qkv_bias=False)
    after_without = torch.rand(4)
    _streamed(qkv_bias=True)
    assert torch.equal(torch.rand(4), after_without)
