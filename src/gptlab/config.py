"""Run configuration: `model.json` and `train.json`, with the users' existing keys accepted unchanged.

Each key is a typed field with a default and a one-line description. Loading a run collects every
problem in both files and reports them together, one line each, naming the file and the key.
The resolved configuration (after defaults) is written once into the run directory as
`resolved_config.json`; everything later reads that.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gptlab.errors import UserError
from gptlab.files import DuplicateKeyError, atomic_write_json, loads_no_duplicates
from gptlab.notify.channels import CHANNEL_NAMES
from gptlab.rundir import (
    DATASET_LOCATION,
    DEFAULT_CHECKPOINT,
    MODEL_FILE,
    RESOLVED_CONFIG,
    TRAIN_FILE,
    read_resolved_config,
)

SEED_MAX = 2**32 - 1  # random_seed and experiment seeds: 0..SEED_MAX (see TrainConfig.random_seed)


class MoESettings(BaseModel):
    """model.json's `moe` object: each block's feed-forward layer becomes a mixture of experts, as in the users'
    harness. A router Linear(emb_dim, num_experts, bias=False) scores every expert per token; the top
    num_active_experts logits are kept (exactly that many, ties resolved as torch.topk does), a softmax over them
    weights the chosen experts' outputs, which are summed."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    num_experts: int = Field(
        ge=2,
        description="Feed-forward experts per block, each the book's FeedForward (emb_dim -> 4 emb_dim -> emb_dim).",
    )
    num_active_experts: int = Field(
        ge=2,
        description="Experts each token is sent to, from 2 to num_experts (the users' harness requires at least 2).",
    )
    log_moe_balance_file: Optional[str] = Field(
        None,
        description="Also append each log interval's routing statistics to this JSON-lines file "
        "(a relative path is taken from the working directory, as in the users' harness).",
    )
    aux_loss_coef: float = Field(
        0.0,
        ge=0,
        description="Weight of the Switch Transformer load-balancing loss, num_experts x sum_i "
        "(share of routed tokens_i x mean router probability_i) per block; 0: off.",
    )
    router_z_loss_coef: float = Field(
        0.0,
        ge=0,
        description="Weight of the router z-loss, the mean squared logsumexp of the router logits per block; 0: off.",
    )


class ModelConfig(BaseModel):
    """The GPT-2 architecture of "Build a Large Language Model (from Scratch)"; defaults are GPT-2 small."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    vocab_size: int = Field(50257, gt=0, description="Tokens in the vocabulary (GPT-2 BPE: 50,257).")
    context_length: int = Field(1024, gt=0, description="Longest sequence the position embedding covers.")
    emb_dim: int = Field(768, gt=0, description="Width of the residual stream.")
    n_heads: int = Field(12, gt=0, description="Attention heads per block; must divide emb_dim.")
    n_layers: int = Field(12, gt=0, description="Transformer blocks.")
    drop_rate: float = Field(
        0.1, ge=0.0, lt=1.0, description="Dropout on embeddings, attention weights and residual branches; 0 removes it."
    )
    qkv_bias: bool = Field(False, description="Bias terms on the query, key and value projections.")
    tie_weights: bool = Field(False, description="The output head shares the token-embedding matrix.")
    init: Literal["torch", "gpt2"] = Field(
        "torch",
        description="'torch': PyTorch's default initialisers in the book's module order (the ddp-base-model-from-scratch harness); "
        "'gpt2': normal(0, 0.02) with residual projections scaled by 1/sqrt(2 * n_layers).",
    )
    moe: Optional[MoESettings] = Field(
        None,
        description='Mixture-of-experts feed-forward layers, e.g. {"num_experts": 6, "num_active_experts": 2} '
        "(keys: num_experts, num_active_experts, log_moe_balance_file, aux_loss_coef, router_z_loss_coef); absent: the book's dense feed-forward.",
    )

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    def format_problems(self, format_name: str) -> list[str]:
        """Why `format_name` ('book' or 'gpt2', see OUTSIDE_FORMATS) cannot hold this model; empty when it can."""
        values = self.model_dump(mode="json")
        return [
            f"{key}: {json.dumps(values[key])} cannot be held by {OUTSIDE_FORMATS[format_name]}, which holds only "
            f"{json.dumps(value)}"
            for key, value in FORMAT_PINNED_KEYS[format_name].items()
            if values[key] != value
        ]

    @property
    def loads_in_book_model(self) -> bool:
        """Its weights can be stored in, and loaded from, the book's GPTModel layout (every checkpoint is)."""
        return not self.format_problems("book")

    @property
    def exports_to_gpt2(self) -> bool:
        """It can be exported to, and imported from, transformers' GPT-2."""
        return not self.format_problems("gpt2")

    def require_format(self, format_name: str, source: str) -> None:
        """Refuse, with one line per key, a model that `format_name` cannot hold: at the file boundary, not deep inside a conversion."""
        problems = self.format_problems(format_name)
        if problems:
            raise UserError(*[f"{source}: model.json {problem}" for problem in problems])


