"""Each training switch our users flip does precisely what it says, and is recorded."""

import json
import math

import pytest
import torch
from conftest import read_metrics, run_cli
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from gptlab.config import TrainConfig
from gptlab.runtime.precision import clip_to_norm, global_grad_norm
from gptlab.train.loop import forward_backward, optimizer_step, read_back, setup, train_run
from gptlab.train.optim import learning_rate_at, parameter_groups


def parameters_of(run):
    return [p for group in run.optimizer.param_groups for p in group["params"]]


# --- precision -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "precision, matmul, logits_dtype, has_scaler",
    [
        ("fp32", "highest", torch.float32, False),
        ("tf32", "high", torch.float32, False),
        ("fp16", "high", torch.float16, True),
        ("bf16", "high", torch.bfloat16, False),
    ],
)
def test_precision_sets_numerics(make_run, precision, matmul, logits_dtype, has_scaler):
    run = setup(make_run(train={"precision": precision}), show_progress=False)
    assert torch.get_float32_matmul_precision() == matmul
    assert (run.precision.scaler is not None) == has_scaler
    inputs, _ = run.reader.read(0)
    with run.precision.autocast():
        assert run.model(inputs).dtype == logits_dtype
    assert all(p.dtype == torch.float32 for p in run.model.parameters())  # weights stay float32 in every mode


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_train_and_are_recorded(make_run, precision):
    run = make_run(train={"precision": precision, "learning_rate": 0.01, "min_train_tokens": 4 * 32 * 25})
    summary = train_run(run, show_progress=False)
    losses = [r["loss"] for r in read_metrics(run) if r["loss"] is not None]
    assert (
        summary["precision"] == precision and json.loads((run / "summary.json").read_text())["precision"] == precision
    )
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    if precision == "fp16":
        assert (run / "checkpoints" / "latest" / "scaler.pt").is_file()
        # GradScaler starts at 2**16 and halves on every overflow: those skipped steps are counted.
        assert summary["skipped_steps"] == sum(r["skipped"] for r in read_metrics(run))


def test_users_use_amp_false_config_trains_in_full_fp32(make_run):
    run = make_run(train={"precision": None, "use_amp": False})
    summary = train_run(run, show_progress=False)
    assert summary["precision"] == "fp32" and torch.get_float32_matmul_precision() == "highest"


# --- non-finite gradients --------------------------------------------------------------------------


@pytest.mark.parametrize("bad_value", [float("inf"), float("nan")])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_non_finite_gradient_skips_the_step_entirely(make_run, bad_value, precision):
    run = setup(make_run(train={"precision": precision}), show_progress=False)
    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    scale_before = run.precision.scaler.get_scale() if run.precision.scaler else None
    loss = forward_backward(run, 0)
    run.model.h[1].mlp.c_fc.weight.grad[3, 5] = bad_value
    (outcome,) = read_back([optimizer_step(run, loss)])
    assert outcome["skipped"] and not outcome["clipped"]
    for name, p in run.model.named_parameters():
        assert torch.equal(p, before[name]), name
    for state in run.optimizer.state_dict()["state"].values():  # AdamW's moments and step count were not touched either
        assert float(state["step"]) == 0 and torch.count_nonzero(state["exp_avg"]) == 0
    if scale_before is not None:
        assert run.precision.scaler.get_scale() == scale_before / 2
    (outcome,) = read_back([optimizer_step(run, forward_backward(run, 1))])
    assert not outcome["skipped"]
    assert not torch.equal(run.model.h[1].mlp.c_fc.weight, before["h.1.mlp.c_fc.weight"])


def test_fused_check_agrees_with_a_per_parameter_scan():
    parameters = [torch.nn.Parameter(torch.randn(n)) for n in (3, 100, 7)]
    for p in parameters:
        p.grad = torch.randn_like(p)
    expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in parameters))
    assert float(global_grad_norm(parameters)) == pytest.approx(expected, rel=1e-5)
    parameters[1].grad[50] = float("nan")
    assert not math.isfinite(float(global_grad_norm(parameters)))
    parameters[1].grad[50] = -float("inf")
    assert not math.isfinite(float(global_grad_norm(parameters)))


