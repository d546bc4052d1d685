"""`gptlab bench`: the JSON it prints, --compare, the FLOPs formula, the peak table, and finding the largest microbatch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_MODEL, run_cli

from gptlab import bench
from gptlab.cli import cli
from gptlab.config import ModelConfig, TrainConfig, load_run_config
from gptlab.cpu_kernels import cpu_matmul
from gptlab.errors import UserError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
QUICK = ["--steps", "2", "--warmup-steps", "1", "--phase-steps", "1"]
SMALL_VOCAB = {"vocab_size": 512}  # trials run on random tokens, so the vocabulary can shrink to make them quick


def invoke(*args: str):
    return CliRunner().invoke(cli, ["bench", *args])


def bench_json(*args: str) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bench_json_has_every_field(make_run, brown_dataset):
    run_dir = make_run()
    before = sorted(path.name for path in run_dir.iterdir())
    result = bench_json(str(run_dir), *QUICK)

    assert set(bench.RESULT_FIELDS) <= set(result)
    assert result["steps"] == 2 and len(result["step_ms"]) == 2 and result["warmup_steps"] == 1
    assert result["tokens_per_step"] == 4 * 32 and result["tokens"] == str(
        brown_dataset.resolve()
    )  # the run's real dataset
    assert result["tokens_per_second"] > 0 and result["ms_per_step"] > 0
    assert result["tokens_per_second"] == pytest.approx(
        result["tokens_per_step"] / (result["ms_per_step"] / 1e3), rel=1e-3
    )
    assert result["flops_per_token"] == bench.flops_per_token(ModelConfig(**TINY_MODEL))
    assert result["model_tflops_per_second"] == pytest.approx(
        result["tokens_per_second"] * result["flops_per_token"] / 1e12, rel=1e-3
    )
    assert result["device"] == "cpu" and result["precision"] == "fp32"
    assert result["peak_tflops"] is None and result["mfu"] is None  # no known peak for a CPU
    assert result["peak_memory_bytes"] > 0 and "TensorBytesTracker" in result["peak_memory_method"]
    assert set(result["phases_ms"]) == set(bench.PHASES) and all(value >= 0 for value in result["phases_ms"].values())
    assert result["phases_ms"]["data"] > 0 and result["phases_ms"]["backward"] > 0
    assert result["config"]["model"]["emb_dim"] == TINY_MODEL["emb_dim"]
    assert {"gptlab", "torch", "python"} <= set(result["environment"])
    assert result["environment"]["cpu_matmul"] == cpu_matmul()[0]  # the CPU kernel the step ran on, named
    assert sorted(path.name for path in run_dir.iterdir()) == before  # nothing written into the run


def test_peak_tflops_option_gives_mfu_and_text_output_has_a_table(make_run):
    run_dir = make_run()
    result = bench_json(
        str(run_dir), "--synthetic", "--steps", "1", "--warmup-steps", "0", "--phase-steps", "0", "--peak-tflops", "0.5"
    )
    assert (
        result["tokens"] == "synthetic"
        and result["peak_tflops_source"] == "--peak-tflops"
        and result["phases_ms"] is None
    )
    assert result["mfu"] == pytest.approx(result["model_tflops_per_second"] / 0.5, rel=1e-2)

    text = invoke(str(run_dir), "--synthetic", "--steps", "1", "--warmup-steps", "0", "--phase-steps", "0").stdout
    assert "| tokens/s" in text and "| MFU" in text and "peak memory" in text
    assert f"CPU matmul: {cpu_matmul()[0]} ({cpu_matmul()[1]})" in text


def test_compare_gives_one_column_per_override_with_the_override_applied(make_run):
    run_dir = make_run(train={"use_amp": True, "precision": None})  # the users' switch: compare must replace it
    result = bench_json(
        str(run_dir),
        "--synthetic",
        "--steps",
        "1",
        "--warmup-steps",
        "0",
        "--phase-steps",
        "0",
        "--compare",
        "precision=fp32",
        "precision=bf16",
    )
    assert [column["column"] for column in result["columns"]] == ["precision=fp32", "precision=bf16"]
    assert [column["precision"] for column in result["columns"]] == ["fp32", "bf16"]
    assert [column["config"]["train"]["precision"] for column in result["columns"]] == ["fp32", "bf16"]
    for column in result["columns"]:
        assert set(bench.RESULT_FIELDS) <= set(column)

    table = invoke(
        str(run_dir),
        "--synthetic",
        "--steps",
        "1",
        "--warmup-steps",
        "0",
        "--phase-steps",
        "0",
        "--compare",
        "microbatch_size=2",
        "microbatch_size=4",
    ).stdout
    header = next(line for line in table.splitlines() if line.startswith("| measure"))
    assert "microbatch_size=2" in header and "microbatch_size=4" in header and "tokens/s vs first column" in table


def test_flops_formula_matches_a_hand_count():
    config = ModelConfig(**TINY_MODEL)  # 2 layers, width 32, context 32, vocab 50,257, untied
    per_layer = 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32  # fused Q/K/V, attention output, MLP up, MLP down
    head = 50257 * 32
    assert bench.matmul_parameters(config) == 2 * per_layer + head
    assert bench.flops_per_token(config) == 6 * (2 * per_layer + head) + 12 * 2 * 32 * 32
    # a tied head is the same matmul: the shared matrix counts once
    assert bench.flops_per_token(config.model_copy(update={"tie_weights": True})) == bench.flops_per_token(config)
    # GPT-2 small: the ANCHORS table's 451,785 tokens/s for compiled nanoGPT is 386 model TFLOP/s
    assert bench.flops_per_token(ModelConfig()) == 854_438_400
    assert round(451_785 * bench.flops_per_token(ModelConfig()) / 1e12) == 386


@pytest.mark.parametrize(
    "name, precision, expected",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
        ("NVIDIA H100 80GB HBM3", "fp32", 67.0),
        ("NVIDIA H100 PCIe", "fp16", 756.0),
        ("NVIDIA H100 NVL", "tf32", 418.0),
        ("NVIDIA H200", "bf16", 989.0),
        ("NVIDIA A100-SXM4-40GB", "tf32", 156.0),
        ("NVIDIA A100 80GB PCIe", "bf16", 312.0),
        ("NVIDIA A10", "bf16", 125.0),
        ("NVIDIA L4", "fp16", 121.0),
        ("NVIDIA L40S", "bf16", 362.0),
        ("NVIDIA GeForce RTX 3090", "bf16", 71.0),
        ("NVIDIA GeForce RTX 3090 Ti", "bf16", 80.0),
        ("NVIDIA GeForce RTX 4090", "fp16", 165.2),
        ("Tesla V100-SXM2-16GB", "bf16", None),  # no bf16 tensor cores
        ("NVIDIA A10G", "bf16", None),  # not in the table (and not an A10 or an A100)
        ("Intel(R) Xeon(R) Processor", "bf16", None),
    ],
)
def test_peak_table_lookup(name, precision, expected):
    found = bench.lookup_peak_tflops(name, precision)
    assert (found[0] if found else None) == expected
    if found:
        assert precision in found[1]


def fake_trials(peak_of, limit):
    def attempt(microbatch: int) -> bench.Trial:
        peak = peak_of(microbatch)
        return bench.Trial(microbatch, peak <= limit, "fits" if peak <= limit else "over the memory limit", peak, 0.0)

    return attempt


@pytest.mark.parametrize("answer", [1, 5, 64, 70, 127, 1000])
def test_search_finds_the_largest_fit_in_few_trials(answer):
    peak_of = lambda microbatch: 3_000_000 + 250_000 * microbatch  # noqa: E731 - memory grows by a fixed amount per sequence
    limit = peak_of(answer) + 100_000
    found, trials = bench.search_max_microbatch(fake_trials(peak_of, limit), limit)
    assert found == answer
    doublings = answer.bit_length() + 1
    assert len(trials) <= doublings + 2  # the guided probes land on the answer and one above it
    assert answer + 1 in {trial.microbatch for trial in trials if not trial.fits}
    # without a known limit it bisects plainly, still exactly
    found_plain, plain_trials = bench.search_max_microbatch(fake_trials(peak_of, limit), None)
    assert found_plain == answer and len(plain_trials) <= 2 * doublings


def test_search_edge_cases():
    assert bench.search_max_microbatch(fake_trials(lambda m: 10 * m, 5), 5)[0] == 0  # nothing fits
    found, trials = bench.search_max_microbatch(fake_trials(lambda m: m, 10**9), 10**9, upper=16)
    assert found == 16 and [t.microbatch for t in trials] == [1, 2, 4, 8, 16]  # everything up to the bound fits
    nonlinear = lambda m: m * m  # noqa: E731 - the straight-line guess is wrong; bisection still settles it
    assert bench.search_max_microbatch(fake_trials(nonlinear, 2000), 2000)[0] == 44


def test_search_bisects_once_the_straight_line_overshoots():
    """The H200's bf16 search (docs/performance.md): peaks grow linearly, but near the card's limit the
    allocator's overhead fails microbatches the line says fit. After a failed prediction the search bisects
    instead of probing one below it."""
    limit = 149_557_477_376
    peak_of = lambda m: 50_069_652_480 + (m - 128) * 369_575_000 + (10**10 if m > 390 else 0)  # noqa: E731
    found, trials = bench.search_max_microbatch(fake_trials(peak_of, limit), limit)
    probes = [t.microbatch for t in trials]
    assert found == 390
    failed_prediction = probes[probes.index(512) + 1]
    assert not trials[probes.index(failed_prediction)].fits and failed_prediction > 390
    assert failed_prediction - 1 not in probes  # the wasted probe of the first GPU check
    assert probes[probes.index(failed_prediction) + 1] == (256 + failed_prediction) // 2


def test_find_max_microbatch_under_a_simulated_memory_cap(make_run):
    run_dir = make_run(model=SMALL_VOCAB)
    config = load_run_config(run_dir)
    nine, ten = (bench.try_microbatch(config, size, None) for size in (9, 10))
    assert nine.fits and ten.fits and ten.peak_memory_bytes > nine.peak_memory_bytes
    cap = (nine.peak_memory_bytes + ten.peak_memory_bytes) // 2

    result = bench_json(str(run_dir), "--find-max-microbatch", "--memory-limit-bytes", str(cap))
    assert result["max_microbatch"] == 9 and result["memory_limit_bytes"] == cap
    assert result["trial_count"] == len(result["trials"]) <= 7  # 1, 2, 4, 8, 16, then 9 and 10
    by_size = {trial["microbatch"]: trial for trial in result["trials"]}
    assert by_size[9]["fits"] and by_size[9]["peak_memory_bytes"] == nine.peak_memory_bytes <= cap
    assert not by_size[10]["fits"] and by_size[10]["outcome"] == "over the memory limit"
    assert all(trial["fits"] == (trial["microbatch"] <= 9) for trial in result["trials"])


def test_find_max_microbatch_catches_real_out_of_memory_errors(make_run, monkeypatch):
    run_dir = make_run(model=SMALL_VOCAB)
    real_forward_backward = bench.harness.forward_backward

    def failing(kind):
        def forward_backward(run, step):
            if run.plan.microbatch_size > 5:
                raise (
                    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                    if kind == "cuda"
                    else RuntimeError(
                        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"
                    )
                )
            return real_forward_backward(run, step)

        return forward_backward

    for kind in ("cuda", "cpu"):
        monkeypatch.setattr(bench.harness, "forward_backward", failing(kind))
        result = bench.find_max_microbatch(run_dir)
        assert result["max_microbatch"] == 5 and result["memory_limit_source"] == "MemAvailable at start"
        assert [t["outcome"] for t in result["trials"] if not t["fits"]] == ["out of memory"] * 3  # 8, 7, 6
        assert [t["microbatch"] for t in result["trials"]][:4] == [1, 2, 4, 8]

    def broken(run, step):
        raise RuntimeError("shape mismatch")  # not memory: must not be mistaken for a failed trial

    monkeypatch.setattr(bench.harness, "forward_backward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        bench.find_max_microbatch(run_dir)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "Invalid value for '--steps': 0 is not in the range x>=1."),
        (["--peak-tflops", "0"], "Invalid value for '--peak-tflops': 0.0 is not in the range x>0.0."),
    ],
)
def test_numeric_options_out_of_range_are_refused_when_parsed(make_run, args, message):
    result = invoke(str(make_run()), *args)
    assert result.exit_code == 2 and message in result.output and result.exception is not None
    assert not isinstance(result.exception, UserError)  # click's own usage error, before any work


@pytest.mark.parametrize(
    "args, message",
    [
        (["--compare"], "--compare: give one KEY=VALUE per column"),
        (["--compare", "precision=fp99"], "--compare precision=fp99: "),
        (["--compare", "nosuchkey=1"], "--compare nosuchkey=1: 'nosuchkey' is not a key"),
        (["precision=bf16"], "precision=bf16: KEY=VALUE after RUN_DIR is only for --compare"),
        (["--memory-limit-bytes", "1GB"], "--memory-limit-bytes: only applies with --find-max-microbatch"),
        (
            ["--find-max-microbatch", "--memory-limit-bytes", "lots"],
            "--memory-limit-bytes lots: expected a positive number of bytes",
        ),
        (
            ["--find-max-microbatch", "--compare", "precision=bf16"],
            "--find-max-microbatch and --compare: give one of them",
        ),
    ],
)
def test_bad_options_give_one_line_errors(make_run, args, message):
    result = invoke(str(make_run()), *args)
    assert isinstance(result.exception, UserError), result.output
    assert len(result.exception.lines) == 1 and result.exception.lines[0].startswith(message)


def test_missing_dataset_suggests_synthetic_through_the_real_entry_point(tmp_path, make_run):
    run_dir = make_run(train={"dataset": str(tmp_path / "absent")})
    result = run_cli("bench", str(run_dir), "--steps", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(r"^error: .*--synthetic$", result.stderr, flags=re.MULTILINE)


def test_seconds_per_step_still_serves_the_demo():
    model = ModelConfig(**{**TINY_MODEL, **SMALL_VOCAB})
    train = TrainConfig(dataset="unused", microbatch_size=2, precision="fp32")
    assert 0 < bench.seconds_per_step(model, train, steps=1, warmup_steps=0) < 30


def test_parse_bytes():
    assert (
        bench.parse_bytes("40GB") == 40 * 10**9
        and bench.parse_bytes("512MiB") == 512 * 2**20
        and bench.parse_bytes("1000") == 1000
    )
    with pytest.raises(UserError):
        bench.parse_bytes("0")


def test_every_result_field_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    assert [field for field in bench.RESULT_FIELDS if f"`{field}`" not in text] == []


def test_compare_refuses_fsdp_in_one_process_and_names_the_benchmark(make_run):
    """Before any measurement (the CLI turns UserError into one line and exit 2, test_cli)."""
    with pytest.raises(UserError) as refused:
        bench.compare_speeds(make_run(), ("parallelism=ddp", "parallelism=fsdp"), synthetic=True)
    assert len(refused.value.lines) == 1
    assert refused.value.lines[0].startswith("--compare parallelism=fsdp: gptlab bench runs in one process")
    assert "benchmarks/fsdp_memory.py" in refused.value.lines[0]
