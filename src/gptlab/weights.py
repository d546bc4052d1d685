"""The book's `GPTModel` weight layout: conversion, safetensors save and load, and book-order initialisation.

Checkpoints are written exactly as `safetensors.torch.save_model(book_model)` would write them, causal
mask buffers included and a tied head stored once under `out_head.weight`, so the book's strict
`safetensors.torch.load_model` reads them and gptlab reads the users' files.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gptlab.config import ModelConfig
from gptlab.errors import NonFiniteWeights, UserError
from gptlab.model import GPT

# One row per tensor that is not per-block or per-projection: (book name, gptlab name).
_TOP_LEVEL = [
    ("tok_emb.weight", "wte.weight"),
    ("pos_emb.weight", "wpe.weight"),
    ("final_norm.scale", "ln_f.weight"),
    ("final_norm.shift", "ln_f.bias"),
    ("out_head.weight", "lm_head.weight"),
]
# Per block i: (book name under trf_blocks.{i}., gptlab name under h.{i}.).
_FEED_FORWARD = [
    ("layers.0.weight", "c_fc.weight"),
    ("layers.0.bias", "c_fc.bias"),
    ("layers.2.weight", "c_proj.weight"),
    ("layers.2.bias", "c_proj.bias"),
]
_PER_BLOCK = [
    ("att.out_proj.weight", "attn.c_proj.weight"),
    ("att.out_proj.bias", "attn.c_proj.bias"),
    ("norm1.scale", "ln_1.weight"),
    ("norm1.shift", "ln_1.bias"),
    ("norm2.scale", "ln_2.weight"),
    ("norm2.shift", "ln_2.bias"),
]
# The book's separate projections, in the order their rows sit in gptlab's fused c_attn.
_QKV = ("W_query", "W_key", "W_value")
TIED_ALIAS = {"tok_emb.weight": "out_head.weight"}  # what safetensors.save_model records for a tied head


def _block_names(config: ModelConfig) -> list[tuple[str, str]]:
    """Every tensor of one block but Q, K and V: (book name under trf_blocks.{i}., gptlab name under h.{i}.).
    With experts, the users' layout: `ff.router.weight` and `ff.experts.{j}.layers.{0,2}.*` in place of `ff.layers.*`."""
    if config.moe is None:
        feed_forward = [(f"ff.{book}", f"mlp.{ours}") for book, ours in _FEED_FORWARD]
    else:
        feed_forward = [("ff.router.weight", "mlp.router.weight")] + [
            (f"ff.experts.{j}.{book}", f"mlp.experts.{j}.{ours}")
            for j in range(config.moe.num_experts)
            for book, ours in _FEED_FORWARD
        ]
    return _PER_BLOCK[:2] + feed_forward + _PER_BLOCK[2:]


def causal_mask(context_length: int) -> torch.Tensor:
    """The book's persistent attention-mask buffer: float32 ones above the diagonal."""
    return torch.triu(torch.ones(context_length, context_length), diagonal=1)


def to_book_state_dict(model: GPT, with_masks: bool = True) -> dict[str, torch.Tensor]:
    """gptlab parameters -> the book's names and shapes (views where possible, no copies)."""
    config = model.config
    ours = model.state_dict()
    for name in ("wte.weight", "lm_head.weight"):  # padding rows exist only inside gptlab
        ours[name] = ours[name][: config.vocab_size]
    book: dict[str, torch.Tensor] = {book_name: ours[our_name] for book_name, our_name in _TOP_LEVEL}
    for i in range(config.n_layers):
        for book_name, our_name in _block_names(config):
            book[f"trf_blocks.{i}.{book_name}"] = ours[f"h.{i}.{our_name}"]
        for kind in ("weight", "bias") if config.qkv_bias else ("weight",):
            for part, projection in zip(ours[f"h.{i}.attn.c_attn.{kind}"].chunk(3, dim=0), _QKV):
                book[f"trf_blocks.{i}.att.{projection}.{kind}"] = part
        if with_masks:
            book[f"trf_blocks.{i}.att.mask"] = causal_mask(config.context_length)
    return book