def test_divergence_stops_training_and_keeps_the_last_checkpoint(make_run):
    run = make_run(
        train={
            "learning_rate": 1e30,
            "max_consecutive_skipped_steps": 3,
            "checkpoint_interval": 100,
            "min_train_tokens": 4 * 32 * 20,
        }
    )
    result = run_cli("train", str(run), "--no-progress")
    assert result.returncode == 3, result.stderr
    assert "3 steps in a row had non-finite gradients or loss" in result.stderr and "Traceback" not in result.stderr
    checkpoints = [p.name for p in (run / "checkpoints").glob("*-iteration-*")]
    assert len(checkpoints) == 1 and checkpoints[0].endswith("-iteration-0")  # written before the blow-up, left alone
    records = read_metrics(run)
    assert [r["skipped"] for r in records] == [False, True, True, True]
    assert records[-1]["loss"] is None  # a NaN loss is recorded as null, never as invalid JSON


# --- gradient clipping -------------------------------------------------------------------------------


def test_clipping_rescales_to_the_max_norm_and_is_recorded(make_run):
    parameters = [torch.nn.Parameter(torch.zeros(10)) for _ in range(3)]
    for p in parameters:
        p.grad = torch.full((10,), 2.0)
    clip_to_norm(parameters, 1.5, global_grad_norm(parameters))
    assert float(global_grad_norm(parameters)) == pytest.approx(1.5, rel=1e-5)

    run = make_run(train={"clipping_max_norm": 0.05, "checkpoint_interval": 5})
    summary = train_run(run, show_progress=False)
    records = read_metrics(run)
    assert all(r["clipped"] and r["grad_norm"] > 0.05 for r in records)  # the logged norm is before clipping
    meta = json.loads((run / "checkpoints" / "latest" / "meta.json").read_text())
    assert meta["frac_clipped"] == 1.0 and meta["max_grad_norms"] >= meta["avg_grad_norms"] > 0.05
    assert summary["clipped_fraction"] == 1.0

    unclipped = make_run("loose", train={"clipping_max_norm": 1e6})
    assert train_run(unclipped, show_progress=False)["clipped_fraction"] == 0.0
    assert not any(r["clipped"] for r in read_metrics(unclipped))


# --- optimisation -------------------------------------------------------------------------------------


def test_weight_decay_params_matrices_excludes_biases_norms_and_embeddings(make_run):
    run = setup(make_run(model={"qkv_bias": True}), show_progress=False)
    names = {id(p): name for name, p in run.model.named_parameters()}
    decayed, kept = parameter_groups(run.model, 0.1, "matrices")
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
    decayed_names = {names[id(p)] for p in decayed["params"]}
    kept_names = {names[id(p)] for p in kept["params"]}
    assert (
        "h.0.attn.c_attn.weight" in decayed_names
        and "lm_head.weight" in decayed_names
        and "h.1.mlp.c_proj.weight" in decayed_names
    )
    assert {"wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.attn.c_attn.bias", "ln_f.bias"} <= kept_names
    assert len(decayed_names) + len(kept_names) == len(list(run.model.parameters()))
    (everything,) = parameter_groups(run.model, 0.1, "all")
    assert len(everything["params"]) == len(list(run.model.parameters())) and everything["weight_decay"] == 0.1


def test_betas_eps_and_decay_reach_the_optimizer(make_run):
    run = setup(
        make_run(train={"betas": [0.8, 0.95], "eps": 1e-6, "weight_decay": 0.05, "weight_decay_params": "matrices"}),
        show_progress=False,
    )
    groups = run.optimizer.param_groups
    assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]


