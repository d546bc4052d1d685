"""`gptlab demo`: the whole path on the embedded Brown Corpus in a few minutes on a laptop-class CPU.

Prepare the corpus, write a small run, plan its token count from measured speed so training fits the
time budget, train, evaluate on the test split beside the unigram baseline, and sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from gptlab.bench import seconds_per_step
from gptlab.config import load_run_config
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
DEMO_TRAIN = {
    "dataset": "../data", "microbatch_size": 8, "learning_rate": 0.003, "weight_decay": 0.1,
    "weight_decay_params": "matrices", "precision": "bf16", "lr_schedule": "cosine", "warmup_period_percent": 5,
    "clipping_max_norm": 1.0, "validation_batches": 16, "validation_interval": 50,
}
MIN_STEPS = 20  # fewer steps than this cannot show learning


def run_demo(out_dir: Path, seconds: float = 180.0, seed: int = 42, show_progress: bool = True, steps: int | None = None) -> dict:
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
    atomic_write_json(run_dir / MODEL_FILE, DEMO_MODEL)
    atomic_write_json(run_dir / TRAIN_FILE, {**DEMO_TRAIN, "random_seed": seed})

    config = load_run_config(run_dir)
    tokens_per_step = config.train.microbatch_size * config.model.context_length
    if steps is None:
        step_seconds = seconds_per_step(config.model, config.train, steps=2)
        steps = max(MIN_STEPS, int(seconds * 0.9 / step_seconds))  # validation and checkpoints take the rest
        click.echo(f"Measured {step_seconds:.2f} s per step; training {steps} steps ({steps * tokens_per_step:,} tokens) to fit {seconds:.0f} s")
    atomic_write_json(run_dir / TRAIN_FILE, {**DEMO_TRAIN, "random_seed": seed, "min_train_tokens": steps * tokens_per_step,
                                               "checkpoint_interval": max(1, steps // 4)})

    summary = train_run(run_dir, show_progress=show_progress)
    evaluation = evaluate_run(run_dir, checkpoint="latest")
    unigram = unigram_cross_entropy(dataset.split("train"), dataset.split("test"), config.model.vocab_size, test_tokens=evaluation["tokens"] + 1)
    sample = generate_from_run(run_dir, seed=seed, checkpoint="latest")
    result = {
        "summary": {key: summary[key] for key in ("training_seconds", "tokens_seen", "tokens_per_second", "final_train_loss", "final_validation_loss")},
        "test_loss": evaluation["loss"], "unigram_test_loss": unigram, "beats_unigram": evaluation["loss"] < unigram,
        "test_tokens": evaluation["tokens"], "sample": sample["text"], "run_dir": str(run_dir),
    }
    atomic_write_json(out_dir / "demo.json", result)
    click.echo("")
    click.echo(f"Test loss: {evaluation['loss']:.4f} nats on {evaluation['tokens']:,} test tokens")
    click.echo(f"Unigram baseline (token frequencies of the train split) on the same tokens: {unigram:.4f} nats")
    click.echo(f"The model {'beats' if result['beats_unigram'] else 'does NOT beat'} the unigram baseline by {unigram - evaluation['loss']:.4f} nats")
    click.echo(f"Sample: {json.dumps(sample['text'])}")
    click.echo(f"Run files: {run_dir} (metrics.jsonl, summary.json, checkpoints/); all of the above in {out_dir / 'demo.json'}")
    return result
