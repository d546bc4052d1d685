"""Precision chosen by what the machine does well: CPU flags, a measured matmul, and the forced slow-bf16 path."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import run_cli

from gptlab.config import TrainConfig
from gptlab.runtime.precision import (
    BF16_MIN_SPEEDUP,
    choose_cpu_precision,
    choose_precision,
    cpu_flags,
)
from gptlab.train.loop import train_run

CPU = torch.device("cpu")
# oneDNN limited to AVX2 emulates bf16 matmuls, as on CPUs without AVX512-BF16 or AMX: 3-60x slower than fp32 here.
EMULATED_BF16 = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def never_measured(width: int) -> float:
    raise AssertionError("a CPU without native bf16 must not be measured")


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert {"avx2", "avx512_bf16"} <= cpu_flags(x86) and "bf16" in cpu_flags(arm)
    assert cpu_flags(tmp_path / "missing") is None


def test_cpu_without_native_bf16_takes_fp32_without_measuring():
    choice = choose_cpu_precision(768, flags={"avx2", "fma"}, measure=never_measured)
    assert choice.name == "fp32" and "no native bf16" in choice.reason


@pytest.mark.parametrize("speedup, wanted", [(0.2, "fp32"), (1.05, "fp32"), (BF16_MIN_SPEEDUP, "bf16"), (3.0, "bf16")])
def test_native_bf16_is_taken_only_when_it_measures_faster(speedup, wanted):
    choice = choose_cpu_precision(768, flags={"avx512_bf16"}, measure=lambda width: speedup)
    assert choice.name == wanted and choice.per_machine and "measured" in choice.reason


def test_matmul_probe_finds_emulated_bf16_slower():
    # The probe itself on the forced slow path, in a fresh process (oneDNN reads the variable at start-up).
    code = "from gptlab.runtime.precision import bf16_matmul_speedup; print(bf16_matmul_speedup(768))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **EMULATED_BF16}, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 1.0


@pytest.mark.parametrize(
    "train, wanted, reason",
    [
        ({"precision": "bf16"}, "bf16", "train.json: precision"),
        ({"use_amp": False}, "fp32", "use_amp false"),
        ({"use_amp": True}, "fp16", "warning: fp16 autocast on a CPU is several times slower"),
        ({"precision": "fp16"}, "fp16", "warning"),
    ],
)
def test_explicit_precision_is_kept_on_cpu(train, wanted, reason):
    choice = choose_precision(TrainConfig(dataset="d", microbatch_size=1, **train), CPU, width=64)
    assert choice.name == wanted and reason in choice.reason and not choice.per_machine


@pytest.mark.parametrize("train", [{}, {"precision": "auto"}])
def test_default_and_auto_on_cpu_are_chosen_by_the_machine(train):
    choice = choose_precision(TrainConfig(dataset="d", microbatch_size=1, **train), CPU, width=64)
    assert choice.name in ("fp32", "bf16") and choice.per_machine
    assert ("no precision or use_amp given" if not train else "precision 'auto'") in choice.reason


def test_config_default_still_means_the_users_fp16_on_gpus():
    config = TrainConfig(dataset="d", microbatch_size=1)
    assert config.effective_precision == "fp16" and config.precision_is_default
    assert not TrainConfig(dataset="d", microbatch_size=1, use_amp=True).precision_is_default


def test_forced_slow_bf16_trains_in_fp32_and_says_why(make_run):
    train = {"min_train_tokens": 4 * 32 * 3, "checkpoint_interval": 2}
    run = make_run("auto", train=train)
    config = json.loads((run / "train.json").read_text())
    del config["precision"]  # the precision comes only from the default
    (run / "train.json").write_text(json.dumps(config))
    result = run_cli("train", str(run), "--no-progress", env=EMULATED_BF16)
    assert result.returncode == 0, result.stderr[-2000:]
    header = next(line for line in result.stdout.splitlines() if line.startswith("Precision:"))
    assert header.startswith("Precision: fp32 (no precision or use_amp given: ")
    assert "slower in bf16 than in fp32" in header or "no native bf16" in header
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == "fp32" and summary["precision_reason"] in header
    # oneDNN held to AVX2: the linear layers' CPU kernel is torch's, named in the log and the summary
    assert "| CPU matmul: torch (" in result.stdout and summary["environment"]["cpu_matmul"] == "torch"

    # Resumed on a machine that may choose otherwise, the run keeps the precision it started with.
    for path in (run / "checkpoints").glob("*-iteration-2"):
        shutil.rmtree(path)
    latest = sorted((run / "checkpoints").glob("*-iteration-*"))[-1].name
    (run / "summary.json").unlink()
    resumed = train_run(run, resume=latest, show_progress=False)
    assert resumed["precision"] == "fp32" and "recorded by the checkpoint" in resumed["precision_reason"]


def test_auto_on_a_cpu_measures_once_per_machine_and_torch_version(monkeypatch, tmp_path):
    """Seeds of one experiment must train alike: the second choice reads the first one's measurement, whatever the
    load; another torch version (or another cache) measures again."""
    from gptlab.runtime import precision

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = iter([1.5, 0.5, 0.7])
    monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda width: next(measured))
    first = choose_cpu_precision(768, flags={"avx512_bf16"})
    second = choose_cpu_precision(768, flags={"avx512_bf16"})
    assert first.name == second.name == "bf16"  # the second measurement (0.5) was never taken
    assert f"measured once for this CPU and torch {torch.__version__}" in first.reason
    assert str(tmp_path) in first.reason and list((tmp_path / "gptlab" / "precision").glob("bf16-speedup-*.json"))
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert choose_cpu_precision(768, flags={"avx512_bf16"}).name == "fp32"  # measured anew: 0.5
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    assert choose_cpu_precision(768, flags={"avx512_bf16"}).name == "fp32"  # measured anew: 0.7
