"""FSDP2 sharding and activation checkpointing with real torchrun and gloo: the same numbers as DDP, the same checkpoints."""

import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from conftest import read_metrics, run_cli
from test_distributed import TORCHRUN, final_weights, torchrun, train_two_processes_and_one

from gptlab.config import ModelConfig, load_run_config
from gptlab.weights import build_model

pytestmark = pytest.mark.skipif(not shutil.os.path.exists(TORCHRUN), reason="torchrun not installed")

# 10 steps of 2 ranks x microbatch 4 x 2 accumulation steps; clipping low enough to act; checkpoints and
# validation at 0, 4, 8, 9.
TRAIN = {
    "min_train_tokens": 2 * 4 * 2 * 32 * 10,
    "gradient_accumulation_steps": 2,
    "checkpoint_interval": 4,
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


def cut_back_to(run_dir, last_step: int) -> str:
    """The run's folder as a run stopped after `last_step` leaves it; the name of the checkpoint kept."""
    kept = None
    for path in sorted((run_dir / "checkpoints").glob("*-iteration-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])):
        if int(path.name.rsplit("-", 1)[1]) > last_step:
            shutil.rmtree(path)
        else:
            kept = path.name
    (run_dir / "summary.json").unlink()
    return kept


@pytest.mark.slow
def test_fsdp_sigterm_then_resume_gives_the_uninterrupted_weights(runs, brown_dataset):
    """torchrun is sent SIGTERM mid-run, as a cloud preemption does; it forwards it to both ranks, which finish
    the step and write a checkpoint whose resume state each rank wrote itself; the resume ends on the weights
    of the uninterrupted FSDP run."""
    from conftest import write_run

    from gptlab.runtime.checkpoint import find_resumable_checkpoint

    _, whole = runs
    run = write_run(
        whole.parent / "fsdp-preempted",
        brown_dataset,
        train={**TRAIN, "parallelism": "fsdp", "activation_checkpointing": True, "log_interval": 1},
    )
    process = subprocess.Popen(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "gptlab", "train", str(run), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 180
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(read_metrics(run)) >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=180)
    assert "Stopped by SIGTERM after step" in stdout, stderr[-3000:]
    stopped_at = int(stdout.split("Stopped by SIGTERM after step ")[1].split(";")[0])
    assert 1 <= stopped_at < 9 and not (run / "summary.json").exists()
    latest = find_resumable_checkpoint(run, "latest")
    assert latest.name.endswith(f"-iteration-{stopped_at}")
    resume = latest.path / "resume"
    assert sorted(p.name for p in resume.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (latest.path / "optimizer.pt").exists()  # no rank gathered the whole AdamW state
    assert "resume/__1_0.distcp" in (latest.path / "checksums.sha256").read_text()
    assert not list((run / "checkpoints").glob(".tmp*"))

    result = torchrun(2, "train", str(run), "--no-progress", "--resume", "latest")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {stopped_at + 1}" in result.stdout
    assert [r["loss"] for r in read_metrics(run)] == [r["loss"] for r in read_metrics(whole)]
    expected, resumed = final_weights(whole), final_weights(run)
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


@pytest.mark.slow
def test_fsdp_resume_state_reshards_to_one_process_with_the_same_global_batch(runs):
    """2 ranks x 2 microbatches resumed as 1 process x 4: the same tokens per step, the sharded AdamW state read
    whole; the numbers match the uninterrupted run within float tolerance (sums in another order). Without the
    new gradient_accumulation_steps the global batch would change: refused in one line."""
    _, whole = runs
    split = whole.parent / "fsdp-one-process"
    shutil.copytree(whole, split, symlinks=True)
    kept = cut_back_to(split, 8)  # one step left to take: resharding is tested by the load and that step
    refused = run_cli("train", str(split), "--no-progress", "--resume", kept)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert (
        "--set train.gradient_accumulation_steps=4" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    )

    result = run_cli(
        "train", str(split), "--no-progress", "--resume", kept, "--set", "train.gradient_accumulation_steps=4"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming on 1 processes a run trained on 2" in result.stdout and "no longer bit-identical" in result.stdout
    for a, b in zip(read_metrics(whole), read_metrics(split)):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    expected, resumed = final_weights(whole), final_weights(split)
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_damaged_or_missing_shard_is_refused_naming_it(runs, tmp_path):
    from gptlab.errors import UserError
    from gptlab.runtime.checkpoint import find_resumable_checkpoint

    _, whole = runs
    for damage in ("flip", "remove", "add"):
        run = tmp_path / damage
        shutil.copytree(whole, run, symlinks=True)
        resume = run / "checkpoints" / "latest" / "resume"
        if damage == "flip":
            with open(resume / "__1_0.distcp", "r+b") as handle:
                handle.seek(1000)
                byte = handle.read(1)
                handle.seek(1000)
                handle.write(bytes([byte[0] ^ 1]))
        elif damage == "remove":
            (resume / "__1_0.distcp").unlink()
        else:
            shutil.copy(resume / "__1_0.distcp", resume / "__2_0.distcp")
        with pytest.raises(UserError) as refused:
            find_resumable_checkpoint(run, "latest")
        message = refused.value.lines[0]
        assert f"resume/__{2 if damage == 'add' else 1}_0.distcp" in message, message
        assert "the newest good checkpoint is" in message and "-iteration-8" in message


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


@pytest.mark.slow
def test_fsdp_with_experts_trains_as_one_process(make_run):
    """Mixture-of-experts blocks (router losses, routing statistics across ranks) sharded on 2 ranks give the
    numbers of one process with twice the accumulation, which is what DDP gives (test_distributed)."""
    common = {"min_train_tokens": 4 * 32 * 2 * 3, "checkpoint_interval": 100, "validation_batches": 0}
    moe = {"moe": {"num_experts": 4, "num_active_experts": 2}}
    two = make_run("two", model=moe, train={**common, "parallelism": "fsdp"})
    one = make_run("one", model=moe, train={**common, "gradient_accumulation_steps": 2})
    two_records, one_records = train_two_processes_and_one(two, one)
    assert [r["step"] for r in two_records] == list(range(3))
    for a, b in zip(two_records, one_records):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    two_weights, one_weights = final_weights(two), final_weights(one)
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fsdp_in_fp16_trains_as_one_process(make_run):
    """fp16 with FSDP's ShardedGradScaler (it all-reduces whether any rank's shards overflowed, so every rank
    lowers its scale together): the losses and skipped steps of one process with the same global batch. The
    weights are not compared: in fp16, AdamW turns the rounding of near-zero gradients into lr-sized steps
    (measured with experts: up to 0.009 apart after 4 steps) while the losses agree to 2e-5."""
    common = {"min_train_tokens": 4 * 32 * 2 * 3, "checkpoint_interval": 100, "validation_batches": 0}
    common["precision"] = "fp16"
    two = make_run("two", train={**common, "parallelism": "fsdp"})
    one = make_run("one", train={**common, "gradient_accumulation_steps": 2})
    two_records, one_records = train_two_processes_and_one(two, one)
    assert [r["skipped"] for r in two_records] == [r["skipped"] for r in one_records]
    assert not all(r["skipped"] for r in one_records)
    for a, b in zip(two_records, one_records):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.slow
def test_resume_metadata_holding_foreign_pickled_objects_is_refused(runs, tmp_path):
    """torch.distributed.checkpoint's .metadata is a pickle: one that would construct anything but its own classes is
    refused before any object is built (as torch.load(weights_only=True) refuses for the .pt files)."""
    import pickle

    from gptlab.errors import UserError
    from gptlab.runtime.checkpoint import find_resumable_checkpoint, write_checksums
    from gptlab.train.loop import train_run

    _, whole = runs
    run = tmp_path / "foreign"
    shutil.copytree(whole, run, symlinks=True)
    latest = (run / "checkpoints" / "latest").resolve()
    (latest / "resume" / ".metadata").write_bytes(pickle.dumps(shutil.rmtree))  # loading it would import and call
    write_checksums(latest)  # deliberately made, not damaged: the checksums match
    find_resumable_checkpoint(run, "latest")  # the files are whole
    with pytest.raises(UserError) as refused:
        train_run(run, resume="latest", show_progress=False, overrides={"train": {"gradient_accumulation_steps": 4}})
    message = refused.value.lines[0]
    assert "resume: corrupt or unreadable sharded resume state (refused: it holds a pickled shutil.rmtree" in message
