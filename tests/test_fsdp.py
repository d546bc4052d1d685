"""FSDP2 sharding and activation checkpointing with real torchrun and gloo: the same numbers as DDP, the same checkpoints."""

import shutil

import pytest
import torch
from conftest import read_metrics, run_cli
from test_distributed import TORCHRUN, final_weights, torchrun  # noqa: F401 (TORCHRUN: the skip condition)

from gptlab.config import ModelConfig, load_run_config
from gptlab.weights import build_model

pytestmark = pytest.mark.skipif(not shutil.os.path.exists(TORCHRUN), reason="torchrun not installed")

# 10 steps of 2 ranks x microbatch 4 x 2 accumulation steps; clipping low enough to act; validation at 0, 5, 9.
TRAIN = {
    "min_train_tokens": 2 * 4 * 2 * 32 * 10,
    "gradient_accumulation_steps": 2,
    "checkpoint_interval": 5,
    "clipping_max_norm": 0.5,
    "validation_batches": 2,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, brown_dataset):
    """One DDP run and one FSDP run with activation checkpointing, shared by the assertions below."""
    from conftest import write_run

    base = tmp_path_factory.mktemp("fsdp")
    ddp = write_run(base / "ddp", brown_dataset, train=TRAIN)
    fsdp = write_run(
        base / "fsdp", brown_dataset, train={**TRAIN, "parallelism": "fsdp", "activation_checkpointing": True}
    )
    for run_dir in (ddp, fsdp):
        result = torchrun(2, "train", str(run_dir), "--no-progress")
        assert result.returncode == 0, result.stderr[-3000:]
    return ddp, fsdp


@pytest.mark.slow
def test_fsdp_with_activation_checkpointing_trains_as_ddp(runs):
    ddp, fsdp = runs
    ddp_records, fsdp_records = read_metrics(ddp), read_metrics(fsdp)
    assert [r["step"] for r in fsdp_records] == list(range(10))
    assert sum(r["clipped"] for r in fsdp_records) > 0  # clipping acted, on the global norm
    for a, b in zip(ddp_records, fsdp_records):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        # the gradients are equal; their float32 norm sums shards in another order (measured: up to 2e-4 relative)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
        assert ("validation_loss" in a) == ("validation_loss" in b)
        if "validation_loss" in a:
            assert b["validation_loss"] == pytest.approx(a["validation_loss"], abs=1e-5)
    expected, sharded = final_weights(ddp), final_weights(fsdp)
    assert expected.keys() == sharded.keys()
    for name in expected:
        torch.testing.assert_close(sharded[name], expected[name], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fsdp_checkpoint_loads_strictly_into_the_book_model(runs):
    from llms_from_scratch.ch04 import GPTModel
    from safetensors.torch import load_model

    _, fsdp = runs
    config = load_run_config(fsdp).model
    book = GPTModel(
        {
            "vocab_size": config.vocab_size,
            "context_length": config.context_length,
            "emb_dim": config.emb_dim,
            "n_heads": config.n_heads,
            "n_layers": config.n_layers,
            "drop_rate": 0.0,
            "qkv_bias": config.qkv_bias,
        }
    )
    load_model(book, str(fsdp / "checkpoints" / "latest" / "model.safetensors"), strict=True)
    book.eval()
    ours = build_model(config, torch.device("cpu"))
    from gptlab.weights import load_book_safetensors

    load_book_safetensors(ours, fsdp / "checkpoints" / "latest" / "model.safetensors")
    ours.eval()
    tokens = torch.randint(0, config.vocab_size, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(book(tokens), ours(tokens), rtol=1e-4, atol=1e-4)
    assert isinstance(config, ModelConfig)


@pytest.mark.slow
def test_fsdp_resume_after_the_fifth_step_gives_the_uninterrupted_weights(runs):
    """The FSDP run's folder cut back to its step-5 checkpoint, as a run stopped by SIGTERM after step 5 leaves it."""
    _, whole = runs
    split = whole.parent / "fsdp-split"
    shutil.copytree(whole, split, symlinks=True)
    kept = None
    for path in sorted((split / "checkpoints").glob("*-iteration-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])):
        if int(path.name.rsplit("-", 1)[1]) > 5:
            shutil.rmtree(path)
        else:
            kept = path.name
    (split / "summary.json").unlink()
    result = torchrun(2, "train", str(split), "--no-progress", "--resume", kept)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at step 6" in result.stdout
    assert [r["loss"] for r in read_metrics(split)] == [r["loss"] for r in read_metrics(whole)]
    expected, resumed = final_weights(whole), final_weights(split)
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


def test_activation_checkpointing_changes_no_number_in_one_process(make_run):
    """And parallelism 'fsdp' in one process is the plain model: a train.json runs unchanged on 1 or N processes."""
    train = {"min_train_tokens": 4 * 32 * 4, "checkpoint_interval": 100}
    plain = make_run("plain", train=train)
    recomputed = make_run("recomputed", train={**train, "activation_checkpointing": True, "parallelism": "fsdp"})
    for run_dir in (plain, recomputed):
        result = run_cli("train", str(run_dir), "--no-progress")
        assert result.returncode == 0, result.stderr[-3000:]
    assert [r["loss"] for r in read_metrics(plain)] == [r["loss"] for r in read_metrics(recomputed)]
    a, b = final_weights(plain), final_weights(recomputed)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_activation_checkpointing_with_experts_is_one_line(make_run):
    run_dir = make_run(
        model={"moe": {"num_experts": 4, "num_active_experts": 2}}, train={"activation_checkpointing": True}
    )
    result = run_cli("train", str(run_dir), "--no-progress")
    assert result.returncode == 2
    assert "activation_checkpointing" in result.stderr and "Traceback" not in result.stderr


def test_unknown_parallelism_is_one_line(make_run):
    result = run_cli("train", str(make_run()), "--no-progress", "--set", "train.parallelism=zero3")
    assert result.returncode == 2
    assert "parallelism" in result.stderr and "Traceback" not in result.stderr


def test_plan_shards_state_and_recomputes_activations():
    from gptlab.bench.plan import estimate_memory
    from gptlab.config import TrainConfig

    xl = ModelConfig(vocab_size=50257, context_length=1024, emb_dim=1600, n_heads=25, n_layers=48, drop_rate=0.0)
    common = {"dataset": "HuggingFaceFW/fineweb", "microbatch_size": 12, "precision": "bf16"}
    ddp = estimate_memory(xl, TrainConfig(**common), "bf16", 8)
    fsdp = estimate_memory(xl, TrainConfig(**common, parallelism="fsdp"), "bf16", 8)
    both = estimate_memory(xl, TrainConfig(**common, parallelism="fsdp", activation_checkpointing=True), "bf16", 8)
    for part in ("weights", "gradients", "adamw_state"):
        assert fsdp[part] == ddp[part] // 8
    assert fsdp["ddp_gradient_buckets"] == fsdp["autocast_weight_copies"] == 0 < fsdp["fsdp_gathered_weights"]
    assert fsdp["activations"] == ddp["activations"] > 5 * both["activations"]
    assert ddp["total"] > 60 * 10**9 and both["total"] < 40 * 10**9  # the target: XL on 40 GB cards