# The two formats outside gptlab that a model must fit: checkpoints are stored in the book's GPTModel layout
# and runs export to transformers' GPT-2. Both hold every model.json key in FORMAT_FREE_KEYS with any value;
# a key that takes the architecture beyond one of them (say, RMSNorm instead of LayerNorm) is pinned in
# FORMAT_PINNED_KEYS to the one value that format holds, so saving, loading or exporting such a model is
# refused at that boundary. A test fails when a model.json key is in neither.
OUTSIDE_FORMATS = {"book": "the book's GPTModel", "gpt2": "transformers' GPT-2"}
FORMAT_FREE_KEYS = frozenset(
    {"vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias", "tie_weights", "init"}
)
# `moe`: the users' harness extends the book's GPTModel with experts (router and experts named under each block's
# `ff`), and checkpoints use that extended layout; transformers' GPT-2 has no experts.
FORMAT_PINNED_KEYS: dict[str, dict[str, Any]] = {"book": {}, "gpt2": {"moe": None}}


class NotifySettings(BaseModel):
    """train.json's `notify` object; the channels' secrets come from environment variables (docs/cloud.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    channels: list[Literal[CHANNEL_NAMES]] = Field(min_length=1, description="Where messages go.")  # the registry's
    every_checkpoints: Optional[int] = Field(
        None, gt=0, description="Also send loss, tokens/s and cost every this many checkpoints; absent: never."
    )


PrecisionName = Literal[
    "fp32", "tf32", "fp16", "bf16", "auto"
]  # train.json's precision; runtime.precision.Precision is what it sets up
Schedule = Literal["constant", "cosine", "linear", "wsd"]


class TrainConfig(BaseModel):
    """What to train on and how. The first block of keys is the ddp-base-model-from-scratch harness's (ddp_train.py), with its defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    # --- the ddp-base-model-from-scratch harness's keys ---------------------------------------------
    dataset: str = Field(
        description="A local token dataset directory, or a Hugging Face dataset id downloaded once into the datasets folder. "
        "A relative folder is looked for under the run directory, then where the run found it when it started "
        "(recorded in resolved_config.json, so eval from another directory finds it), then under the working "
        "directory; a name goes to the Hub only when none of these holds it."
    )
    microbatch_size: int = Field(gt=0, description="Sequences per forward/backward pass on one process.")
    min_train_tokens: int = Field(
        -1, description="Tokens to train on, rounded up to whole global batches; -1 takes every whole global batch."
    )
    start_train_token: int = Field(0, ge=0, description="Offset into the train split where training data starts.")
    start_val_token: int = Field(
        0, ge=0, description="Offset into the validation split where validation batches start."
    )
    gradient_accumulation_steps: int = Field(1, gt=0, description="Microbatches per optimizer step on each process.")
    checkpoint_interval: Optional[int] = Field(
        None,
        gt=0,
        description="Write a checkpoint after every step s with s % interval == 0, and after the last step; absent: only at the end.",
    )
    validation_batches: int = Field(
        20, ge=0, description="Microbatches of validation loss computed at each validation; 0 turns validation off."
    )
    learning_rate: float = Field(0.0004, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay.")
    use_amp: Optional[bool] = Field(
        None,
        description="The ddp-base-model-from-scratch harness's switch: true means precision 'fp16', false means 'fp32'. Absent with precision absent: true on GPUs, as in the ddp-base-model-from-scratch harness; on a CPU see precision.",
    )
    clipping_max_norm: Optional[float] = Field(
        None, gt=0, description="Clip the global gradient L2 norm to this value; absent: no clipping."
    )
    schedule_learning_rate: bool = Field(
        False,
        description="The users' schedule: linear warm-up from 1e-5 x lr over warmup_period_percent of the steps, then cosine to lr / 10.",
    )
    warmup_period_percent: float = Field(
        0, ge=0, le=100, description="Share of the steps spent warming up, in percent."
    )
    random_seed: int = Field(
        42,
        # one range in which no two seeds give the same weights: torch wraps negatives modulo 2**64 (-1 is
        # 2**64-1) and NumPy takes seeds modulo 2**32, so only 0..2**32-1 is free of aliases in all three
        ge=0,
        le=SEED_MAX,
        description="Seeds Python, NumPy and torch (CPU and CUDA) before the model is built; 0 to 4294967295.",
    )
    random_streams: bool = Field(
        False,
        description="Common random numbers: each parameter's initial values come from a generator seeded by (random_seed, "
        "its name) and dropout from a stream of its own, so an intervention that adds or reshapes parameters leaves "
        "every other parameter's initialisation bit-identical; false: one generator in the book's module order (the "
        "ddp-base-model-from-scratch harness).",
    )

    # --- gptlab's own keys ---------------------------------------------------------------------
    precision: Optional[PrecisionName] = Field(
        None,
        description="'fp32' (TF32 off), 'tf32', 'fp16' (autocast + gradient scaler), 'bf16' (autocast, no scaler), "
        "or 'auto': bf16 on GPUs that support it (else fp16); on a CPU bf16 only where it has native bf16 "
        "and a matmul measures faster, else fp32. Absent with use_amp absent: fp16 on GPUs (the ddp-base-model-from-scratch "
        "harness), 'auto' on a CPU (where fp16 autocast is several times slower than fp32).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train; 'auto' takes CUDA when present."
    )
    parallelism: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="How several torchrun processes share the work: 'ddp' replicates weights, gradients and AdamW state on "
        "every rank; 'fsdp' shards them per transformer block across the ranks (FSDP2), for models that do not fit one "
        "GPU. Ignored by a single process.",
    )
    activation_checkpointing: bool = Field(
        False,
        description="Keep only each transformer block's input during the forward pass and recompute the block in the "
        "backward pass: activation memory of one block instead of all, for about a third more compute.",
    )
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay_params: Literal["all", "matrices"] = Field(
        "all",
        description="'all' decays every parameter (the ddp-base-model-from-scratch harness); 'matrices' only 2-D weight matrices other than embeddings.",
    )
    lr_schedule: Optional[Schedule] = Field(
        None,
        description="'constant', 'cosine', 'linear' or 'wsd' (warm-up, stable, decay); absent: the users' schedule_learning_rate switch decides.",
    )
    warmup_steps: Optional[int] = Field(
        None, ge=0, description="Warm-up length in steps; overrides warmup_period_percent."
    )
    decay_period_percent: float = Field(
        20, gt=0, le=100, description="For 'wsd': share of the steps, in percent, spent decaying at the end."
    )
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="The schedule's floor as a fraction of the peak learning rate."
    )
    max_consecutive_skipped_steps: int = Field(
        20, gt=0, description="Stop when this many steps in a row had non-finite gradients or loss."
    )
    validation_interval: Optional[int] = Field(
        None, gt=0, description="Validate every this many steps; absent: at each checkpoint."
    )
    best_by: Literal["validation", "train"] = Field(
        "validation",
        description="Which loss picks the 'best' checkpoint: validation loss, or average train loss since the last checkpoint (the ddp-base-model-from-scratch harness).",
    )
    keep_checkpoints: Optional[int] = Field(
        None, gt=0, description="Keep only the newest N checkpoints (plus 'best'); absent: keep all."
    )
    background_checkpoints: Optional[bool] = Field(
        None,
        description="Write checkpoints in the background: training waits only while the state is copied to host "
        "memory (one more copy of the weights and optimizer state there until the save ends), then goes on while "
        "the files are written, hashed and renamed into place; one save at most in flight. Absent: on, except "
        "with parallelism 'fsdp' (whose gathered state is written before training goes on); false: training "
        "waits for every save.",
    )
    log_interval: Optional[int] = Field(
        None,
        gt=0,
        description="Steps between reading the step values (loss, gradient norm, skips) back from the device, the only host synchronisation of training; every step is still recorded. Absent: 10 on CUDA, 1 on CPU.",
    )
    compile: Optional[bool] = Field(
        None,
        description="torch.compile the model; absent: on for CUDA, off on CPU. The first step's time, compilation included, is reported apart from training time.",
    )
    pad_vocab_multiple: Optional[int] = Field(
        None,
        gt=0,
        description="Pad the embedding and head rows to a multiple of this inside gptlab (checkpoints, logits and sampling keep vocab_size); absent: 64 on CUDA, 1 on CPU.",
    )
    fused_cross_entropy: Optional[bool] = Field(
        None,
        description="Compute the head and cross-entropy a chunk of tokens at a time, never holding all logits; absent: on for CUDA, off on CPU (where a bf16 bench measured it 1.30x faster with half the peak memory; the default is not yet revisited).",
    )
    init_from: Optional[str] = Field(
        None,
        description="Start from these weights instead of a fresh initialisation (optimizer fresh): a model.safetensors in the book layout, a checkpoint folder, or a run directory (its latest checkpoint); relative to the run directory.",
    )
    cost_per_hour: Optional[float] = Field(
        None, ge=0, description="Price of the machine per hour, for the cost in the summary."
    )
    machine: Optional[str] = Field(None, description="A label for the hardware, recorded in the summary.")
    notify: Optional[NotifySettings] = Field(
        None,
        description="Messages when the run starts, fails, stops or finishes, e.g. "
        f'{{"channels": ["telegram"], "every_checkpoints": 5}} (channels: {", ".join(CHANNEL_NAMES)}); '
        "tokens and addresses come from environment variables only, see docs/cloud.md.",
    )
    loggers: list[Literal["tensorboard", "wandb"]] = Field(
        [],
        description="Experiment trackers that also receive the "
        "metrics: 'tensorboard' (event files in RUN_DIR itself) and 'wandb' (needs the wandb package; "
        "WANDB_PROJECT names the project, WANDB_MODE=offline works without a network); `gptlab train --log-to` replaces them for one run.",
    )

    @property
    def effective_precision(self) -> str:
        """The precision the files ask for: 'auto' is resolved per machine by runtime/precision.py."""
        if self.precision is not None:
            return self.precision
        return "fp32" if self.use_amp is False else "fp16"

    @property
    def precision_is_default(self) -> bool:
        """Neither precision nor use_amp was given, so the precision comes from a default."""
        return self.precision is None and self.use_amp is None

    def fast_paths(self, device_type: str) -> dict[str, Any]:
        """The speed switches in effect on this device type, absent ones resolved to their defaults."""
        on_cuda = device_type == "cuda"
        return {
            "compile": self.compile if self.compile is not None else on_cuda,
            "pad_vocab_multiple": self.pad_vocab_multiple
            if self.pad_vocab_multiple is not None
            else (64 if on_cuda else 1),
            "fused_cross_entropy": self.fused_cross_entropy if self.fused_cross_entropy is not None else on_cuda,
            "log_interval": self.log_interval if self.log_interval is not None else (10 if on_cuda else 1),
        }

    @property
    def effective_schedule(self) -> str:
        if self.lr_schedule is not None:
            return self.lr_schedule
        return "users-cosine" if self.schedule_learning_rate else "constant"


