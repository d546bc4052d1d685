"""Mixture-of-experts blocks as the users' harness writes them (issue 18).

The reference below is written from the issue's description of their model on top of the book package's
own modules: each block's `ff` is a router `nn.Linear(emb_dim, num_experts, bias=False)` and `num_experts`
book `FeedForward`s; per token the top-k router logits are kept (torch.topk, so exactly k with ties), the
rest set to -inf, a softmax gives the weights, and the chosen experts' outputs are summed with them, each
expert applied to a boolean-mask gather of its tokens.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
from pathlib import Path

import llms_from_scratch.ch04 as book
import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn as nn
from conftest import read_metrics
from safetensors.torch import load_file

import gptlab.model_moe
from gptlab.config import ModelConfig, apply_overrides, overrides_from_mapping, validate_run_config
from gptlab.errors import UserError
from gptlab.model import MLP
from gptlab.model_moe import MixtureOfExperts, routing_statistics
from gptlab.weights import build_model, load_book_safetensors, save_book_safetensors, to_book_state_dict

SMALL = dict(vocab_size=300, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
MOE = {"num_experts": 4, "num_active_experts": 2}
BookFeedForward = book.FeedForward


class ReferenceMoE(nn.Module):
    """The users' MoE feed-forward as the issue describes it."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.num_active = cfg["moe"]["num_active_experts"]
        self.router = nn.Linear(cfg["emb_dim"], cfg["moe"]["num_experts"], bias=False)
        self.experts = nn.ModuleList(BookFeedForward(cfg) for _ in range(cfg["moe"]["num_experts"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router(x)
        kept, chosen = torch.topk(logits, self.num_active, dim=-1)
        weights = torch.softmax(torch.full_like(logits, float("-inf")).scatter(-1, chosen, kept), dim=-1)
        out = torch.zeros_like(x)
        for j, expert in enumerate(self.experts):
            mask = (chosen == j).any(-1)
            if mask.any():
                out[mask] += weights[mask][:, j : j + 1] * expert(x[mask])
        return out


def reference_model(config: ModelConfig, monkeypatch) -> book.GPTModel:
    """The book's GPTModel with each block's feed-forward built as the users' MoE, in the book's module order."""
    cfg = config.model_dump()
    monkeypatch.setattr(book, "FeedForward", lambda block_cfg: ReferenceMoE(block_cfg))
    model = book.GPTModel(cfg)
    monkeypatch.setattr(book, "FeedForward", BookFeedForward)
    return model.eval()


def moe_config(**moe) -> ModelConfig:
    return ModelConfig(**SMALL, moe={**MOE, **moe})


# --- configuration -----------------------------------------------------------------------------------


def config_problems(tmp_path, moe) -> list[str]:
    with pytest.raises(UserError) as error:
        validate_run_config(
            tmp_path / "model.json",
            {**SMALL, "moe": moe},
            tmp_path / "train.json",
            {"dataset": "d", "microbatch_size": 1},
        )
    return error.value.lines


def test_the_users_moe_block_is_accepted_and_bad_ones_get_one_line_each(tmp_path):
    users = {"num_experts": 6, "num_active_experts": 2, "log_moe_balance_file": "runs/NAME/routing_logits.jsonl"}
    config = validate_run_config(
        tmp_path / "model.json",
        {**SMALL, "moe": users},
        tmp_path / "train.json",
        {"dataset": "d", "microbatch_size": 1},
    )
    assert config.model.moe.num_experts == 6 and config.model.moe.aux_loss_coef == 0.0
    assert config.model.model_dump(mode="json")["moe"]["log_moe_balance_file"] == "runs/NAME/routing_logits.jsonl"

    [line] = config_problems(tmp_path, {"num_experts": 6, "num_active_experts": 1})
    assert line.startswith(f"{tmp_path / 'model.json'}: moe.num_active_experts: 1 is not allowed") and "2" in line
    [line] = config_problems(tmp_path, {"num_experts": 6, "num_active_experts": 7})
    assert line == f"{tmp_path / 'model.json'}: moe.num_active_experts: 7 is more than moe.num_experts 6; use 2 to 6"
    [line] = config_problems(tmp_path, {"num_experts": 6, "num_active_experts": 2, "capacity_factor": 1.25})
    assert line.startswith(
        f"{tmp_path / 'model.json'}: moe.capacity_factor: unknown key; allowed keys are: aux_loss_coef, log_moe_balance_file"
    )
    assert len(config_problems(tmp_path, {"num_experts": 6})) == 1  # num_active_experts missing
    assert all("\n" not in line for line in config_problems(tmp_path, "six"))


def test_moe_is_reachable_as_an_experiment_intervention(tmp_path):
    problems: list[str] = []
    overrides = overrides_from_mapping(
        "interventions.moe",
        {"model": {"moe": {"num_experts": 6, "num_active_experts": 2, "aux_loss_coef": 0.01}}},
        problems,
    )
    assert problems == []
    model_data, train_data = apply_overrides(dict(SMALL), {"dataset": "d", "microbatch_size": 1}, overrides)
    config = validate_run_config(tmp_path / "model.json", model_data, tmp_path / "train.json", train_data)
    assert config.model.moe.aux_loss_coef == 0.01 and config.model.moe.num_active_experts == 2


# --- the function and the file layout ----------------------------------------------------------------


def test_same_initialisation_under_a_seed_as_the_users_model(monkeypatch):
    config = moe_config()
    torch.manual_seed(7)
    theirs = reference_model(config, monkeypatch).state_dict()
    torch.manual_seed(7)
    ours = to_book_state_dict(build_model(config))
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name


@pytest.mark.parametrize("num_experts, num_active", [(4, 2), (6, 2), (3, 3)])
def test_their_checkpoint_loads_into_gptlab_and_gives_their_logits(tmp_path, monkeypatch, num_experts, num_active):
    config = moe_config(num_experts=num_experts, num_active_experts=num_active)
    torch.manual_seed(3)
    theirs = reference_model(config, monkeypatch)
    safetensors.torch.save_model(theirs, tmp_path / "theirs.safetensors")
    ours = build_model(config.model_copy(update={"init": "gpt2"})).eval()
    load_book_safetensors(ours, tmp_path / "theirs.safetensors")
    tokens = torch.randint(0, 300, (3, 16))
    torch.testing.assert_close(ours(tokens), theirs(tokens), rtol=1e-5, atol=2e-5)


def test_a_gptlab_checkpoint_loads_strictly_into_their_model(tmp_path, monkeypatch):
    config = moe_config()
    ours = build_model(config.model_copy(update={"init": "gpt2"})).eval()
    save_book_safetensors(ours, tmp_path / "model.safetensors")
    theirs = reference_model(config, monkeypatch)
    missing, unexpected = theirs.load_state_dict(
        safetensors.torch.load_file(tmp_path / "model.safetensors"), strict=True
    )
    assert missing == unexpected == []
    safetensors.torch.load_model(theirs, tmp_path / "model.safetensors")  # their strict load_model
    names = set(safetensors.torch.load_file(tmp_path / "model.safetensors"))
    assert {"trf_blocks.1.ff.router.weight", "trf_blocks.1.ff.experts.3.layers.2.bias"} <= names
    assert not any(name.startswith("trf_blocks.0.ff.layers") for name in names)
    tokens = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(theirs(tokens), ours(tokens), rtol=1e-5, atol=2e-5)


def test_a_dense_checkpoint_is_refused_by_an_moe_model_in_one_line(tmp_path):
    save_book_safetensors(build_model(ModelConfig(**SMALL)), tmp_path / "dense.safetensors")
    with pytest.raises(UserError) as error:
        load_book_safetensors(build_model(moe_config()), tmp_path / "dense.safetensors")
    assert (
        len(error.value.lines) == 1
        and "missing tensors trf_blocks.0.ff.router.weight" in error.value.lines[0]
        and "moe" in error.value.lines[0]
    )


def layer_like(reference: ReferenceMoE, config: ModelConfig) -> MixtureOfExperts:
    ours = MixtureOfExperts(config, expert=MLP)
    ours.load_state_dict(
        {k.replace("layers.0", "c_fc").replace("layers.2", "c_proj"): v for k, v in reference.state_dict().items()}
    )
    return ours


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn-matmuls", "torch-matmuls"])
def test_outputs_and_every_gradient_match_the_users_layer(monkeypatch, onednn):
    """Float32 on the CPU: with oneDNN's matmuls (gptlab's default where torch has them) and with torch's."""
    if onednn and not gptlab.model_moe._onednn_linear_available():
        pytest.skip("this torch has no oneDNN linear")
    config = moe_config(num_experts=6, num_active_experts=2)
    torch.manual_seed(0)
    reference = ReferenceMoE(config.model_dump())
    ours = layer_like(reference, config)
    ours.onednn_matmuls = onednn
    calls = []
    original = gptlab.model_moe._OneDNNExpertMLP.apply
    monkeypatch.setattr(gptlab.model_moe._OneDNNExpertMLP, "apply", lambda *args: calls.append(1) or original(*args))
    x = torch.randn(3, 40, 32, requires_grad=True)
    x_ours = x.detach().clone().requires_grad_()
    grad = torch.randn_like(x)
    out, out_ours = reference(x), ours(x_ours)
    out.backward(grad)
    out_ours.backward(grad)
    assert len(calls) == (6 if onednn else 0)
    torch.testing.assert_close(out_ours, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_ours.grad, x.grad, rtol=1e-5, atol=1e-5)
    ours_parameters = dict(ours.named_parameters())
    for name, parameter in reference.named_parameters():
        theirs_grad = parameter.grad
        our_grad = ours_parameters[name.replace("layers.0", "c_fc").replace("layers.2", "c_proj")].grad
        torch.testing.assert_close(our_grad, theirs_grad, rtol=1e-5, atol=1e-5, msg=name)


def test_under_autocast_the_experts_run_as_written_in_bf16():
    """oneDNN's float32 path is only for float32: under a bf16 autocast the experts' matmuls are autocast's."""
    config = moe_config()
    torch.manual_seed(0)
    layer = MixtureOfExperts(config, expert=MLP)
    x = torch.randn(1, 6, 32)
    float32 = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        default = layer(x)
        layer.onednn_matmuls = False
        as_written = layer(x)
    assert torch.equal(default, as_written)
    assert not torch.allclose(default, float32, rtol=0, atol=1e-4)  # bf16 rounding: the experts ran in bf16


def test_ties_at_the_lowest_kept_logit_keep_exactly_k_experts_as_topk_does(monkeypatch):
    """Their fixed bug: with a tie at the k-th logit, keeping every logit >= the k-th value keeps too many."""
    config = moe_config(num_experts=5, num_active_experts=2)
    cfg = config.model_dump()
    torch.manual_seed(0)
    reference = ReferenceMoE(cfg)
    ours = MixtureOfExperts(config, expert=MLP)
    ours.load_state_dict(
        {k.replace("layers.0", "c_fc").replace("layers.2", "c_proj"): v for k, v in reference.state_dict().items()}
    )
    with torch.no_grad():
        # Logits per token: expert 0 far ahead, experts 1, 2 and 3 tied for the second place, expert 4 last.
        reference.router.weight.zero_()
        reference.router.weight[0, 0], reference.router.weight[1:4, 0], reference.router.weight[4, 0] = 3.0, 1.0, -2.0
        ours.router.weight.copy_(reference.router.weight)
    x = torch.randn(2, 8, 32)
    x[..., 0] = 1.0
    ours.train()
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)
    [layer] = routing_statistics(ours.take_routing_totals()[None])
    kept = layer["mean_topk_weight"]
    assert sum(value > 0 for value in kept) == 2 and kept[0] > 0.5  # exactly k experts, one of them the tied ones
    assert sum(layer["token_fraction"]) == pytest.approx(1.0) and layer["token_fraction"][0] == pytest.approx(0.5)
    # The bug the users fixed keeps every expert whose logit is at least the k-th: 4 experts here.
    logits = reference.router(x)
    assert int((logits >= logits.topk(2, dim=-1).values[..., -1:]).sum(-1).max()) == 4


def test_routing_statistics_on_a_router_the_test_sets():
    config = moe_config(num_experts=4, num_active_experts=2)
    layer = MixtureOfExperts(config, expert=MLP).train()
    router = torch.tensor(
        [[2.0, 0.0], [1.0, 1.0], [0.0, -1.0], [-1.0, 0.5]]
    )  # only the first two input features matter
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[:, :2] = router
    x = torch.zeros(1, 3, 32)
    x[0, :, :2] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    layer(x)
    layer(x)  # two forwards: statistics are means over forwards
    [stats] = routing_statistics(layer.take_routing_totals()[None])
    # The expected values in float64 NumPy, from the definitions (SciPy is not a test dependency here).
    logits = (x[0, :, :2] @ router.T).numpy().astype(np.float64)

    def softmax(values):
        exps = np.exp(values - values.max(axis=-1, keepdims=True))
        return exps / exps.sum(axis=-1, keepdims=True)

    probabilities = softmax(logits)
    top2 = (-logits).argsort(axis=1, kind="stable")[:, :2]
    kept = sum(softmax(logits[t, top2[t]]) @ (top2[t][:, None] == range(4)) for t in range(3)) / 3
    counts = [float((top2 == j).sum()) / 6 for j in range(4)]  # share of the 3 x 2 routed slots
    assert stats["mean_routing_weight"] == pytest.approx(probabilities.mean(0).tolist(), rel=1e-5)
    assert stats["mean_topk_weight"] == pytest.approx(kept.tolist(), rel=1e-5)
    assert stats["token_fraction"] == pytest.approx(counts)
    assert stats["router_entropy"] == pytest.approx(
        -(probabilities * np.log(probabilities)).sum(axis=1).mean(), rel=1e-5
    )
    assert stats["balance_loss"] == pytest.approx(
        4 * sum(c * p for c, p in zip(counts, probabilities.mean(0))), rel=1e-5
    )
    assert stats["router_z_loss"] == pytest.approx((np.log(np.exp(logits).sum(axis=1)) ** 2).mean(), rel=1e-5)
    assert layer.take_routing_totals().abs().sum() == 0  # taking resets
    layer.eval()(x)
    assert layer.take_routing_totals().abs().sum() == 0  # evaluation is not counted


def test_every_expert_gets_a_gradient_even_without_tokens():
    """DDP needs a gradient for every parameter in every step; an expert no token chose gets a zero one."""
    config = moe_config(num_experts=4, num_active_experts=2)
    torch.manual_seed(0)
    model = build_model(config).train()
    with torch.no_grad():
        for block in model.h:
            # The block's LayerNorm output sums to emb_dim x its shift for every token, so these logits are +-32:
            # experts 0 and 1 are always chosen, 2 and 3 never.
            block.ln_2.bias.fill_(1.0)
            block.mlp.router.weight[:2] = 1.0
            block.mlp.router.weight[2:] = -1.0
    tokens = torch.randint(0, 300, (2, 16))
    model(tokens, tokens).backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    assert (
        model.h[0].mlp.experts[3].c_fc.weight.grad.abs().sum()
        == 0
        < model.h[0].mlp.experts[0].c_fc.weight.grad.abs().sum()
    )


@pytest.mark.parametrize("coefficient", ["aux_loss_coef", "router_z_loss_coef"])
def test_router_loss_gradients_match_finite_differences(coefficient):
    config = moe_config(num_experts=4, num_active_experts=2, **{coefficient: 0.5})
    torch.manual_seed(0)
    layer = MixtureOfExperts(config, expert=MLP).double().train()
    x = torch.randn(2, 8, 32, dtype=torch.float64)

    def router_loss(router_weight: torch.Tensor) -> torch.Tensor:
        _, loss = torch.func.functional_call(layer, {"router.weight": router_weight}, (x,), {"with_router_loss": True})
        return loss

    router = layer.router.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(router_loss, (router,), eps=1e-6, atol=1e-6)
    assert router_loss(router).item() > 0


def test_no_router_loss_by_default():
    layer = MixtureOfExperts(moe_config(), expert=MLP).train()
    _, router_loss = layer(torch.randn(1, 4, 32), with_router_loss=True)
    assert router_loss is None


def test_active_parameters_and_flops_count_only_the_chosen_experts():
    from gptlab.bench.flops import matmul_parameters

    config = ModelConfig(**{**SMALL, "moe": {"num_experts": 6, "num_active_experts": 2}})
    model = build_model(config)
    expert = 8 * 32 * 32 + 4 * 32 + 32
    assert model.parameter_count() - model.active_parameter_count() == 2 * 4 * expert
    dense = ModelConfig(**SMALL)
    assert matmul_parameters(config) - matmul_parameters(dense) == 2 * (8 * 32 * 32 + 32 * 6)


def test_export_to_gpt2_refuses_an_moe_model_in_one_line(tmp_path):
    from gptlab.export.hf import hf_config, write_hf_model

    config = moe_config()
    assert config.loads_in_book_model and not config.exports_to_gpt2
    with pytest.raises(UserError) as error:
        hf_config(config)
    [line] = error.value.lines
    assert "moe" in line and "cannot be held by transformers' GPT-2" in line
    with pytest.raises(UserError):
        write_hf_model(build_model(config), config, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# --- training ------------------------------------------------------------------------------------------

TRAIN_MOE = {"num_experts": 4, "num_active_experts": 2}


def test_routing_statistics_go_to_metrics_the_balance_file_and_checkpoint_meta(make_run, tmp_path, monkeypatch):
    from gptlab.train.loop import train_run

    monkeypatch.chdir(
        tmp_path
    )  # the balance file's relative path is taken from the working directory, as in the users' harness
    moe = {
        **TRAIN_MOE,
        "log_moe_balance_file": "runs/moe/routing_logits.jsonl",
        "aux_loss_coef": 0.01,
        "router_z_loss_coef": 0.001,
    }
    run = make_run("moe", model={"moe": moe}, train={"checkpoint_interval": 5})
    summary = train_run(run, show_progress=False)
    assert summary["active_parameters"] < summary["parameters"]
    records = read_metrics(run)
    with_routing = [r for r in records if "routing" in r]
    assert [r["step"] for r in with_routing] == [
        0,
        2,
        5,
        8,
        10,
        11,
    ]  # every read-back: each log interval and each checkpoint
    for record in with_routing:
        assert [layer["layer"] for layer in record["routing"]] == [0, 1]
        for layer in record["routing"]:
            assert sum(layer["mean_routing_weight"]) == pytest.approx(1.0, abs=1e-5)
            assert sum(layer["mean_topk_weight"]) == pytest.approx(1.0, abs=1e-5)
            assert sum(layer["token_fraction"]) == pytest.approx(1.0, abs=1e-5)
            assert 0 < layer["router_entropy"] <= math.log(4) + 1e-6 and layer["balance_loss"] >= 1 - 1e-5
    assert all(
        math.isfinite(r["loss"]) and "balance_loss" not in r for r in records
    )  # the LM loss is logged apart from the router losses
    balance_lines = [json.loads(line) for line in (tmp_path / "runs/moe/routing_logits.jsonl").read_text().splitlines()]
    assert [line["step"] for line in balance_lines] == [0, 2, 5, 8, 10, 11]
    assert balance_lines[-1]["layers"] == with_routing[-1]["routing"]
    meta = json.loads((run / "checkpoints" / "latest" / "meta.json").read_text())
    assert meta["routing"] == {"step": 11, "layers": with_routing[-1]["routing"]}
    assert "mixture of experts: 2 of 4 per token" in (run / "train.log").read_text()
    from PIL import Image

    with Image.open(run / "routing-chart.png") as chart:  # one panel per layer, drawn at the end of the run
        assert chart.size[0] >= 600

    # The HTML report shows the run's routing chart with its other charts.
    from gptlab.config import EvaluationSettings
    from gptlab.experiments.compare import build_comparison, load_results
    from gptlab.experiments.report import write_report

    results = load_results([run], EvaluationSettings(batches=1), echo=lambda line: None)  # one batch: a cheap loss
    page = write_report(build_comparison(results), tmp_path / "report.html")
    images = dict(re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)">', page.read_text()))
    routing = [data for data, alt in images.items() if alt == f"routing-chart.png of {run}"]
    assert len(routing) == 1 and base64.b64decode(routing[0]) == (run / "routing-chart.png").read_bytes()


@pytest.mark.slow
def test_a_small_moe_run_beats_the_unigram_baseline(make_run):
    """About 100 k tokens (200 steps of 512); at emb_dim 64 the GPT-2-vocabulary head dominates the time."""
    from gptlab.evaluate.loss import evaluate_run
    from gptlab.evaluate.unigram import unigram_cross_entropy
    from gptlab.runtime.runs import open_trained_run
    from gptlab.train.loop import train_run

    run = make_run(
        "moe",
        model={"moe": TRAIN_MOE, "emb_dim": 64},
        train={"min_train_tokens": 16 * 32 * 200, "microbatch_size": 16, "log_interval": 50},
    )
    train_run(run, show_progress=False)
    evaluation = evaluate_run(run, batches=40)  # 20,480 test tokens, the unigram scored on the same ones
    trained = open_trained_run(run, "latest", torch.device("cpu"))
    dataset = trained.dataset(None)
    unigram = unigram_cross_entropy(
        dataset.split("train"), dataset.split("test"), 50257, test_tokens=evaluation["tokens"] + 1
    )
    assert evaluation["loss"] < unigram, (evaluation["loss"], unigram)


@pytest.mark.slow
def test_an_moe_run_resumes_bit_identically(make_run):
    from gptlab.runtime.checkpoint import list_checkpoints
    from gptlab.train.loop import train_run

    train = {"min_train_tokens": 4 * 32 * 8, "checkpoint_interval": 4}
    model = {"moe": {**TRAIN_MOE, "aux_loss_coef": 0.01}, "drop_rate": 0.1}
    whole = make_run("whole", model=model, train=train)
    train_run(whole, show_progress=False)
    split = make_run("split", model=model, train=train)
    train_run(split, show_progress=False)
    for path in list_checkpoints(split):
        if int(path.name.rsplit("-", 1)[1]) > 4:
            shutil.rmtree(path)
    (split / "checkpoints" / "latest").unlink()
    os.symlink(list_checkpoints(split)[-1].name, split / "checkpoints" / "latest")
    train_run(split, resume="latest", show_progress=False)
    assert [r["loss"] for r in read_metrics(split)] == [r["loss"] for r in read_metrics(whole)]
    assert (
        "routing" in read_metrics(split)[-1]
    )  # statistics cover each read interval, which a resume restarts, so they are not compared
    expected, resumed = (load_file(run / "checkpoints" / "latest" / "model.safetensors") for run in (whole, split))
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(make_run):
    """DDP without find_unused_parameters: every expert gets a gradient in every step, and routing is per token."""
    from test_distributed import TORCHRUN, train_two_processes_and_one

    if not os.path.exists(TORCHRUN):
        pytest.skip("torchrun not installed")
    common = {"min_train_tokens": 4 * 32 * 2 * 4, "checkpoint_interval": 2, "validation_batches": 2}
    model = {"moe": {**TRAIN_MOE, "aux_loss_coef": 0.01, "router_z_loss_coef": 0.001}}
    two = make_run("two", model=model, train={**common, "gradient_accumulation_steps": 1})
    one = make_run("one", model=model, train={**common, "gradient_accumulation_steps": 2})
    two_records, one_records = train_two_processes_and_one(two, one)
    assert [r["step"] for r in two_records] == [r["step"] for r in one_records] == list(range(4))
    for a, b in zip(two_records, one_records):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert ("routing" in a) == ("routing" in b)
        for layer_a, layer_b in zip(
            a.get("routing", []), b.get("routing", [])
        ):  # statistics averaged over ranks = over microbatches
            assert layer_a["token_fraction"] == pytest.approx(layer_b["token_fraction"], abs=1e-6)
            assert layer_a["balance_loss"] == pytest.approx(layer_b["balance_loss"], abs=1e-5)
    two_weights, one_weights = (load_file(run / "checkpoints" / "latest" / "model.safetensors") for run in (two, one))
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=0, atol=1e-5)


def test_a_bad_moe_block_stops_gptlab_train_with_one_line_and_exit_2(make_run):
    from conftest import run_cli

    run = make_run("bad", model={"moe": {"num_experts": 6, "num_active_experts": 7}})
    result = run_cli("train", str(run), "--no-progress")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("moe.num_active_experts: 7 is more than moe.num_experts 6; use 2 to 6")
    )
    assert "Traceback" not in result.stderr and not (run / "checkpoints").exists()


@pytest.mark.slow
def test_a_checkpoint_written_by_their_model_trains_on_evaluates_and_samples_in_gptlab(make_run, monkeypatch):
    from conftest import TINY_MODEL

    from gptlab.data.tokens import TokenDataset
    from gptlab.evaluate.loss import evaluate_run
    from gptlab.evaluate.sample import generate_from_run
    from gptlab.train.loop import train_run

    config = ModelConfig(**TINY_MODEL, moe=TRAIN_MOE)
    torch.manual_seed(11)
    theirs = reference_model(config, monkeypatch)
    run = make_run(
        "theirs", model={"moe": TRAIN_MOE}, train={"init_from": "their.safetensors", "min_train_tokens": 4 * 32 * 3}
    )
    safetensors.torch.save_model(theirs, run / "their.safetensors")
    train_run(run, show_progress=False)
    # Step 0 reads item 0, the first 4 x 32 tokens: gptlab's first loss is their model's loss on them.
    dataset = TokenDataset(Path(json.loads((run / "train.json").read_text())["dataset"]))
    window = torch.from_numpy(dataset.split("train").read(0, 4 * 32 + 1).astype(np.int64))
    with torch.no_grad():
        expected = nn.functional.cross_entropy(theirs(window[:-1].view(4, 32)).flatten(0, 1), window[1:])
    assert read_metrics(run)[0]["loss"] == pytest.approx(expected.item(), abs=1e-4)
    assert math.isfinite(evaluate_run(run)["loss"])
    assert generate_from_run(run, new_tokens=5, seed=1)["text"].startswith("Every effort moves you")