def from_book_state_dict(config: ModelConfig, book: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The book's names -> gptlab's state dict, checking every expected tensor is present with its shape."""
    config.require_format("book", source)
    book = dict(book)
    if config.tie_weights:
        # A tied head is stored once; accept it under either name.
        shared = book.get("out_head.weight", book.get("tok_emb.weight"))
        if shared is not None:
            book.setdefault("out_head.weight", shared)
            book.setdefault("tok_emb.weight", shared)
    ours: dict[str, torch.Tensor] = {}
    missing: list[str] = []

    def take(name: str) -> torch.Tensor | None:
        tensor = book.pop(name, None)
        if tensor is None:
            missing.append(name)
        return tensor

    for book_name, our_name in _TOP_LEVEL:
        ours[our_name] = take(book_name)
    for i in range(config.n_layers):
        for book_name, our_name in _block_names(config):
            ours[f"h.{i}.{our_name}"] = take(f"trf_blocks.{i}.{book_name}")
        for kind in ("weight", "bias") if config.qkv_bias else ("weight",):
            parts = [take(f"trf_blocks.{i}.att.{projection}.{kind}") for projection in _QKV]
            if all(part is not None for part in parts):
                ours[f"h.{i}.attn.c_attn.{kind}"] = torch.cat(parts, dim=0)
        book.pop(f"trf_blocks.{i}.att.mask", None)  # derived from context_length, never learned
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise UserError(
            f"{source}: missing tensors {shown}; does model.json (n_layers, qkv_bias, tie_weights, moe) match these weights?"
        )
    if book:
        shown = ", ".join(sorted(book)[:4])
        raise UserError(
            f"{source}: unexpected tensors {shown}; does model.json (n_layers, qkv_bias, tie_weights, moe) match these weights?"
        )
    return ours


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def refuse_non_finite(tensors: dict[str, torch.Tensor], source: str, error: type[UserError] = NonFiniteWeights) -> None:
    bad = non_finite_tensors(tensors)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise error(
            f"{source}: weights hold NaN or infinite values (in {', '.join(bad[:3])}{more}); "
            "nothing computed from them means anything: use another checkpoint or model"
        )


def load_book_state_dict(model: GPT, book: dict[str, torch.Tensor], source: str) -> None:
    refuse_non_finite(book, source)
    ours = from_book_state_dict(model.config, book, source)
    expected = model.state_dict()
    for name, tensor in ours.items():
        rows = model.config.vocab_size if name in ("wte.weight", "lm_head.weight") else expected[name].shape[0]
        if tuple(tensor.shape) != (rows, *expected[name].shape[1:]):
            raise UserError(
                f"{source}: tensor for {name} has shape {tuple(tensor.shape)} but model.json implies {(rows, *expected[name].shape[1:])}"
            )
    with torch.no_grad():
        for name, parameter in model.state_dict().items():
            parameter[: ours[name].shape[0]].copy_(ours[name])
            parameter[ours[name].shape[0] :].zero_()  # vocabulary padding rows


def book_tensors_to_save(
    model: GPT, where: str, metadata: dict[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """The tensors and metadata `model.safetensors` holds, as the book's `safetensors.torch.save_model` writes
    them: each a copy of its own on the CPU (Q, K and V are row slices of one fused tensor; safetensors stores
    each as a tensor of its own), so the model may go on changing while they are written."""
    model.config.require_format("book", where)
    book = to_book_state_dict(model)
    file_metadata = dict(metadata or {})
    if model.config.tie_weights:
        del book["tok_emb.weight"]
        file_metadata.update(TIED_ALIAS)
    tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in book.items()}
    return tensors, file_metadata or None


def save_book_safetensors(model: GPT, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write `model.safetensors` as the book's `safetensors.torch.save_model` would (caller handles atomicity)."""
    tensors, file_metadata = book_tensors_to_save(model, str(path), metadata)
    save_file(tensors, str(path), metadata=file_metadata)


def read_book_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path}: cannot read safetensors weights ({error})") from None


def load_book_safetensors(model: GPT, path: Path) -> None:
    load_book_state_dict(model, read_book_safetensors(path), str(path))