# What each train.json key changes, which decides two rules: a key may change when a run is resumed unless
# it changes the computation, and runs that differ only in bookkeeping keys (and the seed) are one group in a
# comparison. "computation": what is trained, or state a resume carries on (best_by picks the `best`
# checkpoint). "evaluation": only what is measured beside training (validation, which checkpoints exist).
# "bookkeeping": no number at all (labels, logging cadence, retention, the stop guard, where it runs, as
# device 'auto' already leaves open). Every model.json key changes the computation. A test fails when a
# train.json key has no role here.
KeyRole = Literal["computation", "evaluation", "bookkeeping"]
TRAIN_KEY_ROLES: dict[str, KeyRole] = {
    "dataset": "computation",
    "microbatch_size": "computation",
    "min_train_tokens": "computation",
    "start_train_token": "computation",
    "start_val_token": "evaluation",
    "gradient_accumulation_steps": "computation",
    "checkpoint_interval": "evaluation",
    "validation_batches": "evaluation",
    "learning_rate": "computation",
    "weight_decay": "computation",
    "use_amp": "computation",
    "clipping_max_norm": "computation",
    "schedule_learning_rate": "computation",
    "warmup_period_percent": "computation",
    "random_seed": "computation",
    "random_streams": "computation",
    "precision": "computation",
    "device": "bookkeeping",
    "parallelism": "computation",
    "activation_checkpointing": "computation",
    "betas": "computation",
    "eps": "computation",
    "weight_decay_params": "computation",
    "lr_schedule": "computation",
    "warmup_steps": "computation",
    "decay_period_percent": "computation",
    "min_lr_ratio": "computation",
    "max_consecutive_skipped_steps": "bookkeeping",
    "validation_interval": "evaluation",
    "best_by": "computation",
    "keep_checkpoints": "bookkeeping",
    "background_checkpoints": "bookkeeping",
    "log_interval": "bookkeeping",
    "compile": "computation",
    "pad_vocab_multiple": "computation",
    "fused_cross_entropy": "computation",
    "init_from": "computation",
    "cost_per_hour": "bookkeeping",
    "machine": "bookkeeping",
    "notify": "bookkeeping",
    "loggers": "bookkeeping",
}
# Train keys that may change between a checkpoint and its resumption without changing what is trained.
RESUME_SAFE_TRAIN_KEYS = frozenset(key for key, role in TRAIN_KEY_ROLES.items() if role != "computation")
# Train keys that change no number: runs differing only in these (and random_seed) are seeds of one configuration.
BOOKKEEPING_TRAIN_KEYS = frozenset(key for key, role in TRAIN_KEY_ROLES.items() if role == "bookkeeping")


