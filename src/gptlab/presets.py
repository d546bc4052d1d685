"""`gptlab init RUN_DIR --preset NAME`: a new run's model.json and train.json with the book's values.

The GPT-2 sizes are the book's (`GPT_CONFIG_124M` and its `model_configs`: width, layers, heads; context
1,024, dropout 0.1, no QKV bias) and its AdamW (learning rate 0.0004, weight decay 0.1). The train.json
follows the ddp-base-model-from-scratch harness's baseline: 20 tokens per parameter (Chinchilla; for their
163,009,536-parameter GPT-2 small that is their min_train_tokens, 3,260,190,720) and a checkpoint every
1/54 of the run on 8 GPUs (their 617 steps). The microbatch is the largest of 12, 8, 6, 4, 2, 1 whose
estimated fp16 peak (docs/planning.md) fits a 40 GB A100, else an 80 GB card.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gptlab.config import ModelConfig, validate_run_config
from gptlab.errors import UserError
from gptlab.files import atomic_write_json
from gptlab.model import parameter_counts
from gptlab.rundir import MODEL_FILE, TRAIN_FILE

# The users' GPT-2 small model.json and their baseline train.json, literally as their harness has them
# (shared/USERS-FILES.md); the tests' replica of their harness and the benchmarks read them from here.
USERS_MODEL = {
    "vocab_size": 50257,
    "context_length": 1024,
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
}
USERS_TRAIN = {
    "microbatch_size": 12,
    "checkpoint_interval": 617,
    "dataset": "gpjt/fineweb-gpt2-tokens",
    "min_train_tokens": 3260190720,
    "start_train_token": 0,
    "start_val_token": 0,
}
BOOK_GPT2 = {"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.1, "qkv_bias": False}
BOOK_OPTIMIZER = {"learning_rate": 0.0004, "weight_decay": 0.1}
USERS_DATASET = USERS_TRAIN["dataset"]
TOKENS_PER_PARAMETER = 20
CHECKPOINTS_PER_RUN_ON_8_GPUS = 54  # their baseline: 33,165 steps, a checkpoint every 617

# The demo's small GPT on the embedded Brown Corpus (`gptlab demo`), which plans its own step count.
DEMO_MODEL = {
    "vocab_size": 50257,
    "context_length": 128,
    "emb_dim": 256,
    "n_heads": 4,
    "n_layers": 4,
    "drop_rate": 0.0,
    "qkv_bias": False,
    "tie_weights": True,
    "init": "gpt2",
}
# 'auto': bf16 where this machine runs it faster (a GPU, or a CPU with native bf16), fp32 elsewhere.
DEMO_TRAIN = {
    "dataset": "../data",
    "microbatch_size": 8,
    "learning_rate": 0.003,
    "weight_decay": 0.1,
    "weight_decay_params": "matrices",
    "precision": "auto",
    "lr_schedule": "cosine",
    "warmup_period_percent": 5,
    "clipping_max_norm": 1.0,
    "validation_batches": 16,
    "validation_interval": 50,
}
DEMO_STEPS = 120  # what `gptlab demo` trains at least (demo.MIN_STEPS)

# name -> (model.json keys beyond BOOK_GPT2, microbatch_size)
GPT2_SIZES: dict[str, tuple[dict[str, Any], int]] = {
    "gpt2-small": ({"emb_dim": 768, "n_layers": 12, "n_heads": 12}, 12),
    "gpt2-small-tied": ({"emb_dim": 768, "n_layers": 12, "n_heads": 12, "tie_weights": True}, 12),
    "gpt2-medium": ({"emb_dim": 1024, "n_layers": 24, "n_heads": 16}, 12),
    "gpt2-large": ({"emb_dim": 1280, "n_layers": 36, "n_heads": 20}, 8),
    "gpt2-xl": ({"emb_dim": 1600, "n_layers": 48, "n_heads": 25}, 8),  # needs an 80 GB card
}
PRESETS = (*GPT2_SIZES, "demo")


def preset_files(name: str, dataset: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model.json, train.json) of a preset; `dataset` replaces its default dataset."""
    if name == "demo":
        steps_tokens = DEMO_STEPS * DEMO_TRAIN["microbatch_size"] * DEMO_MODEL["context_length"]
        return dict(DEMO_MODEL), {**DEMO_TRAIN, "dataset": dataset or "data/brown", "min_train_tokens": steps_tokens}
    if name not in GPT2_SIZES:
        raise UserError(f"--preset {name}: unknown; choose one of {', '.join(PRESETS)}")
    size, microbatch = GPT2_SIZES[name]
    model = {**BOOK_GPT2, **size}
    tokens = TOKENS_PER_PARAMETER * parameter_counts(ModelConfig(**model)).total
    steps_on_8 = math.ceil(tokens / (8 * microbatch * model["context_length"]))
    interval = (
        USERS_TRAIN["checkpoint_interval"]
        if name == "gpt2-small"
        else max(1, round(steps_on_8 / CHECKPOINTS_PER_RUN_ON_8_GPUS))
    )
    train = {
        "dataset": dataset or USERS_DATASET,
        "microbatch_size": microbatch,
        "min_train_tokens": tokens,
        "checkpoint_interval": interval,
        "start_train_token": 0,
        "start_val_token": 0,
        **BOOK_OPTIMIZER,
    }
    return model, train


def init_run(run_dir: Path, preset: str, dataset: str | None = None) -> dict[str, Any]:
    """Write RUN_DIR/model.json and train.json of `preset`; refuses when either exists (nothing is replaced)."""
    run_dir = Path(run_dir)
    model, train = preset_files(preset, dataset)
    existing = [run_dir / name for name in (MODEL_FILE, TRAIN_FILE) if (run_dir / name).exists()]
    if existing:
        raise UserError(
            *[
                f"{path}: already exists; gptlab init never overwrites a run's files (remove it or choose another RUN_DIR)"
                for path in existing
            ]
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a directory")
    validate_run_config(
        run_dir / MODEL_FILE, model, run_dir / TRAIN_FILE, train
    )  # a preset that does not validate is a bug here
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / MODEL_FILE, model)
    atomic_write_json(run_dir / TRAIN_FILE, train)
    return {
        "run_dir": str(run_dir),
        "preset": preset,
        "model": model,
        "train": train,
        "parameters": parameter_counts(ModelConfig(**model)).total,
    }