@pytest.mark.parametrize("warmup_percent, total", [(0, 10), (30, 10), (5, 200), (10, 37)])
def test_users_schedule_matches_their_torch_schedulers_step_for_step(warmup_percent, total):
    config = TrainConfig(
        dataset="d",
        microbatch_size=1,
        learning_rate=4e-4,
        schedule_learning_rate=True,
        warmup_period_percent=warmup_percent,
    )
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=4e-4)
    warmup = total * warmup_percent // 100
    scheduler = SequentialLR(
        optimizer,
        [
            LinearLR(optimizer, start_factor=1e-5, end_factor=1.0, total_iters=warmup),
            CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=4e-5),
        ],
        milestones=[warmup],
    )
    for step in range(total):
        assert learning_rate_at(step, total, config) == pytest.approx(
            optimizer.param_groups[0]["lr"], rel=1e-9, abs=1e-15
        )
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_gptlab_schedules_shape(schedule):
    config = TrainConfig(
        dataset="d",
        microbatch_size=1,
        learning_rate=1.0,
        lr_schedule=schedule,
        warmup_steps=10,
        min_lr_ratio=0.1,
        decay_period_percent=20,
    )
    rates = [learning_rate_at(step, 100, config) for step in range(100)]
    assert rates[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up to the peak
    assert max(rates) == pytest.approx(1.0)
    if schedule == "constant":
        assert rates[10:] == pytest.approx([1.0] * 90)
        return
    assert rates[-1] == pytest.approx(0.1)  # the floor is reached at the last step
    assert all(a >= b - 1e-12 for a, b in zip(rates[10:], rates[11:]))  # never rises after warm-up
    if schedule == "wsd":
        assert rates[10:79] == pytest.approx([1.0] * 69) and rates[85] < 1.0
    if schedule == "cosine":
        assert rates[54] == pytest.approx(0.55, abs=0.01)  # half-way down between peak and floor


def test_the_loop_uses_the_schedule_it_reports(make_run):
    run = make_run(train={"lr_schedule": "cosine", "warmup_period_percent": 25, "learning_rate": 0.004})
    summary = train_run(run, show_progress=False)
    config = TrainConfig(
        dataset="d", microbatch_size=4, lr_schedule="cosine", warmup_period_percent=25, learning_rate=0.004
    )
    rates = [r["learning_rate"] for r in read_metrics(run)]
    assert rates == [learning_rate_at(step, 12, config) for step in range(12)]
    assert summary["peak_learning_rate"] == max(rates) == pytest.approx(0.004) and summary["schedule"] == "cosine"


def test_gradient_accumulation_gives_the_gradient_of_one_big_batch(make_run):
    """accumulation 4 x microbatch 2 reads the same 8 sequences as 1 x 8 and must give the same gradient."""
    small = setup(
        make_run("small", train={"microbatch_size": 2, "gradient_accumulation_steps": 4}), show_progress=False
    )
    small_loss = forward_backward(small, 0)
    small_grads = [p.grad.clone() for p in small.model.parameters()]
    big = setup(make_run("big", train={"microbatch_size": 8, "gradient_accumulation_steps": 1}), show_progress=False)
    big_loss = forward_backward(big, 0)
    assert float(small_loss) == pytest.approx(float(big_loss), rel=1e-6)
    for small_grad, p in zip(small_grads, big.model.parameters()):
        torch.testing.assert_close(small_grad, p.grad, rtol=1e-5, atol=1e-7)


# --- architecture --------------------------------------------------------------------------------


def test_tied_head_shares_the_embedding_through_training(make_run):
    untied = train_run(make_run("untied"), show_progress=False)
    run = make_run("tied", model={"tie_weights": True})
    tied = train_run(run, show_progress=False)
    assert untied["parameters"] - tied["parameters"] == 50257 * 32
    from gptlab.runtime.runs import open_trained_run

    model = open_trained_run(run, "latest").model
    assert model.lm_head.weight is model.wte.weight


def test_summary_records_every_effective_setting(make_run):
    run = make_run(train={"clipping_max_norm": 1.0})
    train_run(run, show_progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["train"]["weight_decay_params"] == "all"  # defaults are written out, not left implicit
    assert summary["config"]["model"]["init"] == "torch"
    for key in (
        "precision",
        "skipped_steps",
        "clipped_fraction",
        "peak_learning_rate",
        "peak_memory_bytes",
        "schedule",
    ):
        assert key in summary, key
    assert summary["environment"]["torch"] == torch.__version__
    meta = json.loads((run / "checkpoints" / "latest" / "meta.json").read_text())
    assert meta["effective_config"] == summary["config"] and meta["torch_version"] == torch.__version__


def test_reading_step_values_back_every_few_steps_changes_nothing(make_run):
    """The deferred read-back (the CUDA default) trains exactly as reading every step does."""
    every_step = make_run("every", model={"drop_rate": 0.1}, train={"log_interval": 1, "clipping_max_norm": 0.5})
    deferred = make_run("deferred", model={"drop_rate": 0.1}, train={"log_interval": 5, "clipping_max_norm": 0.5})
    train_run(every_step, show_progress=False)
    train_run(deferred, show_progress=False)
    assert read_metrics(deferred) == [
        {**r, "elapsed_seconds": d["elapsed_seconds"], "train_seconds": d["train_seconds"]}
        for r, d in zip(read_metrics(every_step), read_metrics(deferred))
    ]
    from safetensors.torch import load_file

    a, b = (load_file(run / "checkpoints" / "latest" / "model.safetensors") for run in (every_step, deferred))
    assert all(torch.equal(a[name], b[name]) for name in a)