EvalPrecision = Literal["fp32", "bf16", "fp16"]
EVAL_PRECISIONS: tuple[str, ...] = get_args(EvalPrecision)


class EvaluationSettings(BaseModel):
    """Which tokens a test loss is computed on, and how: `gptlab eval`'s options and an experiment file's
    `evaluation` block. None means the run's own default (the test split, its microbatch size, every batch)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    checkpoint: str = Field(
        DEFAULT_CHECKPOINT, description="latest (the last one written), best or a checkpoint folder name."
    )
    split: Optional[Literal["test", "validation", "train"]] = Field(
        None, description="Split to evaluate; absent: test, or validation without a test split."
    )
    start_token: int = Field(0, ge=0, description="First token of the evaluated slice.")
    batches: Optional[int] = Field(
        None, ge=1, description="Number of batches; absent: every whole batch to the end of the split."
    )
    batch_size: Optional[int] = Field(None, ge=1, description="Sequences per batch; absent: the run's microbatch_size.")
    precision: EvalPrecision = Field("fp32", description="Numerics of the forward pass.")


def validate_evaluation(path: Path, data: Any, problems: list[str]) -> EvaluationSettings:
    """An experiment file's `evaluation` block; problems are collected (named `evaluation.KEY`), defaults returned then."""
    if not isinstance(data, dict):
        problems.append(f"{path}: evaluation: must be an object with keys {', '.join(EvaluationSettings.model_fields)}")
        return EvaluationSettings()
    try:
        return EvaluationSettings.model_validate(data)
    except ValidationError as error:
        problems += _pydantic_problems(path, EvaluationSettings, error, prefix="evaluation.")
        return EvaluationSettings()


