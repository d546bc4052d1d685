"""`gptlab demo`: the whole path on the embedded Brown Corpus in a few minutes on a laptop-class CPU.

Prepare the corpus, write a small run, plan its token count from measured speed so training fits the
time budget, train, evaluate on the test split beside the unigram baseline, and sample.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import click

from gptlab.bench import seconds_per_step
from gptlab.config import ModelConfig, TrainConfig, load_run_config
from gptlab.data.prepare import prepare_dataset
from gptlab.data.tokens import TokenDataset
from gptlab.evaluate.loss import evaluate_run
from gptlab.evaluate.sample import generate_from_run
from gptlab.evaluate.unigram import unigram_cross_entropy
from gptlab.files import atomic_write_json
from gptlab.rundir import CHECKPOINTS, MODEL_FILE, TRAIN_FILE
from gptlab.train.loop import train_run

DEMO_MODEL = {
    "vocab_size": 50257, "context_length": 128, "emb_dim": 256, "n_heads": 4, "n_layers": 4,
    "drop_rate": 0.0, "qkv_bias": False, "tie_weights": True, "init": "gpt2",
}
# 'auto': bf16 where this machine runs it faster (a GPU, or a CPU with native bf16), fp32 elsewhere.
DEMO_TRAIN = {
    "dataset": "../data", "microbatch_size": 8, "learning_rate": 0.003, "weight_decay": 0.1,
    "weight_decay_params": "matrices", "precision": "auto", "lr_schedule": "cosine", "warmup_period_percent": 5,
    "clipping_max_norm": 1.0, "validation_batches": 16, "validation_interval": 50,
}
# Smaller models for slower machines, tried in order until MIN_STEPS fit the budget. The GPT-2 vocabulary
# stays (the unigram comparison needs it), so the head dominates and width shrinks the step most.
SMALLER_MODELS = (
    {"emb_dim": 128, "n_heads": 4, "n_layers": 2, "context_length": 64},
    {"emb_dim": 64, "n_heads": 2, "n_layers": 1, "context_length": 64},
)
MIN_STEPS = 100  # the demo's model reliably beats the unigram baseline from about here on
TRAINING_SHARE = 0.9  # of --seconds; validation, checkpoints, evaluation and sampling take the rest


def plan_demo(seconds: float, measure: Callable[[ModelConfig, TrainConfig], float] | None = None) -> tuple[dict, int, list[str]]:
    """The largest demo model of which MIN_STEPS fit `seconds`, and its step count, from measured step times.

    Returns (model.json, steps, lines to print). When even the smallest model cannot fit MIN_STEPS, it trains
    MIN_STEPS of the smallest anyway: fewer would not learn, and the lines say how far over budget that goes.
    """
    if measure is None:
        measure = lambda model, train: seconds_per_step(model, train, steps=2)  # noqa: E731
    lines = []
    train = TrainConfig(**DEMO_TRAIN)
    for index, changes in enumerate(({},) + SMALLER_MODELS):
        model = {**DEMO_MODEL, **changes}
        config = ModelConfig(**model)
        step_seconds = measure(config, train)
        steps = int(seconds * TRAINING_SHARE / step_seconds)
        shape = f"{config.n_layers} layer{'s' if config.n_layers != 1 else ''} x {config.emb_dim} wide, context {config.context_length}"
        lines.append(f"Measured {step_seconds:.2f} s per step for {shape}")
        if steps >= MIN_STEPS:
            if index > 0:
                lines.append(f"Shrunk the model to {shape} so that at least {MIN_STEPS} steps fit {seconds:.0f} s on this machine")
            return model, steps, lines
    overrun = MIN_STEPS * step_seconds / (seconds * TRAINING_SHARE)
    lines.append(f"Even the smallest demo model needs {MIN_STEPS * step_seconds:.0f} s for the {MIN_STEPS} steps it takes to learn: "
                 f"{overrun:.1f}x the budget of {seconds:.0f} s on this machine")
    return model, MIN_STEPS, lines


def run_demo(out_dir: Path, seconds: float = 180.0, seed: int = 42, show_progress: bool = True, steps: int | None = None) -> dict:
    started = time.perf_counter()
    out_dir = Path(out_dir)
    data_dir, run_dir = out_dir / "data", out_dir / "run"
    if not (data_dir / "train.safetensors").is_file():
        click.echo("Preparing the embedded Brown Corpus (500 documents) ...")
        prepare_dataset("brown", data_dir, show_progress=show_progress)
    dataset = TokenDataset(data_dir)

    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / CHECKPOINTS).exists():
        import shutil

        shutil.rmtree(run_dir)  # the demo's own run, rebuilt each time: the prepared corpus is kept
        run_dir.mkdir(parents=True)

    model, steps_given = DEMO_MODEL, steps is not None
    if steps is None:
        model, steps, lines = plan_demo(seconds)
        for line in lines:
            click.echo(line)
    tokens_per_step = DEMO_TRAIN["microbatch_size"] * model["context_length"]
    click.echo(f"Training {steps} steps ({steps * tokens_per_step:,} tokens)")
    atomic_write_json(run_dir / MODEL_FILE, model)
    atomic_write_json(run_dir / TRAIN_FILE, {**DEMO_TRAIN, "random_seed": seed, "min_train_tokens": steps * tokens_per_step,
                                               "checkpoint_interval": max(1, steps // 4)})
    config = load_run_config(run_dir)

    summary = train_run(run_dir, show_progress=show_progress)
    evaluation = evaluate_run(run_dir, checkpoint="latest")
    unigram = unigram_cross_entropy(dataset.split("train"), dataset.split("test"), config.model.vocab_size, test_tokens=evaluation["tokens"] + 1)
    sample = generate_from_run(run_dir, seed=seed, checkpoint="latest")
    result = {
        "summary": {key: summary[key] for key in ("training_seconds", "tokens_seen", "tokens_per_second", "final_train_loss", "final_validation_loss")},
        "test_loss": evaluation["loss"], "unigram_test_loss": unigram, "beats_unigram": evaluation["loss"] < unigram,
        "test_tokens": evaluation["tokens"], "sample": sample["text"], "run_dir": str(run_dir),
        "model": model, "steps": steps, "precision": summary["precision"], "precision_reason": summary["precision_reason"],
        "budget_seconds": seconds, "demo_seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(out_dir / "demo.json", result)
    click.echo("")
    click.echo(f"Test loss: {evaluation['loss']:.4f} nats on {evaluation['tokens']:,} test tokens")
    click.echo(f"Unigram baseline (token frequencies of the train split) on the same tokens: {unigram:.4f} nats")
    click.echo(f"The model {'beats' if result['beats_unigram'] else 'does NOT beat'} the unigram baseline by {unigram - evaluation['loss']:.4f} nats")
    click.echo(f"Sample: {json.dumps(sample['text'])}")
    click.echo(f"The demo took {result['demo_seconds']:.0f} s" + ("" if steps_given else f" of its {seconds:.0f} s budget"))
    click.echo(f"Run files: {run_dir} (metrics.jsonl, summary.json, checkpoints/); all of the above in {out_dir / 'demo.json'}")
    return result
