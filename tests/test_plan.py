"""`gptlab train --dry-run`: the plan of a run before a GPU is rented; it writes nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import read_metrics, run_cli

from gptlab.bench.flops import flops_per_token
from gptlab.bench.plan import estimate_memory, plan_run
from gptlab.config import ModelConfig, TrainConfig
from gptlab.errors import UserError
from gptlab.model import GPT, parameter_counts
from gptlab.presets import USERS_MODEL, USERS_TRAIN


def _listing(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under the roots with its size and modification time: what a write would change."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            stat = path.lstat()
            found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def _users_run(tmp_path: Path, model: dict | None = None, train: dict | None = None) -> Path:
    run_dir = tmp_path / "runs" / "baseline"
    run_dir.mkdir(parents=True)
    (run_dir / "model.json").write_text(json.dumps({**USERS_MODEL, **(model or {})}))
    (run_dir / "train.json").write_text(json.dumps({**USERS_TRAIN, **(train or {})}))
    return run_dir


def test_the_users_8xa100_baseline_plans_and_writes_nothing(tmp_path):
    run_dir = _users_run(tmp_path)
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    before = _listing(tmp_path)
    result = run_cli(
        "train", str(run_dir), "--dry-run", "--world-size", "8", "--datasets-dir", str(datasets), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert _listing(tmp_path) == before
    text = result.stdout
    steps = math.ceil(3260190720 / (8 * 12 * 1024))
    assert f"steps        {steps:,}" in text
    assert "global batch 98,304 tokens = world 8 x microbatch 12 x accumulation 1 x context 1,024" in text
    assert f"would download gpjt/fineweb-gpt2-tokens into {datasets / 'gpjt/fineweb-gpt2-tokens'}" in text
    # every step s with s % 617 == 0 (step 0 included) and the last step: the loop's rule
    assert f"checkpoints  {len(set(range(0, steps, 617)) | {steps - 1})}" in text
    assert "precision    fp16" in text  # use_amp absent: their harness's fp16 on GPUs
    assert "A100 40GB" in text and "H200 141GB" in text and "RTX 4090 24GB" in text
    print(text)  # the lead quotes it


def test_json_plan_matches_the_formulas(tmp_path):
    run_dir = _users_run(tmp_path)
    plan = plan_run(run_dir, world_size=8, datasets_dir=tmp_path / "datasets", mfu=0.5)
    model = ModelConfig(**USERS_MODEL)
    assert plan["flops_per_token"] == flops_per_token(model)
    assert plan["total_flops"] == flops_per_token(model) * plan["tokens"]
    a100 = next(row for row in plan["cards"] if row["card"] == "A100 80GB")
    expected_hours = plan["tokens"] / (0.5 * 312e12 / flops_per_token(model) * 8) / 3600
    assert a100["hours"] == pytest.approx(expected_hours, rel=1e-3)
    assert a100["usd"] == pytest.approx(expected_hours * 8 * a100["usd_per_gpu_hour"], rel=1e-3)
    assert plan["memory_per_gpu"]["ddp_gradient_buckets"] > 0  # 8 processes


def test_parameter_counts_match_the_built_model():
    for config in (
        ModelConfig(**{**USERS_MODEL, "n_layers": 2}),
        ModelConfig(**{**USERS_MODEL, "n_layers": 1, "tie_weights": True, "qkv_bias": True}),
    ):
        for multiple in (1, 64):
            model = GPT(config, vocab_multiple=multiple)
            assert parameter_counts(config, vocab_multiple=multiple).total == sum(p.numel() for p in model.parameters())


def test_memory_estimate_follows_precision_microbatch_and_the_fused_head():
    model = ModelConfig(**USERS_MODEL)
    base = TrainConfig(dataset="d", microbatch_size=12)
    fp32 = estimate_memory(model, base, "fp32", 1)
    bf16 = estimate_memory(model, base, "bf16", 1)
    double = estimate_memory(model, base.model_copy(update={"microbatch_size": 24}), "bf16", 1)
    unfused = estimate_memory(model, base.model_copy(update={"fused_cross_entropy": False}), "bf16", 1)
    eager = base.model_copy(update={"compile": False})
    # eager, bf16 keeps 2-byte activations; compiled (the CUDA default) it kept float32-wide ones on an H200
    assert (
        estimate_memory(model, eager, "bf16", 1)["activations"]
        < estimate_memory(model, eager, "fp32", 1)["activations"]
    )
    assert bf16["activations"] == fp32["activations"]
    assert double["activations"] == pytest.approx(2 * bf16["activations"], rel=0.01)
    assert unfused["output_head"] > 10 * bf16["output_head"]  # B x T x V logits instead of one chunk
    assert fp32["weights"] + fp32["gradients"] + fp32["adamw_state"] == 16 * parameter_counts(model, 64).total


@pytest.mark.slow
def test_a_local_dataset_plan_counts_what_training_then_does(make_run):
    run_dir = make_run(train={"checkpoint_interval": 5, "validation_interval": 4, "min_train_tokens": 4 * 32 * 11})
    plan = plan_run(run_dir)
    assert plan["dataset"]["status"].startswith("found at")
    assert plan["steps"] == 11 and plan["tokens"] == 11 * 4 * 32
    result = run_cli("train", str(run_dir), "--no-progress")
    assert result.returncode == 0, result.stderr
    checkpoints = [p for p in (run_dir / "checkpoints").iterdir() if not p.is_symlink()]
    assert len(checkpoints) == plan["checkpoints"]  # steps 0, 5, 10
    assert (
        sum(1 for record in read_metrics(run_dir) if record.get("validation_loss") is not None) == plan["validations"]
    )  # 0, 4, 8, 10


def test_users_newer_configs_plan(tmp_path):
    run_dir = _users_run(
        tmp_path,
        model={"context_length": 3072},
        train={
            "microbatch_size": 2,
            "gradient_accumulation_steps": 96,
            "validation_interval": 100,
            "validation_batches": 40,
            "checkpoint_interval": 100,
            "precision": "bf16",
        },
    )
    plan = plan_run(run_dir, world_size=8, datasets_dir=tmp_path / "datasets")
    assert plan["global_batch_tokens"] == 8 * 2 * 96 * 3072
    assert plan["validations"] == len(set(range(0, plan["steps"], 100)) | {plan["steps"] - 1})


def test_the_users_moe_config_plans_with_total_and_active_parameters(tmp_path):
    dense = plan_run(_users_run(tmp_path / "dense"), datasets_dir=tmp_path / "datasets")
    run_dir = _users_run(tmp_path / "moe", model={"moe": {"num_experts": 6, "num_active_experts": 2}})
    plan = plan_run(run_dir, datasets_dir=tmp_path / "datasets")
    width, layers = USERS_MODEL["emb_dim"], USERS_MODEL["n_layers"]
    expert = 8 * width * width + 5 * width  # the book's FeedForward: two Linear layers with biases
    assert plan["parameters"]["total"] == dense["parameters"]["total"] + layers * (5 * expert + 6 * width)
    assert plan["parameters"]["matmul"] == dense["parameters"]["matmul"] + layers * (8 * width * width + 6 * width)
    result = run_cli("train", str(run_dir), "--dry-run", "--datasets-dir", str(tmp_path / "datasets"))
    assert result.returncode == 0 and f"{plan['parameters']['matmul']:,} in matmuls per token" in result.stdout


def test_bench_file_sets_the_speed_of_its_card(tmp_path):
    run_dir = _users_run(tmp_path, train={"precision": "bf16"})
    bench = {
        "device_name": "NVIDIA H100 80GB HBM3",
        "precision": "bf16",
        "tokens_per_second": 400000.0,
        "mfu": 0.42,
        "microbatch_size": 12,
        "config": {"model": USERS_MODEL},
    }
    bench_file = tmp_path / "bench.json"
    bench_file.write_text(json.dumps(bench))
    plan = plan_run(run_dir, world_size=8, datasets_dir=tmp_path / "datasets", bench_file=bench_file)
    h100 = next(row for row in plan["cards"] if row["card"] == "H100 80GB")
    assert h100["tokens_per_second"] == 8 * 400000
    assert plan["mfu"] == 0.42 and plan["bench_differs_in"] == []
    (tmp_path / "compare.json").write_text(json.dumps({"columns": []}))
    with pytest.raises(UserError, match="--bench"):
        plan_run(run_dir, bench_file=tmp_path / "compare.json", datasets_dir=tmp_path / "datasets")


def test_planning_options_without_dry_run_are_refused(tmp_path):
    run_dir = _users_run(tmp_path)
    result = run_cli("train", str(run_dir), "--world-size", "8")
    assert result.returncode == 2 and "only with --dry-run" in result.stderr


@pytest.mark.parametrize(
    "model, train",
    [
        ({"context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0}, {"microbatch_size": 4}),
        (
            {"context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0},
            {"microbatch_size": 4, "fused_cross_entropy": True},
        ),
        (
            {"context_length": 128, "emb_dim": 128, "n_heads": 4, "n_layers": 4, "drop_rate": 0.1, "vocab_size": 2048},
            {"microbatch_size": 8},
        ),
    ],
)
def test_memory_estimate_is_within_a_quarter_of_a_measured_step(model, train):
    """The formula against the peak tensor bytes of a real training step on this CPU (bench's tracker)."""
    from gptlab.bench.timing import measure
    from gptlab.config import RunConfig

    model_config, train_config = (
        ModelConfig(**model),
        TrainConfig(dataset="unused", device="cpu", precision="fp32", **train),
    )
    measured = measure(RunConfig(model=model_config, train=train_config), steps=1, warmup_steps=1, phase_steps=0)[
        "peak_memory_bytes"
    ]
    estimated = estimate_memory(model_config, train_config, "fp32", 1, device_type="cpu")["total"]
    assert 0.75 < estimated / measured < 1.25, (estimated, measured)


@pytest.mark.parametrize("total_steps", [1, 2, 7, 12, 13])
@pytest.mark.parametrize("intervals", [(None, None), (1, None), (3, None), (4, 5), (None, 2), (5, 5)])
def test_the_plan_counts_the_steps_the_loop_checkpoints_and_validates_on(total_steps, intervals):
    from gptlab.train.cadence import Cadence

    cadence = Cadence(total_steps, *intervals)
    due = [cadence.checkpoint_due(step) for step in range(total_steps)]  # as fit() asks, step by step
    assert cadence.checkpoints() == sum(due)
    assert cadence.validations() == sum(cadence.validation_due(step, due[step]) for step in range(total_steps))