class RunConfig(BaseModel):
    """Both files of a run, resolved."""

    model_config = ConfigDict(frozen=True)

    model: ModelConfig
    train: TrainConfig

    def to_json_dict(self) -> dict[str, Any]:
        return {"model": self.model.model_dump(mode="json"), "train": self.train.model_dump(mode="json")}


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        data = loads_no_duplicates(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except DuplicateKeyError as error:
        raise UserError(
            f"{path}: {error.key}: the key appears more than once; keep one (the last would silently win)"
        ) from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8 JSON") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be read; a config is one level of keys") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: must hold a JSON object of keys, not {type(data).__name__}")
    return data


def _describe_allowed(model_type: type[BaseModel], key: str) -> str:
    field = model_type.model_fields.get(key)
    return field.description if field is not None and field.description else ""


def _keys_at(model_type: type[BaseModel], path: tuple) -> list[str]:
    """The keys allowed inside the object at `path` (train.json's `notify` object, say)."""
    for part in path:
        field = model_type.model_fields.get(str(part))
        nested = (
            [
                t
                for t in (field.annotation, *get_args(field.annotation))
                if isinstance(t, type) and issubclass(t, BaseModel)
            ]
            if field
            else []
        )
        if not nested:
            break
        model_type = nested[0]
    return list(model_type.model_fields)


# --- other tools' names ------------------------------------------------------------------------------

_STEPS_AS_TOKENS = "gptlab sets the length in tokens: steps x microbatch_size x gradient_accumulation_steps x processes x context_length"
# Names nanoGPT, the Hugging Face Trainer (TrainingArguments, GPT2Config) and litgpt use for what gptlab calls
# otherwise: name -> (gptlab key, how the value converts when it is not the same number). A key of one of
# them that gptlab spells the same (learning_rate, weight_decay, gradient_accumulation_steps, warmup_steps,
# vocab_size, compile, device, init_from) needs no entry. Unknown-key messages read this one table.
OTHER_TOOLS_NAMES: dict[str, tuple[str, str]] = {
    # nanoGPT
    "n_layer": ("n_layers", ""),
    "n_head": ("n_heads", ""),
    "n_embd": ("emb_dim", ""),
    "block_size": ("context_length", ""),
    "dropout": ("drop_rate", ""),
    "bias": ("qkv_bias", "gptlab's bias switch is the attention's Q, K, V bias only"),
    "lr": ("learning_rate", ""),
    "max_iters": ("min_train_tokens", _STEPS_AS_TOKENS),
    "warmup_iters": ("warmup_steps", ""),
    "lr_decay_iters": ("lr_schedule", "the decay spans the run; 'wsd' takes decay_period_percent"),
    "min_lr": ("min_lr_ratio", "a fraction of learning_rate, not a rate"),
    "decay_lr": ("lr_schedule", "'cosine' decays, 'constant' does not"),
    "batch_size": ("microbatch_size", ""),
    "grad_clip": ("clipping_max_norm", ""),
    "beta1": ("betas", "a pair [beta1, beta2]"),
    "beta2": ("betas", "a pair [beta1, beta2]"),
    "eval_interval": ("validation_interval", ""),
    "eval_iters": ("validation_batches", ""),
    "dtype": ("precision", "'fp32', 'tf32', 'fp16', 'bf16' or 'auto'"),
    "seed": ("random_seed", ""),
    "out_dir": ("", "the run directory is the folder holding model.json and train.json"),
    # Hugging Face TrainingArguments and GPT2Config
    "per_device_train_batch_size": ("microbatch_size", ""),
    "max_steps": ("min_train_tokens", _STEPS_AS_TOKENS),
    "num_train_epochs": ("min_train_tokens", "-1 is one pass over every whole global batch of the train split"),
    "warmup_ratio": ("warmup_period_percent", "in percent: warmup_ratio 0.1 is warmup_period_percent 10"),
    "max_grad_norm": ("clipping_max_norm", ""),
    "lr_scheduler_type": ("lr_schedule", "'constant', 'cosine', 'linear' or 'wsd'"),
    "adam_beta1": ("betas", "a pair [beta1, beta2]"),
    "adam_beta2": ("betas", "a pair [beta1, beta2]"),
    "adam_epsilon": ("eps", ""),
    "eval_steps": ("validation_interval", ""),
    "save_steps": ("checkpoint_interval", ""),
    "save_total_limit": ("keep_checkpoints", ""),
    "logging_steps": ("log_interval", ""),
    "bf16": ("precision", "precision 'bf16'"),
    "fp16": ("precision", "precision 'fp16'"),
    "n_positions": ("context_length", ""),
    "n_ctx": ("context_length", ""),
    "resid_pdrop": ("drop_rate", "one rate for every dropout"),
    "embd_pdrop": ("drop_rate", "one rate for every dropout"),
    "attn_pdrop": ("drop_rate", "one rate for every dropout"),
    "tie_word_embeddings": ("tie_weights", ""),
    # litgpt
    "n_embed": ("emb_dim", ""),
    "padded_vocab_size": ("pad_vocab_multiple", "gptlab pads vocab_size up to a multiple of this"),
    "micro_batch_size": ("microbatch_size", ""),
    "global_batch_size": ("gradient_accumulation_steps", "global batch = microbatch_size x this x processes"),
    "lr_warmup_steps": ("warmup_steps", ""),
    "lr_warmup_fraction": ("warmup_period_percent", "in percent: 0.1 is 10"),
    "max_tokens": ("min_train_tokens", ""),
    "max_norm": ("clipping_max_norm", ""),
    "save_interval": ("checkpoint_interval", ""),
}