@torch.no_grad()
def init_like_book(model: GPT) -> None:
    """Initialise exactly as the book's GPTModel is initialised under the current torch RNG state.

    The book builds tok_emb, pos_emb, then per block W_query, W_key, W_value, out_proj, ff.layers.0,
    ff.layers.2, then out_head, each with PyTorch's default initialiser. Drawing the same tensors in
    the same order reproduces its weights bit for bit, so a user's seed gives the user's model, while
    gptlab keeps its fused layout.
    """
    config = model.config
    width = config.emb_dim

    def linear(fan_in: int, fan_out: int, bias: bool) -> list[torch.Tensor]:
        # nn.Linear.reset_parameters: kaiming_uniform_(a=sqrt(5)) then uniform bias in +-1/sqrt(fan_in).
        weight = torch.empty(fan_out, fan_in)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        tensors = [weight]
        if bias:
            bound = 1 / math.sqrt(fan_in)
            tensors.append(torch.empty(fan_out).uniform_(-bound, bound))
        return tensors

    book: dict[str, torch.Tensor] = {
        "tok_emb.weight": torch.empty(config.vocab_size, width).normal_(),
        "pos_emb.weight": torch.empty(config.context_length, width).normal_(),
    }
    for i in range(config.n_layers):
        prefix = f"trf_blocks.{i}"
        for projection in _QKV:
            tensors = linear(width, width, config.qkv_bias)
            book[f"{prefix}.att.{projection}.weight"] = tensors[0]
            if config.qkv_bias:
                book[f"{prefix}.att.{projection}.bias"] = tensors[1]
        book[f"{prefix}.att.out_proj.weight"], book[f"{prefix}.att.out_proj.bias"] = linear(width, width, True)
        # With experts, the users' block builds its router, then each expert, where the book builds one feed-forward.
        if config.moe is not None:
            book[f"{prefix}.ff.router.weight"] = linear(width, config.moe.num_experts, False)[0]
        feed_forwards = [f"ff.experts.{j}" for j in range(config.moe.num_experts)] if config.moe is not None else ["ff"]
        for feed_forward in feed_forwards:
            for layer, (fan_in, fan_out) in ((0, (width, 4 * width)), (2, (4 * width, width))):
                (
                    book[f"{prefix}.{feed_forward}.layers.{layer}.weight"],
                    book[f"{prefix}.{feed_forward}.layers.{layer}.bias"],
                ) = linear(fan_in, fan_out, True)
        for norm in ("norm1", "norm2"):
            book[f"{prefix}.{norm}.scale"] = torch.ones(width)
            book[f"{prefix}.{norm}.shift"] = torch.zeros(width)
    book["final_norm.scale"] = torch.ones(width)
    book["final_norm.shift"] = torch.zeros(width)
    out_head = linear(width, config.vocab_size, False)[0]
    if config.tie_weights:
        # The book's harness ties after construction: the head's draw is made (and discarded), the embedding wins.
        book["out_head.weight"] = book["tok_emb.weight"]
    else:
        book["out_head.weight"] = out_head
    load_book_state_dict(model, book, "book-order initialisation")


class _SkipModuleInitialisers(torch.overrides.TorchFunctionMode):
    """While a model is built, torch.nn.init's functions (which nn.Linear, nn.Embedding and nn.LayerNorm call as
    they are constructed) do nothing, so building draws no random numbers and computes nothing that the chosen
    initialiser (or a checkpoint) then overwrites. Building on the meta device and moving to empty CPU storage
    did the same, but its decompositions import torch._dynamo and torch.fx: 1.7 s of every gptlab process's
    start on a 2-core CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def build_model(
    config: ModelConfig,
    device: torch.device | str = "cpu",
    initialise: bool = True,
    vocab_multiple: int = 1,
    fused_loss: bool = False,
) -> GPT:
    """A freshly initialised model on `device`, initialised on the CPU under the current seed.
    With `initialise=False` the weights are left empty for a checkpoint to fill.

    The module is built with torch's own initialisers skipped, so no random numbers are spent before the
    chosen initialiser draws its own; the weights are identical whatever device training uses.
    """
    with _SkipModuleInitialisers():
        model = GPT(config, vocab_multiple=vocab_multiple, fused_loss=fused_loss)
    if initialise and config.init == "gpt2":
        model.init_gpt2()
    elif initialise:
        init_like_book(model)
    return model.to(device)
