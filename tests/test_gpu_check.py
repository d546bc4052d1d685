"""benchmarks/gpu_check.py, the prepared GPU check: its `--small` mode runs every step on the CPU here, so
the script cannot rot between the rare runs on a GPU; a broken resume must make it fail."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
PHASES = {"environment", "prepare", "functional", "bench", "reference", "max_microbatch"}
CHECKS = {"train whole", "train whole-again", "sigterm", "resume", "eval", "generate", "export", "export logits"}


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_check(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--out", str(out), "--work-dir", str(tmp_path / "work"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=1200,
    )
    return result, json.loads(out.read_text())


@pytest.mark.slow
def test_small_mode_runs_every_phase_and_the_functional_pass_holds(tmp_path):
    result, report = run_check(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert report["mode"] == "small" and report["functional_ok"] is True and report["exit_code"] == 0
    assert set(report["phases"]) == PHASES and all(phase["ok"] for phase in report["phases"].values())

    functional = report["phases"]["functional"]
    assert set(functional["checks"]) == CHECKS and all(check["ok"] for check in functional["checks"].values())
    assert functional["skipped_after_break"] is None
    sigterm = functional["checks"]["sigterm"]
    assert 0 < sigterm["stopped_after_step"] < functional["steps"] - 1  # really stopped mid-run
    resume = functional["checks"]["resume"]
    assert (
        resume["resumed_vs_whole"]["bit_identical"] and resume["max_step_loss_diff"] == 0.0
    )  # the CPU is deterministic
    assert resume["steps_recorded"] == [functional["steps"], functional["steps"]]
    # the second uninterrupted run saves synchronously: the same weights, and its checkpoint times beside the first's
    assert resume["whole_vs_whole_again"]["bit_identical"]
    background, synchronous = functional["checks"]["train whole"], functional["checks"]["train whole-again"]
    assert background["background_checkpoints"] is True and synchronous["background_checkpoints"] is False
    for saves in (background, synchronous):
        assert saves["checkpoints"] >= 2 and saves["checkpoint_save_seconds"] > 0
        assert 0 <= saves["checkpoint_blocked_seconds"]
    assert "checkpoints of train whole-again (" in result.stdout and "synchronous): training waited" in result.stdout
    logits = functional["checks"]["export logits"]
    assert logits["max_abs_diff"] <= logits["tolerance"] and logits["export_vocab_size"] == 50257
    assert math.isfinite(functional["checks"]["eval"]["loss"]) and functional["checks"]["generate"]["text"]

    bench = report["phases"]["bench"]["runs"]
    reference = report["phases"]["reference"]["runs"]
    for name in ("bf16", "fp16", "fp32"):
        assert (
            bench[name]["precision"] == name
            and bench[name]["tokens_per_second"] > 0
            and bench[name]["peak_memory_bytes"] > 0
        )
        assert bench[name]["microbatch_size"] == 2
        assert reference[name]["precision"] == name and reference[name]["tokens_per_second"] > 0
    largest = report["phases"]["max_microbatch"]["runs"]
    assert all(entry["max_microbatch"] >= 1 for entry in largest.values())
    assert (
        largest["fp32_40GB"]["max_microbatch"] <= largest["fp32"]["max_microbatch"]
    )  # 64 MiB stands in for 40 GB, under 96 MiB
    assert largest["fp32_40GB"]["memory_limit_bytes"] == 64 * 2**20

    rows = {row["target"]: row for row in report["targets"]}
    assert rows["functional pass"]["status"] == "pass"
    assert rows["bf16 MFU"]["status"] == "n/a"  # a CPU has no datasheet peak in the table
    ratio = rows["use_amp (fp16 + scaler) vs book reference"]
    assert ratio["measured"] == pytest.approx(
        bench["fp16"]["tokens_per_second"] / reference["fp16"]["tokens_per_second"]
    )
    assert ratio["status"] == ("pass" if ratio["measured"] >= 4 else "miss")
    assert all(row["status"] in ("pass", "miss", "n/a") for row in rows.values())
    assert "functional pass" in result.stdout and "PASS" in result.stdout  # the printed table


@pytest.mark.slow
def test_a_resume_that_does_not_match_fails_the_check(tmp_path):
    result, report = run_check(tmp_path, "--phases", "functional", env={"GPU_CHECK_BREAK": "resume"})
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-4000:]
    assert report["functional_ok"] is False and report["exit_code"] == 1
    checks = report["phases"]["functional"]["checks"]
    assert not checks["resume"]["ok"] and not checks["resume"]["resumed_vs_whole"]["bit_identical"]
    assert "bit-identical, but the resumed one differs" in checks["resume"]["reason"]
    assert checks["sigterm"]["ok"] and checks["sigterm"]["nudged_for_test"]  # only the nudge broke it
    assert "FUNCTIONAL PASS FAILED" in result.stdout and "resume:" in result.stdout
    assert "bench" not in report["phases"]  # --phases was honoured
    # The break ends the pass at the resume's verdict; the steps after it are the plain check's (above).
    assert report["phases"]["functional"]["skipped_after_break"] == ["eval", "generate", "export", "export logits"]
    assert set(checks) == CHECKS - {"eval", "generate", "export", "export logits"}


def test_resume_is_judged_against_the_noise_between_two_uninterrupted_runs():
    judge = load_script().judge_resume
    same = {"same_names": True, "bit_identical": True, "max_abs_diff": 0.0}
    assert judge(same, same)[0]
    # The device is deterministic (two uninterrupted runs agree bit for bit): any difference is a resume bug.
    assert not judge({"same_names": True, "bit_identical": False, "max_abs_diff": 1e-9, "largest_in": "w"}, same)[0]
    noisy = {"same_names": True, "bit_identical": False, "max_abs_diff": 1e-4}
    assert judge({"same_names": True, "bit_identical": False, "max_abs_diff": 5e-4}, noisy)[0]
    verdict, reason = judge({"same_names": True, "bit_identical": False, "max_abs_diff": 2e-3}, noisy)
    assert not verdict and "allowed 10x" in reason
    assert not judge({"same_names": False, "bit_identical": False, "max_abs_diff": math.inf}, noisy)[0]


def test_bad_arguments_exit_2_with_one_line():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--phases", "functional,speed"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--phases: unknown speed" in result.stderr


def test_gpu_profile_small_names_the_step_time_and_its_top_ops(tmp_path):
    """benchmarks/gpu_profile.py, the profile written after the first GPU check, on the CPU with a tiny model:
    each variant gets a step time and its ops ranked by self time; a variant that fails is reported and the
    next one still runs."""
    out = tmp_path / "profile.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_profile.py"),
            "--small",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--top",
            "5",
            "--variant",
            "precision=fp32,drop_rate=0",
            "--variant",
            "precision=not-a-precision",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    good, bad = json.loads(out.read_text())["variants"]
    assert good["assignments"] == ["precision=fp32", "drop_rate=0"]
    assert good["ms_per_step"] > 0 and len(good["top"]) == 5
    times = [row["self_cpu_ms"] for row in good["top"]]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert "error" in bad and "precision" in bad["error"]