def _file_of_key(key: str) -> str:
    return MODEL_FILE if key in ModelConfig.model_fields else TRAIN_FILE


def suggest_key(name: str, allowed: list[str], here: str = "") -> str:
    """'gptlab calls it X (in train.json)' for another tool's name, 'did you mean X?' for a near-miss of an
    allowed key (of this file, else of the other), or '' when nothing is close. `here` is the file being read,
    so a key of the other file says where it belongs."""
    if name in OTHER_TOOLS_NAMES:
        ours, how = OTHER_TOOLS_NAMES[name]
        if not ours:
            return f"gptlab has no such key: {how}"
        where = _file_of_key(ours)
        return f"gptlab calls it {ours}" + (f" (in {where})" if where != here else "") + (f"; {how}" if how else "")
    every = list(ModelConfig.model_fields) + list(TrainConfig.model_fields)
    for pool in (allowed, every):
        close = difflib.get_close_matches(name, pool, n=1, cutoff=0.75)
        if close:
            where = _file_of_key(close[0])
            return f"did you mean {close[0]}" + (f" (in {where})" if where != here and pool is every else "") + "?"
    return ""


def _pydantic_problems(path: Path, model_type: type[BaseModel], error: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for item in error.errors():
        key = prefix + ".".join(str(part) for part in item["loc"]) or "(file)"
        top_key = str(item["loc"][0]) if item["loc"] else ""
        if item["type"] == "extra_forbidden":
            allowed = _keys_at(model_type, item["loc"][:-1])
            nested = len(item["loc"]) > 1
            hint = "" if nested else suggest_key(str(item["loc"][-1]), allowed, Path(path).name)
            problems.append(
                f"{path}: {key}: unknown key; "
                + (hint + " (see docs/configuration.md)" if hint else f"allowed keys are: {', '.join(sorted(allowed))}")
            )
        elif item["type"] == "missing":
            problems.append(f"{path}: {key}: required key is missing ({_describe_allowed(model_type, top_key)})")
        else:
            got = json.dumps(item.get("input"), default=str)
            problems.append(f"{path}: {key}: {got} is not allowed: {item['msg'].lower()}")
    return problems


def _validate(path: Path, model_type: type[BaseModel], data: dict[str, Any]) -> tuple[Optional[BaseModel], list[str]]:
    # JSON has no tuples: accept a list where a tuple field is declared, as a person writing JSON would.
    data = {key: tuple(value) if key == "betas" and isinstance(value, list) else value for key, value in data.items()}
    try:
        return model_type.model_validate(data), []
    except ValidationError as error:
        return None, _pydantic_problems(path, model_type, error)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _cross_field_problems(model_path: Path, model_data: dict, train_path: Path, train_data: dict) -> list[str]:
    """Checks that involve two keys, run on the raw values so they are reported beside any per-key problem."""
    problems = []
    emb_dim = model_data.get("emb_dim", ModelConfig.model_fields["emb_dim"].default)
    n_heads = model_data.get("n_heads", ModelConfig.model_fields["n_heads"].default)
    if _positive_int(emb_dim) and _positive_int(n_heads) and emb_dim % n_heads != 0:
        problems.append(f"{model_path}: n_heads: {n_heads} does not divide emb_dim {emb_dim}; use a divisor of emb_dim")
    moe = model_data.get("moe")
    if isinstance(moe, dict) and _positive_int(moe.get("num_experts")) and _positive_int(moe.get("num_active_experts")):
        if moe["num_active_experts"] > moe["num_experts"]:
            problems.append(
                f"{model_path}: moe.num_active_experts: {moe['num_active_experts']} is more than moe.num_experts "
                f"{moe['num_experts']}; use 2 to {moe['num_experts']}"
            )
    if train_data.get("activation_checkpointing") is True and isinstance(moe, dict):
        problems.append(
            f"{train_path}: activation_checkpointing: true cannot be combined with {model_path}'s moe: recomputing a "
            "block would count its routing statistics twice; set it to false for mixture-of-experts models"
        )
    min_tokens = train_data.get("min_train_tokens", -1)
    if isinstance(min_tokens, int) and not isinstance(min_tokens, bool) and (min_tokens == 0 or min_tokens < -1):
        problems.append(
            f"{train_path}: min_train_tokens: {min_tokens} is not allowed: use -1 (every whole global batch) or a positive count"
        )
    use_amp, precision = train_data.get("use_amp"), train_data.get("precision")
    if isinstance(use_amp, bool) and isinstance(precision, str):
        implied = "fp16" if use_amp else "fp32"
        if implied != precision:
            problems.append(
                f"{train_path}: use_amp: {json.dumps(use_amp)} means precision '{implied}' but precision is '{precision}'; give one of them"
            )
    if train_data.get("lr_schedule") is not None and train_data.get("schedule_learning_rate") is True:
        problems.append(
            f"{train_path}: schedule_learning_rate: true conflicts with lr_schedule '{train_data['lr_schedule']}'; give one of them"
        )
    betas = train_data.get("betas")
    if isinstance(betas, (list, tuple)) and len(betas) == 2 and all(isinstance(b, (int, float)) for b in betas):
        if not all(0 <= b < 1 for b in betas):
            problems.append(f"{train_path}: betas: {list(betas)} is not allowed: each must be in [0, 1)")
    return problems


def validate_run_config(model_path: Path, model_data: dict, train_path: Path, train_data: dict) -> RunConfig:
    """Validate both files' contents together, raising one UserError that lists every problem."""
    model, model_problems = _validate(model_path, ModelConfig, model_data)
    train, train_problems = _validate(train_path, TrainConfig, train_data)
    problems = model_problems + train_problems + _cross_field_problems(model_path, model_data, train_path, train_data)
    if problems:
        raise UserError(*problems)
    return RunConfig(model=model, train=train)


# --- overrides: `--set KEY=VALUE`, an experiment's intervention, a bench `--compare` column --------------

Overrides = dict[str, dict[str, Any]]  # {"model": {key: value}, "train": {key: value}}

# The users' switches and gptlab's finer keys that say the same thing. An override of one replaces the
# other in the file it is applied to, so `--set precision=bf16` works on a train.json with `use_amp: true`.
ALIASES: dict[str, str] = {
    "use_amp": "precision",
    "precision": "use_amp",
    "schedule_learning_rate": "lr_schedule",
    "lr_schedule": "schedule_learning_rate",
}


def no_overrides() -> Overrides:
    return {"model": {}, "train": {}}


def config_file_of(key: str) -> Optional[str]:
    """Which file a bare key belongs to: 'model', 'train', or None for neither."""
    if key in ModelConfig.model_fields:
        return "model"
    if key in TrainConfig.model_fields:
        return "train"
    return None


def _place(where: str, key: str, value: Any, overrides: Overrides, problems: list[str], name_key: bool = False) -> None:
    """Put `key` (bare, or prefixed `model.` / `train.`) into `overrides`, or report why it cannot go there."""
    file_name, _, bare_key = key.rpartition(".")
    if file_name not in ("", "model", "train"):
        problems.append(f"{where}: prefix the key with 'model.' or 'train.' or nothing")
        return
    file_name = file_name or config_file_of(bare_key) or ""
    fields = {"model": ModelConfig.model_fields, "train": TrainConfig.model_fields}.get(file_name, {})
    if bare_key not in fields:
        subject = f"'{bare_key}' is " if name_key else ""
        hint = suggest_key(bare_key, list(fields) or list(ModelConfig.model_fields) + list(TrainConfig.model_fields))
        problems.append(
            f"{where}: {subject}not a key of model.json or train.json"
            + (f"; {hint}" if hint else "")
            + " (see docs/configuration.md)"
        )
        return
    overrides[file_name][bare_key] = value


def parse_assignments(assignments: tuple[str, ...], option: str = "--set") -> Overrides:
    """`KEY=VALUE` pairs -> overrides; the value is read as JSON, else as a string."""
    overrides, problems = no_overrides(), []
    for assignment in assignments:
        key, separator, raw = assignment.partition("=")
        if not separator or not key:
            problems.append(f"{option} {assignment}: expected KEY=VALUE, for example {option} learning_rate=0.001")
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        _place(f"{option} {assignment}", key, value, overrides, problems, name_key=True)
    if problems:
        raise UserError(*problems)
    return overrides


def overrides_from_mapping(where: str, mapping: Any, problems: list[str]) -> Overrides:
    """Overrides from {"model": {...}, "train": {...}} or flat keys as `--set` takes them; problems are collected."""
    overrides = no_overrides()
    if not isinstance(mapping, dict):
        problems.append(f'{where}: must be an object of config keys, e.g. {{"learning_rate": 0.001}}')
        return overrides
    for key, value in mapping.items():
        if key in ("model", "train") and isinstance(value, dict):
            for inner_key, inner_value in value.items():
                _place(f"{where}.{inner_key}", f"{key}.{inner_key}", inner_value, overrides, problems)
        else:
            _place(f"{where}.{key}", key, value, overrides, problems)
    return overrides


def merge_overrides(*override_sets: Optional[Overrides]) -> Overrides:
    """Later sets win key by key, and a later key replaces an earlier set's alias of it."""
    merged = no_overrides()
    for overrides in override_sets:
        train = (overrides or {}).get("train", {})
        for key in train:
            if key in ALIASES and ALIASES[key] not in train:
                merged["train"].pop(ALIASES[key], None)
        merged["model"].update((overrides or {}).get("model", {}))
        merged["train"].update(train)
    return merged


def apply_overrides(
    model_data: dict[str, Any], train_data: dict[str, Any], overrides: Optional[Overrides]
) -> tuple[dict, dict]:
    """The two files' contents with `overrides` applied; an overridden key drops its alias from the file
    (unless the overrides set both), so the override replaces the users' switch instead of conflicting with it."""
    model_data, train_data = dict(model_data), dict(train_data)
    model_overrides, train_overrides = (overrides or {}).get("model", {}), (overrides or {}).get("train", {})
    for key in train_overrides:
        if key in ALIASES and ALIASES[key] not in train_overrides:
            train_data.pop(ALIASES[key], None)
    model_data.update(model_overrides)
    train_data.update(train_overrides)
    return model_data, train_data


def load_run_config(run_dir: Path, overrides: Optional[Overrides] = None, option: str = "--set") -> RunConfig:
    """Read `model.json` and `train.json` from a run directory, apply overrides, and validate. A problem with
    an overridden value is blamed on `option` (where the user typed it), not on the file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    model_path, train_path = run_dir / MODEL_FILE, run_dir / TRAIN_FILE
    model_data, train_data = apply_overrides(_read_json_object(model_path), _read_json_object(train_path), overrides)
    try:
        return validate_run_config(model_path, model_data, train_path, train_data)
    except UserError as error:
        blamed = {
            f"{path}: {key}": f"{option} {key}={json.dumps(value)}"
            for path, part in ((model_path, "model"), (train_path, "train"))
            for key, value in (overrides or {}).get(part, {}).items()
        }
        lines = []
        for line in error.lines:
            prefix = next((p for p in blamed if line.startswith((p + ":", p + "."))), None)
            lines.append(blamed[prefix] + line[len(prefix) :] if prefix else line)
        raise UserError(*lines) from None


def write_resolved_config(run_dir: Path, config: RunConfig, dataset_location: Optional[Path] = None) -> None:
    """The configuration after defaults; with `dataset_location`, the absolute folder the dataset was found in,
    so that a relative `dataset` is found again from any working directory (see data.locate)."""
    data: dict[str, Any] = config.to_json_dict()
    if dataset_location is not None:
        data[DATASET_LOCATION] = str(Path(dataset_location).resolve())
    atomic_write_json(Path(run_dir) / RESOLVED_CONFIG, data)


def read_run_config(run_dir: Path) -> RunConfig:
    """The resolved configuration written when the run started, else model.json and train.json as they are."""
    resolved = Path(run_dir) / RESOLVED_CONFIG
    if resolved.is_file():
        data = read_resolved_config(resolved)
        return validate_run_config(resolved, data["model"], resolved, data["train"])
    return load_run_config(Path(run_dir))


def markdown_reference() -> str:
    """docs/configuration.md, generated from the fields above so the two cannot drift apart."""
    lines = [
        "# Configuration keys",
        "",
        "Generated from `src/gptlab/config.py` by `python scripts/config_doc.py > docs/configuration.md`; a test keeps the two in step.",
        "",
    ]
    for title, model_type in ((MODEL_FILE, ModelConfig), (TRAIN_FILE, TrainConfig)):
        lines += [f"## `{title}`", "", "| key | default | meaning |", "|---|---|---|"]
        for name, field in model_type.model_fields.items():
            default = field.default if not isinstance(field.default, tuple) else list(field.default)
            shown = "required" if field.is_required() else json.dumps(default)
            lines.append(f"| `{name}` | {shown} | {field.description} |")
        lines.append("")
    lines += [
        "## Other tools' names",
        "",
        "nanoGPT's, the Hugging Face Trainer's and litgpt's names for these keys; an unknown key in model.json, "
        "train.json or `--set` that is one of them is answered with gptlab's key (a near-miss with "
        "'did you mean').",
        "",
        "| their name | gptlab's key | note |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{name}` | {f'`{ours}`' if ours else '-'} | {how} |" for name, (ours, how) in OTHER_TOOLS_NAMES.items()
    ]
    return "\n".join(lines) + "\n"
