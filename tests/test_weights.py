"""The book-layout safetensors format, checked against the real book GPTModel and safetensors' own loaders."""

import pytest
import safetensors.torch
import torch
from llms_from_scratch.ch04 import GPTModel
from safetensors import safe_open

from gptlab.config import ModelConfig
from gptlab.errors import UserError
from gptlab.weights import build_model, load_book_safetensors, save_book_safetensors

SMALL = dict(vocab_size=300, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


def book_model(config: ModelConfig) -> GPTModel:
    model = GPTModel(config.model_dump())
    if config.tie_weights:
        model.out_head.weight = model.tok_emb.weight
    return model.eval()


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("tie_weights", [False, True])
def test_gptlab_file_loads_strictly_into_the_book_model(tmp_path, qkv_bias, tie_weights):
    config = ModelConfig(**SMALL, qkv_bias=qkv_bias, tie_weights=tie_weights, init="gpt2")
    ours = build_model(config).eval()
    save_book_safetensors(ours, tmp_path / "model.safetensors")
    book = book_model(config)
    safetensors.torch.load_model(book, tmp_path / "model.safetensors")  # strict: masks and every name must be there
    tokens = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(book(tokens), ours(tokens), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("tie_weights", [False, True])
def test_book_file_loads_into_gptlab(tmp_path, qkv_bias, tie_weights):
    config = ModelConfig(**SMALL, qkv_bias=qkv_bias, tie_weights=tie_weights)
    torch.manual_seed(5)
    book = book_model(config)
    safetensors.torch.save_model(book, tmp_path / "book.safetensors")
    ours = build_model(config.model_copy(update={"init": "gpt2"})).eval()
    load_book_safetensors(ours, tmp_path / "book.safetensors")
    if tie_weights:
        assert ours.lm_head.weight is ours.wte.weight
    tokens = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(ours(tokens), book(tokens), rtol=1e-5, atol=2e-5)


def test_file_layout_matches_what_save_model_writes(tmp_path):
    """Same names, shapes, dtypes and tied-head metadata as safetensors.torch.save_model of the book model."""
    for tie in (False, True):
        config = ModelConfig(**SMALL, tie_weights=tie)
        save_book_safetensors(build_model(config), tmp_path / "ours.safetensors")
        safetensors.torch.save_model(book_model(config), tmp_path / "book.safetensors")
        with (
            safe_open(tmp_path / "ours.safetensors", "pt") as ours,
            safe_open(tmp_path / "book.safetensors", "pt") as book,
        ):
            assert sorted(ours.keys()) == sorted(book.keys())
            for name in book.keys():
                assert ours.get_slice(name).get_shape() == book.get_slice(name).get_shape(), name
                assert ours.get_slice(name).get_dtype() == book.get_slice(name).get_dtype(), name
            assert (ours.metadata() or {}) == (book.metadata() or {})
            torch.testing.assert_close(
                ours.get_tensor("trf_blocks.1.att.mask"), book.get_tensor("trf_blocks.1.att.mask")
            )


def test_round_trip_is_exact(tmp_path):
    config = ModelConfig(**SMALL, qkv_bias=True)
    torch.manual_seed(1)
    first = build_model(config)
    save_book_safetensors(first, tmp_path / "m.safetensors")
    second = build_model(config.model_copy(update={"init": "gpt2"}))
    load_book_safetensors(second, tmp_path / "m.safetensors")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_mismatched_config_is_a_clear_error(tmp_path):
    save_book_safetensors(build_model(ModelConfig(**SMALL)), tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="missing tensors.*n_layers"):
        load_book_safetensors(build_model(ModelConfig(**{**SMALL, "n_layers": 3})), tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="shape"):
        load_book_safetensors(build_model(ModelConfig(**{**SMALL, "emb_dim": 64})), tmp_path / "m.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="bad.safetensors"):
        load_book_safetensors(build_model(ModelConfig(**SMALL)), tmp_path / "bad.safetensors")


def test_every_model_key_says_whether_the_book_model_and_gpt2_hold_it():
    """A new model.json key must be classified: free in both outside formats, or pinned to the value a format holds."""
    from gptlab.config import FORMAT_FREE_KEYS, FORMAT_PINNED_KEYS, OUTSIDE_FORMATS

    pinned = {key for keys in FORMAT_PINNED_KEYS.values() for key in keys}
    unclassified = sorted(set(ModelConfig.model_fields) - FORMAT_FREE_KEYS - pinned)
    assert not unclassified, (
        f"classify these model.json keys in config.FORMAT_FREE_KEYS or FORMAT_PINNED_KEYS: {unclassified}"
    )
    assert not FORMAT_FREE_KEYS & pinned and set(FORMAT_PINNED_KEYS) == set(OUTSIDE_FORMATS)
    config = ModelConfig(**SMALL)
    assert config.loads_in_book_model and config.exports_to_gpt2  # every model gptlab builds today fits both


def test_a_model_beyond_the_book_layout_or_gpt2_is_refused_at_the_boundary(tmp_path, monkeypatch):
    """What a future architecture key (say, a norm other than LayerNorm) will meet, shown with a key pinned for the test."""
    from gptlab.config import FORMAT_PINNED_KEYS
    from gptlab.export.hf import hf_config, write_hf_model

    model = build_model(ModelConfig(**SMALL, qkv_bias=True))
    save_book_safetensors(model, tmp_path / "model.safetensors")
    monkeypatch.setitem(FORMAT_PINNED_KEYS, "book", {"qkv_bias": False})
    assert not model.config.loads_in_book_model and model.config.exports_to_gpt2
    with pytest.raises(UserError) as refused:
        save_book_safetensors(model, tmp_path / "again.safetensors")
    assert refused.value.lines == [
        f"{tmp_path / 'again.safetensors'}: model.json qkv_bias: true cannot be held by the book's GPTModel, "
        "which holds only false"
    ]
    assert not (tmp_path / "again.safetensors").exists()
    with pytest.raises(UserError, match="qkv_bias: true cannot be held by the book's GPTModel"):
        load_book_safetensors(build_model(ModelConfig(**SMALL, qkv_bias=True)), tmp_path / "model.safetensors")

    monkeypatch.setitem(FORMAT_PINNED_KEYS, "gpt2", {"tie_weights": True})
    with pytest.raises(UserError, match="tie_weights: false cannot be held by transformers' GPT-2"):
        hf_config(model.config)
    with pytest.raises(UserError, match="transformers' GPT-2"):
        write_hf_model(model, model.config, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
