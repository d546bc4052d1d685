"""One prepared check of gptlab on a GPU (issue 13): the CUDA defaults exercised end to end, then the
speed and memory targets measured, all on one card, in one command, within 8 minutes.

Everything gptlab does here goes through its command line (`python -m gptlab ... --json`), each step a
subprocess, so this script depends only on the CLI and the files a run writes, never on gptlab's
internal Python API; it imports only the users' model.json and train.json (gptlab.presets), written once. Run from the repository root:

    bash benchmarks/gpu_check.sh --out $OUT/gpu_check.json      # on the GPU machine (installs .whl/ first)
    python benchmarks/gpu_check.py --small --out /tmp/gpu_check.json   # the same steps, tiny model, CPU

What it does, and the time planned for each phase on one H100/H200 (`budget_seconds` in the JSON; a
command that overruns its cap is stopped and reported, so the whole run stays bounded):

| phase | what | budget |
|---|---|---|
| environment | GPU, driver, torch, CUDA, Python, CPU | 10 s |
| prepare | `gptlab prepare brown`: the embedded corpus | 20 s |
| functional | GPT-2-small-shaped run (the users' model.json, their defaults: fp16 + scaler, compile, ...), 60 steps, checkpoint every 10: one uninterrupted run, a second one (run-to-run noise), and one stopped by SIGTERM mid-run then `--resume latest`, all three at once; then eval, generate, export, and the export's logits (transformers) against the checkpoint's (the book's GPTModel) | 170 s |
| bench | `gptlab bench --synthetic` at microbatch 12: bf16, fp16 + scaler (`use_amp: true`), fp32 with TF32 off (`use_amp: false`); their compilation is done during the functional phase (same graphs, torch's compile cache) | 105 s |
| reference | `benchmarks/book_reference.py` on the same settings, same three precisions | 60 s |
| max_microbatch | `gptlab bench --find-max-microbatch`: bf16, fp32, fp32 capped at 40 GB; eager (`compile=false`), see below | 105 s |
| total | | 470 s (target 480) |

The JSON is rewritten after every phase, and `--deadline` (570 s on a GPU) stops any command still
running at that time after the start, so a hang still leaves a JSON within the device's 10-minute
command limit; SIGTERM to this script stops its commands and writes the JSON so far.

`--find-max-microbatch` runs eager: compiling each trial's microbatch would cost tens of seconds a
trial, a dozen trials a search. An eager peak is not an upper bound of the compiled one: on the first
GPU check (H200, torch 2.11) the compiled bf16 step at microbatch 12 peaked at 9.75 GiB, the eager one
between 5.32 GiB (microbatch 8) and 8.07 GiB (16); in fp32 the two agreed (9.31 GiB compiled, 6.95 and
11.72 GiB eager). So an eager maximum in bf16 overstates what fits compiled (docs/performance.md).

Resume check: the resumed run's final weights must be bit-identical to the uninterrupted run's. Where
they are not (CUDA kernels that add with atomics, such as the embedding backward, and compiled
reductions are not bit-reproducible, so two uninterrupted runs already differ), the difference must be
no larger than RESUME_NOISE_FACTOR x the difference between the two uninterrupted runs; if those two are
bit-identical, any difference is a failure.

`--small` runs every step with a tiny model (2 layers, 32 wide, context 32) on the CPU, in about a
minute on two quiet cores: the functional runs train in fp32 (`use_amp: false`; fp16 autocast on a CPU
without native fp16 is several times slower), the fp16 + scaler bench still runs through CPU autocast
for two timed steps, there is no compilation (the CPU default), and the device memory limits are
simulated (96 MiB, with 64 MiB standing in for the 40 GB card).
Its figures only prove the script works; the targets are for GPT-2 small on an H100/H200.

Exit status: 0 when every phase produced its figures and the functional pass held (a speed target may
still be missed: see the table); 1 when the functional pass failed; 3 when the functional pass held but
some speed or memory figure could not be measured; 2 for bad arguments. For tests, `--break resume` (or
GPU_CHECK_BREAK=resume) nudges the SIGTERM checkpoint's weights before the resume, which must fail it;
the functional pass then ends at the resume's verdict (eval, generate and export are skipped, and listed
as `skipped_after_break`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from gptlab.presets import USERS_MODEL, USERS_TRAIN

REPO = Path(__file__).resolve().parent.parent
BREAK_ENV = "GPU_CHECK_BREAK"
RESUME_NOISE_FACTOR = 10.0
LOGITS_TOLERANCE = 1e-3  # max |logit difference| between two fp32 implementations of the same weights, on the CPU
GIB = 1 << 30

TINY_MODEL = {
    "vocab_size": 50257,
    "context_length": 32,
    "emb_dim": 32,
    "n_heads": 2,
    "n_layers": 2,
    "drop_rate": 0.1,
    "qkv_bias": False,
}  # = book_reference.py's "tiny" preset


@dataclass
class Plan:
    """Shapes, step counts and time caps of one mode."""

    mode: str
    model: dict
    microbatch: int
    train_steps: int
    checkpoint_interval: int
    sigterm_after_records: int  # send SIGTERM once metrics.jsonl holds this many step records
    eval_batches: int
    bench_args: list[str]
    prewarm: bool
    reference_args: list[str]
    max_microbatch_limits: dict[str, Optional[str]]  # name -> --memory-limit-bytes (None: the device)
    max_microbatch_settings: list[str]
    device_settings: list[str]
    functional_train: dict  # train.json keys of the functional runs beyond the users' defaults
    child_threads: Optional[int]  # OMP_NUM_THREADS of every command (None: torch's default)
    budgets: dict[str, float]  # planned seconds per phase
    caps: dict[str, float]  # hard limit per command, seconds
    notes: list[str] = field(default_factory=list)


def gpu_plan() -> Plan:
    return Plan(
        mode="gpu",
        model=USERS_MODEL,
        microbatch=12,
        train_steps=60,
        checkpoint_interval=10,
        sigterm_after_records=20,
        eval_batches=4,
        bench_args=["--steps", "20", "--warmup-steps", "5", "--phase-steps", "3"],
        prewarm=True,
        reference_args=[
            "--device",
            "cuda",
            "--model",
            "gpt2-small",
            "--batch-size",
            "12",
            "--steps",
            "20",
            "--warmup-steps",
            "3",
        ],
        # The 40 GB search first: it is the target; on a 141 GB H200 the whole-card searches take 70 s (bf16)
        # and over 85 s (fp32) of bisection at large microbatches, and the first GPU check's deadline cut
        # the fp32 one and never reached the 40 GB one.
        max_microbatch_limits={"fp32_40GB": "40GB", "bf16": None, "fp32": None},
        max_microbatch_settings=["--set", "compile=false"],
        device_settings=[],
        functional_train={},
        child_threads=None,
        budgets={
            "environment": 10,
            "prepare": 20,
            "functional": 170,
            "bench": 105,
            "reference": 60,
            "max_microbatch": 105,
            "total": 480,
        },
        caps={
            "environment": 60,
            "prepare": 120,
            "train": 300,
            "resume": 180,
            "eval": 120,
            "generate": 120,
            "export": 120,
            "bench": 150,
            "reference": 90,
            "max_microbatch": 150,
        },
        notes=[
            "find-max-microbatch runs eager (compile=false); a compiled bf16 step measured ~45% above the eager peak at microbatch 12"
        ],
    )


def small_plan() -> Plan:
    return Plan(
        mode="small",
        model=TINY_MODEL,
        microbatch=2,
        train_steps=24,
        checkpoint_interval=10,
        sigterm_after_records=8,
        eval_batches=8,
        bench_args=["--steps", "2", "--warmup-steps", "1", "--phase-steps", "1"],
        prewarm=False,
        reference_args=[
            "--device",
            "cpu",
            "--model",
            "tiny",
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--warmup-steps",
            "1",
        ],
        max_microbatch_limits={"fp32_40GB": "64MiB", "bf16": "96MiB", "fp32": "96MiB"},
        max_microbatch_settings=[],
        device_settings=["--set", "device=cpu"],
        functional_train={"device": "cpu", "use_amp": False},
        # Three trainings run at once: with torch's default (one thread per core each) the cores are
        # oversubscribed and OpenMP's waiting threads spin, which cost several times the CPU time of the
        # work itself (the tiny model gains nothing from a second thread). One thread each, for every
        # command alike, so the bench and its book reference stay comparable.
        child_threads=1,
        budgets={
            "environment": 30,
            "prepare": 30,
            "functional": 120,
            "bench": 90,
            "reference": 45,
            "max_microbatch": 90,
            "total": 405,
        },
        caps={
            name: 600
            for name in (
                "environment",
                "prepare",
                "train",
                "resume",
                "eval",
                "generate",
                "export",
                "bench",
                "reference",
                "max_microbatch",
            )
        },
        notes=[
            "small mode: tiny model on the CPU; its figures prove the script works, the targets are for GPT-2 small on a GPU",
            "the functional runs train in fp32 (use_amp: false): fp16 autocast on a CPU without native fp16 is several times slower",
            "fp16 + scaler is benchmarked through CPU autocast all the same, for 2 timed steps",
            "no torch.compile (the CPU default); the device memory limits are simulated (96 MiB; 64 MiB stands in for 40 GB)",
            "every command runs with one thread (OMP_NUM_THREADS=1): three trainings run at once on the CPU",
        ],
    )


# --- running commands ------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env["PYTHONUNBUFFERED"] = "1"
    if CHILD_THREADS is not None:
        env["OMP_NUM_THREADS"] = str(CHILD_THREADS)
    return env


CHILD_THREADS: Optional[int] = None  # the plan's child_threads, set by main
DEADLINE: Optional[float] = None  # time.monotonic() after which every command still running is stopped (--deadline)
LIVE_JOBS: set["Job"] = set()


class Job:
    """One subprocess with its output in log files; started at once, waited for later. A thread reaps it,
    so its seconds end when it ended, however late `wait` is called. Its cap is cut short by DEADLINE."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, cap: float):
        self.name, self.argv = name, [str(a) for a in argv]
        self.cap = cap if DEADLINE is None else max(1.0, min(cap, DEADLINE - time.monotonic()))
        self.out_path, self.err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        self.started = time.monotonic()
        self.ended: Optional[float] = None
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            # Its own session, so a command over its cap can be stopped with everything it started.
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=err, env=child_env(), cwd=REPO, start_new_session=True
            )
        self.reaper = threading.Thread(target=self._reap, daemon=True)
        self.reaper.start()
        self.result: Optional[dict] = None
        LIVE_JOBS.add(self)

    def _reap(self) -> None:
        self.process.wait()
        self.ended = time.monotonic()

    def stop(self) -> None:
        """Kill the command and everything it started (its own session), then wait for it."""
        if self.reaper.is_alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.reaper.join()

    def wait(self) -> dict:
        if self.result is not None:
            return self.result
        self.reaper.join(timeout=max(1.0, self.cap - (time.monotonic() - self.started)))
        timed_out = self.reaper.is_alive()
        if timed_out:
            self.stop()
        LIVE_JOBS.discard(self)
        stdout = self.out_path.read_text(errors="replace")
        stderr = self.err_path.read_text(errors="replace")
        self.result = {
            "command": shlex.join(self.argv),
            "rc": self.process.returncode,
            "timed_out": timed_out,
            "seconds": round(self.ended - self.started, 2),
            "stdout": stdout,
            "stderr": stderr,
        }
        return self.result


def run(name: str, argv: list[str], log_dir: Path, cap: float) -> dict:
    return Job(name, argv, log_dir, cap).wait()


def gptlab(*args: Any) -> list[str]:
    return [sys.executable, "-m", "gptlab", *map(str, args)]


def summary(result: dict) -> dict:
    """What the JSON keeps of a command: how it went, and the end of stderr when it failed."""
    kept = {key: result[key] for key in ("command", "rc", "timed_out", "seconds")}
    if result["rc"] != 0 or result["timed_out"]:
        kept["stderr_tail"] = result["stderr"][-3000:]
        kept["stdout_tail"] = result["stdout"][-1000:]
    return kept


def json_output(result: dict) -> Optional[Any]:
    if result["rc"] != 0:
        return None
    try:
        return json.loads(result["stdout"])
    except json.JSONDecodeError:
        return None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def command_failure(result: dict) -> str:
    if result["timed_out"]:
        return f"timed out after {result['seconds']} s (its cap or --deadline)"
    lines = [line for line in result["stderr"].strip().splitlines() if line.strip()]
    return f"exit {result['rc']}" + (f": {lines[-1][:300]}" if lines else "")


def stop_on_sigterm(signum, frame) -> None:
    """The device tool stops a command past its limit with SIGTERM: end like an error, so the JSON so far is written."""
    raise SystemExit(128 + signum)


# --- environment -----------------------------------------------------------------------------------

ENVIRONMENT_SNIPPET = r"""
import json, platform, sys
import torch
info = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    properties = torch.cuda.get_device_properties(0)
    info.update(gpu=properties.name, gpu_count=torch.cuda.device_count(), gpu_memory_bytes=properties.total_memory,
                compute_capability=f"{properties.major}.{properties.minor}", bf16_supported=torch.cuda.is_bf16_supported())
for module in ("triton", "transformers", "pydantic", "safetensors", "tiktoken", "numpy", "gptlab", "llms_from_scratch"):
    try:
        info[module] = getattr(__import__(module), "__version__", "present")
    except Exception as error:
        info[module] = f"missing ({type(error).__name__})"
print(json.dumps(info))
"""


def cpu_model() -> Optional[str]:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or None


def nvidia_smi() -> Optional[dict]:
    if shutil.which("nvidia-smi") is None:
        return None
    fields = "name,driver_version,memory.total,clocks.max.sm,power.limit,pci.bus_id"
    try:
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as error:
        return {"error": str(error)}
    rows = [
        dict(zip(fields.split(","), (cell.strip() for cell in line.split(","))))
        for line in result.stdout.strip().splitlines()
    ]
    return {"gpus": rows} if result.returncode == 0 else {"error": result.stderr.strip()[-300:]}


def git_commit() -> Optional[str]:
    try:
        result = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def environment_phase(plan: Plan, log_dir: Path) -> dict:
    result = run("environment", [sys.executable, "-c", ENVIRONMENT_SNIPPET], log_dir, plan.caps["environment"])
    info = json_output(result) or {}
    info.update(
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        nvidia_smi=nvidia_smi(),
        gptlab_commit=git_commit(),
        python_executable=sys.executable,
    )
    ok = result["rc"] == 0
    return {"ok": ok, "seconds": result["seconds"], "info": info, **({} if ok else {"error": command_failure(result)})}


# --- functional pass -------------------------------------------------------------------------------


def write_run(run_dir: Path, model: dict, train: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "model.json", model)
    write_json(run_dir / "train.json", train)
    return run_dir


def metrics_records(run_dir: Path) -> int:
    try:
        with open(run_dir / "metrics.jsonl", "rb") as handle:
            return sum(1 for line in handle if line.endswith(b"\n"))
    except FileNotFoundError:
        return 0


def read_losses(run_dir: Path) -> list[float]:
    losses = []
    try:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if isinstance(record, dict) and "loss" in record and "step" in record:
                losses.append(record["loss"])
    except (OSError, json.JSONDecodeError):
        pass
    return losses


def latest_weights_path(run_dir: Path) -> Path:
    return (run_dir / "checkpoints" / "latest").resolve() / "model.safetensors"


def compare_weights(a_path: Path, b_path: Path) -> dict:
    """Bit-identity and the largest absolute difference over every tensor of two model.safetensors files."""
    import torch
    from safetensors.torch import load_file

    a, b = load_file(a_path), load_file(b_path)
    if a.keys() != b.keys():
        return {
            "same_names": False,
            "bit_identical": False,
            "max_abs_diff": math.inf,
            "only_in_first": sorted(a.keys() - b.keys())[:5],
            "only_in_second": sorted(b.keys() - a.keys())[:5],
        }
    identical, largest, worst = True, 0.0, None
    for name in sorted(a):
        if a[name].shape != b[name].shape or a[name].dtype != b[name].dtype:
            return {"same_names": True, "bit_identical": False, "max_abs_diff": math.inf, "mismatched_tensor": name}
        if not torch.equal(a[name], b[name]):
            identical = False
            difference = (a[name].double() - b[name].double()).abs().max().item()
            if difference > largest:
                largest, worst = difference, name
    return {"same_names": True, "bit_identical": identical, "max_abs_diff": largest, "largest_in": worst}


def nudge_weights(path: Path) -> str:
    """--break resume: add 1e-3 to the first floating tensor of a checkpoint, so the resumed run must differ."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    name = next(n for n in sorted(tensors) if tensors[n].is_floating_point() and not n.endswith(".mask"))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(path), metadata=metadata)
    # A deliberate change, not damage: its line in the checkpoint's checksums.sha256 (sha256sum format) is
    # rewritten, so the resume takes the nudged weights instead of refusing the file.
    checksums = path.with_name("checksums.sha256")
    if checksums.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines = [
            f"{digest}  {path.name}" if line.endswith(f"  {path.name}") else line
            for line in checksums.read_text(encoding="utf-8").splitlines()
        ]
        checksums.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return name


def checkpoint_times(run_dir: Path) -> dict:
    """What a finished run's summary.json says its checkpoints cost: the time training waited for them and the
    time their saves took (snapshot to rename), with whether they were written in the background."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        train = json.loads((run_dir / "train.json").read_text())
    except (OSError, ValueError):
        return {}
    return {
        "background_checkpoints": train.get("background_checkpoints", True),
        "checkpoints": len([p for p in (run_dir / "checkpoints").iterdir() if p.is_dir() and not p.is_symlink()]),
        "checkpoint_blocked_seconds": summary.get("checkpoint_blocked_seconds"),
        "checkpoint_save_seconds": summary.get("checkpoint_save_seconds"),
    }


def judge_resume(resumed: dict, noise: dict) -> tuple[bool, str]:
    if resumed.get("bit_identical"):
        return True, "bit-identical to the uninterrupted run"
    if not resumed.get("same_names", False):
        return False, "the resumed run's weights do not have the uninterrupted run's tensors"
    if noise.get("bit_identical"):
        return False, (
            f"two uninterrupted runs are bit-identical, but the resumed one differs (max |diff| "
            f"{resumed['max_abs_diff']:.3g} in {resumed.get('largest_in')})"
        )
    bound = RESUME_NOISE_FACTOR * noise["max_abs_diff"]
    verdict = resumed["max_abs_diff"] <= bound
    return verdict, (
        f"not bit-identical; max |diff| {resumed['max_abs_diff']:.3g} vs {noise['max_abs_diff']:.3g} between two "
        f"uninterrupted runs (allowed {RESUME_NOISE_FACTOR:g}x: {bound:.3g}); the uninterrupted runs already "
        "differ, so the device's kernels are not bit-reproducible here (atomic adds in the embedding "
        "backward and in compiled reductions)"
    )


def compare_logits(run_dir: Path, export_dir: Path, data_dir: Path) -> dict:
    """The export (transformers' GPT2LMHeadModel) against the checkpoint itself loaded, strictly, into the book's
    GPTModel, the users' own loader: fp32 logits on the CPU over the first tokens of the test split."""
    import torch
    from safetensors.torch import load_file, load_model
    from transformers import GPT2LMHeadModel

    try:
        from llms_from_scratch.ch04 import GPTModel
    except ImportError as error:
        return {
            "ok": False,
            "error": f"llms_from_scratch is not importable ({error}); scripts/gpu_wheels.sh brings its wheel",
        }
    model_config = json.loads((run_dir / "model.json").read_text())
    book = GPTModel({**model_config, "drop_rate": 0.0})  # the users' smoke test forces dropout off
    if model_config.get("tie_weights"):
        book.out_head.weight = book.tok_emb.weight
    checkpoint = latest_weights_path(run_dir)
    load_model(book, str(checkpoint))  # strict, as the users' tools load it
    book.eval()
    exported = GPT2LMHeadModel.from_pretrained(str(export_dir), torch_dtype=torch.float32).eval()
    length = min(model_config["context_length"], 128)
    tokens = load_file(data_dir / "test.safetensors")["tokens"][:length].to(torch.long).unsqueeze(0)
    with torch.no_grad():
        book_logits = book(tokens).float()
        export_logits = exported(tokens).logits.float()
    if book_logits.shape != export_logits.shape:
        return {
            "ok": False,
            "error": f"logits shapes differ: checkpoint {tuple(book_logits.shape)}, export {tuple(export_logits.shape)}",
        }
    difference = (book_logits - export_logits).abs().max().item()
    greedy = exported.generate(
        tokens[:, :4], max_new_tokens=8, do_sample=False, pad_token_id=model_config["vocab_size"] - 1
    )
    return {
        "ok": difference <= LOGITS_TOLERANCE,
        "max_abs_diff": difference,
        "tolerance": LOGITS_TOLERANCE,
        "tokens": length,
        "checkpoint": str(checkpoint.parent.name),
        "export_vocab_size": exported.config.vocab_size,
        "logit_scale": book_logits.abs().max().item(),
        "export_greedy_ids": greedy[0].tolist(),
    }


def functional_phase(plan: Plan, work: Path, log_dir: Path, data_dir: Path, break_resume: bool) -> dict:
    checks: dict[str, dict] = {}
    commands: dict[str, dict] = {}
    started = time.monotonic()

    def check(name: str, ok: bool, **details: Any) -> bool:
        checks[name] = {"ok": bool(ok), **details}
        return bool(ok)

    tokens = plan.train_steps * plan.microbatch * plan.model["context_length"]
    train = {
        "dataset": str(data_dir),
        "microbatch_size": plan.microbatch,
        "checkpoint_interval": plan.checkpoint_interval,
        "min_train_tokens": tokens,
        "validation_batches": 2,
        "random_seed": 42,
    }
    train.update(plan.functional_train)
    # The second uninterrupted run saves its checkpoints synchronously (the same training, only the saves
    # differ), so its summary against the first's says what background checkpoints save on this machine.
    runs = {
        name: write_run(
            work / "functional" / name,
            plan.model,
            {**train, "background_checkpoints": name != "whole-again"},
        )
        for name in ("whole", "whole-again", "preempted")
    }

    # The three trainings at once (and, on a GPU, the benches' compilation into torch's compile cache).
    jobs = {
        name: Job(f"train-{name}", gptlab("train", runs[name], "--no-progress"), log_dir, plan.caps["train"])
        for name in runs
    }
    prewarm = {}
    if plan.prewarm:
        speed_dir = work / "speed" / "run"
        for precision, setting in (("bf16", "precision=bf16"), ("fp32", "use_amp=false")):
            prewarm[precision] = Job(
                f"prewarm-{precision}",
                gptlab(
                    "bench",
                    speed_dir,
                    "--synthetic",
                    "--steps",
                    "1",
                    "--warmup-steps",
                    "2",
                    "--phase-steps",
                    "0",
                    "--json",
                    "--set",
                    setting,
                ),
                log_dir,
                plan.caps["bench"],
            )
    preempted, sigterm_sent = jobs["preempted"], False
    while preempted.ended is None and time.monotonic() - preempted.started < plan.caps["train"]:
        if metrics_records(runs["preempted"]) >= plan.sigterm_after_records:
            preempted.process.send_signal(signal.SIGTERM)
            sigterm_sent = True
            break
        time.sleep(0.02)
    results = {name: job.wait() for name, job in jobs.items()}
    commands.update({f"train {name}": summary(result) for name, result in results.items()})
    for name in ("whole", "whole-again"):
        check(
            f"train {name}",
            results[name]["rc"] == 0 and (runs[name] / "summary.json").is_file(),
            **({} if results[name]["rc"] == 0 else {"error": command_failure(results[name])}),
            **checkpoint_times(runs[name]),
        )
    stdout = results["preempted"]["stdout"]
    stopped_at = (
        int(stdout.split("Stopped by SIGTERM after step ")[1].split(";")[0])
        if "Stopped by SIGTERM after step " in stdout
        else None
    )
    check(
        "sigterm",
        sigterm_sent
        and results["preempted"]["rc"] == 0
        and stopped_at is not None
        and stopped_at < plan.train_steps - 1
        and not (runs["preempted"] / "summary.json").exists(),
        sent_after_records=plan.sigterm_after_records if sigterm_sent else None,
        stopped_after_step=stopped_at,
        of_steps=plan.train_steps,
        **({} if results["preempted"]["rc"] == 0 else {"error": command_failure(results["preempted"])}),
    )

    if checks["sigterm"]["ok"]:
        if break_resume:
            checks["sigterm"]["nudged_for_test"] = nudge_weights(latest_weights_path(runs["preempted"]))
        result = run(
            "resume",
            gptlab("train", runs["preempted"], "--resume", "latest", "--no-progress"),
            log_dir,
            plan.caps["resume"],
        )
        commands["resume"] = summary(result)
        resumed_ok = result["rc"] == 0 and (runs["preempted"] / "summary.json").is_file()
        if resumed_ok and checks["train whole"]["ok"] and checks["train whole-again"]["ok"]:
            resumed = compare_weights(latest_weights_path(runs["whole"]), latest_weights_path(runs["preempted"]))
            noise = compare_weights(latest_weights_path(runs["whole"]), latest_weights_path(runs["whole-again"]))
            verdict, reason = judge_resume(resumed, noise)
            whole_losses, resumed_losses = read_losses(runs["whole"]), read_losses(runs["preempted"])
            loss_diff = (
                max(abs(a - b) for a, b in zip(whole_losses, resumed_losses))
                if whole_losses and len(whole_losses) == len(resumed_losses)
                else None
            )
            check(
                "resume",
                verdict,
                reason=reason,
                resumed_vs_whole=resumed,
                whole_vs_whole_again=noise,
                steps_recorded=[len(whole_losses), len(resumed_losses)],
                max_step_loss_diff=loss_diff,
            )
        else:
            check(
                "resume",
                False,
                error=command_failure(result)
                if result["rc"] != 0
                else "the resumed run or an uninterrupted one did not finish",
            )
    else:
        check("resume", False, error="not attempted: the SIGTERM step failed")

    # A broken resume (--break, for tests) ends the pass at its verdict: what follows is the same as in a
    # check without the break, which covers it, and is not what a test of the break asks about.
    skipped = ["eval", "generate", "export", "export logits"] if break_resume else []
    if not break_resume:
        final = (
            runs["preempted"]
            if checks["resume"]["ok"] or (runs["preempted"] / "summary.json").is_file()
            else runs["whole"]
        )
        result = run(
            "eval",
            gptlab("eval", final, "--checkpoint", "latest", "--batches", plan.eval_batches, "--json"),
            log_dir,
            plan.caps["eval"],
        )
        commands["eval"] = summary(result)
        evaluation = json_output(result) or {}
        loss = evaluation.get("loss")
        check(
            "eval",
            isinstance(loss, (int, float)) and math.isfinite(loss),
            loss=loss,
            split=evaluation.get("split"),
            tokens=evaluation.get("tokens"),
            **({} if result["rc"] == 0 else {"error": command_failure(result)}),
        )

        new_tokens = 20
        result = run(
            "generate",
            gptlab("generate", final, "--checkpoint", "latest", "--json", "--seed", "1", "--tokens", new_tokens),
            log_dir,
            plan.caps["generate"],
        )
        commands["generate"] = summary(result)
        sample = json_output(result) or {}
        check(
            "generate",
            len(sample.get("token_ids", [])) >= new_tokens and bool(sample.get("text")),
            text=sample.get("text"),
            **({} if result["rc"] == 0 else {"error": command_failure(result)}),
        )

        export_dir = work / "functional" / "export"
        result = run(
            "export",
            gptlab("export", final, export_dir, "--checkpoint", "latest", "--overwrite"),
            log_dir,
            plan.caps["export"],
        )
        commands["export"] = summary(result)
        if check(
            "export",
            result["rc"] == 0 and (export_dir / "config.json").is_file(),
            **({} if result["rc"] == 0 else {"error": command_failure(result)}),
        ):
            try:
                logits = compare_logits(final, export_dir, data_dir)
            except Exception as error:  # noqa: BLE001 - any failure here is the check's verdict, reported with its cause
                logits = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            check("export logits", logits.pop("ok"), **logits)
        else:
            check("export logits", False, error="not attempted: the export failed")

    prewarmed = {}
    for precision, job in prewarm.items():
        result = job.wait()
        prewarmed[precision] = {
            **summary(result),
            "compile_and_warmup_seconds": (json_output(result) or {}).get("warmup_seconds"),
        }
    return {
        "ok": all(item["ok"] for item in checks.values()),
        "seconds": round(time.monotonic() - started, 2),
        "steps": plan.train_steps,
        "checkpoint_interval": plan.checkpoint_interval,
        "microbatch": plan.microbatch,
        "model": plan.model,
        "checks": checks,
        "skipped_after_break": skipped or None,
        "commands": commands,
        "prewarm": prewarmed or None,
    }


# --- speed and memory ------------------------------------------------------------------------------

SPEED_SETTINGS = {  # name -> (gptlab bench --set, book_reference --precision)
    "bf16": ("precision=bf16", "bf16"),
    "fp16": ("use_amp=true", "fp16"),  # the users' use_amp: fp16 autocast + GradScaler + TF32
    "fp32": ("use_amp=false", "fp32"),  # the users' fp32: TF32 off
}
BENCH_FIELDS = (
    "precision",
    "device_name",
    "microbatch_size",
    "context_length",
    "tokens_per_step",
    "steps",
    "warmup_steps",
    "warmup_seconds",
    "ms_per_step",
    "tokens_per_second",
    "model_tflops_per_second",
    "peak_tflops",
    "peak_tflops_source",
    "mfu",
    "peak_memory_bytes",
    "peak_memory_method",
    "phases_ms",
    "parameters",
)


def bench_phase(plan: Plan, speed_dir: Path, log_dir: Path) -> dict:
    started, results = time.monotonic(), {}
    for name, (setting, _) in SPEED_SETTINGS.items():
        result = run(
            f"bench-{name}",
            gptlab(
                "bench", speed_dir, "--synthetic", "--json", *plan.bench_args, *plan.device_settings, "--set", setting
            ),
            log_dir,
            plan.caps["bench"],
        )
        output = json_output(result)
        results[name] = (
            {"ok": True, **{key: output.get(key) for key in BENCH_FIELDS}, "command": summary(result)}
            if output
            else {"ok": False, "error": command_failure(result), "command": summary(result)}
        )
    return {
        "ok": all(r["ok"] for r in results.values()),
        "seconds": round(time.monotonic() - started, 2),
        "runs": results,
    }


def reference_phase(plan: Plan, log_dir: Path) -> dict:
    started, results = time.monotonic(), {}
    for name, (_, precision) in SPEED_SETTINGS.items():
        result = run(
            f"reference-{name}",
            [
                sys.executable,
                str(REPO / "benchmarks" / "book_reference.py"),
                *plan.reference_args,
                "--precision",
                precision,
            ],
            log_dir,
            plan.caps["reference"],
        )
        try:
            output = json.loads(result["stdout"].strip().splitlines()[-1]) if result["rc"] == 0 else None
        except (json.JSONDecodeError, IndexError):
            output = None
        results[name] = (
            {
                "ok": True,
                **{
                    k: output.get(k)
                    for k in (
                        "precision",
                        "device",
                        "batch_size",
                        "steps",
                        "tokens_per_second",
                        "peak_memory_bytes",
                        "parameters",
                    )
                },
                "command": summary(result),
            }
            if output
            else {"ok": False, "error": command_failure(result), "command": summary(result)}
        )
    return {
        "ok": all(r["ok"] for r in results.values()),
        "seconds": round(time.monotonic() - started, 2),
        "runs": results,
    }


def max_microbatch_phase(plan: Plan, speed_dir: Path, log_dir: Path) -> dict:
    started, results = time.monotonic(), {}
    for name, limit in plan.max_microbatch_limits.items():
        setting = SPEED_SETTINGS[name.split("_")[0]][0]
        argv = gptlab(
            "bench",
            speed_dir,
            "--find-max-microbatch",
            "--json",
            *plan.device_settings,
            *plan.max_microbatch_settings,
            "--set",
            setting,
            *(["--memory-limit-bytes", limit] if limit else []),
        )
        result = run(f"max-microbatch-{name}", argv, log_dir, plan.caps["max_microbatch"])
        output = json_output(result)
        if output:
            results[name] = {
                "ok": True,
                "memory_limit": limit or "the device",
                "max_microbatch": output.get("max_microbatch"),
                "memory_limit_bytes": output.get("memory_limit_bytes"),
                "memory_limit_source": output.get("memory_limit_source"),
                "trials": [(t["microbatch"], t["outcome"], t["peak_memory_bytes"]) for t in output.get("trials", [])],
                "precision": output.get("precision"),
                "command": summary(result),
            }
        else:
            results[name] = {
                "ok": False,
                "memory_limit": limit or "the device",
                "error": command_failure(result),
                "command": summary(result),
            }
    return {
        "ok": all(r["ok"] for r in results.values()),
        "seconds": round(time.monotonic() - started, 2),
        "runs": results,
    }


# --- targets and the table -------------------------------------------------------------------------


def targets(report: dict, total_seconds: float, plan: Plan) -> list[dict]:
    phases = report["phases"]
    bench = phases.get("bench", {}).get("runs", {})
    reference = phases.get("reference", {}).get("runs", {})
    largest = phases.get("max_microbatch", {}).get("runs", {})

    def row(name: str, target: str, measured: Optional[float], passed: Optional[bool], shown: str) -> dict:
        status = "n/a" if passed is None else ("pass" if passed else "miss")
        return {"target": name, "goal": target, "measured": measured, "shown": shown, "status": status}

    def value(group: dict, name: str, key: str) -> Optional[float]:
        entry = group.get(name) or {}
        return entry.get(key) if entry.get("ok") else None

    rows = []
    functional = phases.get("functional", {})
    checks = functional.get("checks", {})
    failed = [name for name, check in checks.items() if not check["ok"]]
    rows.append(
        row(
            "functional pass",
            "every check ok",
            None,
            functional.get("ok"),
            (
                f"{len(checks) - len(failed)}/{len(checks)} checks ok"
                + (f"; failed: {', '.join(failed)}" if failed else "")
            )
            if checks
            else "not run",
        )
    )
    mfu = value(bench, "bf16", "mfu")
    rows.append(
        row(
            "bf16 MFU",
            ">= 55% of the datasheet peak",
            mfu,
            None if mfu is None else mfu >= 0.55,
            f"{mfu * 100:.1f}%" if mfu is not None else "n/a (no peak for this device)",
        )
    )
    for name, factor in (("fp16", 4.0), ("fp32", 1.3)):
        ours, theirs = value(bench, name, "tokens_per_second"), value(reference, name, "tokens_per_second")
        ratio = ours / theirs if ours and theirs else None
        label = "use_amp (fp16 + scaler)" if name == "fp16" else "fp32, TF32 off"
        rows.append(
            row(
                f"{label} vs book reference",
                f">= {factor:g}x",
                ratio,
                None if ratio is None else ratio >= factor,
                f"{ratio:.2f}x ({ours:,.0f} vs {theirs:,.0f} tokens/s)" if ratio else "n/a",
            )
        )
    for name, limit_gib in (("fp32", 17.5), ("bf16", 12.0)):
        peak = value(bench, name, "peak_memory_bytes")
        microbatch = value(bench, name, "microbatch_size")
        rows.append(
            row(
                f"{name} peak memory at microbatch {microbatch or plan.microbatch}",
                f"<= {limit_gib:g} GiB",
                peak / GIB if peak else None,
                None if not peak else peak / GIB <= limit_gib,
                f"{peak / GIB:.2f} GiB" if peak else "n/a",
            )
        )
    capped = value(largest, "fp32_40GB", "max_microbatch")
    limit = plan.max_microbatch_limits["fp32_40GB"]
    rows.append(
        row(
            f"fp32 fits {limit} at the users' microbatch",
            f"max microbatch >= {plan.microbatch}",
            capped,
            None if capped is None else capped >= plan.microbatch,
            f"max microbatch {capped}" if capped is not None else "n/a",
        )
    )
    budget = plan.budgets["total"]
    rows.append(
        row("whole check", f"<= {budget:g} s", total_seconds, total_seconds <= budget, f"{total_seconds:.0f} s")
    )
    return rows


def table(report: dict) -> str:
    lines = [
        f"gpu_check ({report['mode']} mode) on {report['environment']['info'].get('gpu') or report['environment']['info'].get('cpu')}"
    ]
    for note in report["notes"]:
        lines.append(f"  note: {note}")
    speed = [("setting", "gptlab tokens/s", "MFU", "peak memory", "reference tokens/s", "ratio")]
    bench = report["phases"].get("bench", {}).get("runs", {})
    reference = report["phases"].get("reference", {}).get("runs", {})
    for name in SPEED_SETTINGS:
        ours, theirs = bench.get(name, {}), reference.get(name, {})
        tps, ref = ours.get("tokens_per_second"), theirs.get("tokens_per_second")
        speed.append(
            (
                name,
                f"{tps:,.0f}" if tps else "failed",
                f"{ours['mfu'] * 100:.1f}%" if ours.get("mfu") else "n/a",
                f"{ours['peak_memory_bytes'] / GIB:.2f} GiB" if ours.get("peak_memory_bytes") else "n/a",
                f"{ref:,.0f}" if ref else "failed",
                f"{tps / ref:.2f}x" if tps and ref else "n/a",
            )
        )
    for name, entry in report["phases"].get("max_microbatch", {}).get("runs", {}).items():
        speed.append(
            (
                f"max microbatch {name}",
                str(entry.get("max_microbatch", "failed")),
                "",
                f"limit {entry['memory_limit']}",
                "",
                "",
            )
        )
    rows = [("target", "goal", "measured", "status")] + [
        (t["target"], t["goal"], t["shown"], t["status"].upper()) for t in report["targets"]
    ]
    for block in (speed, rows):
        widths = [max(len(str(r[i])) for r in block) for i in range(len(block[0]))]
        lines.append("")
        for index, cells in enumerate(block):
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
    phase_times = ", ".join(
        f"{name} {p.get('seconds', 0):.0f}/{report['budget_seconds'].get(name, 0):g} s"
        for name, p in report["phases"].items()
    )
    lines += [
        "",
        f"seconds used/planned: {phase_times}; total {report['total_seconds']:.0f}/{report['budget_seconds']['total']:g} s",
    ]
    checks = report["phases"].get("functional", {}).get("checks", {})
    for name in ("train whole", "train whole-again"):
        saves = checks.get(name, {})
        if saves.get("checkpoint_blocked_seconds") is not None:
            lines.append(
                f"checkpoints of {name} ({saves['checkpoints']}, "
                f"{'background' if saves['background_checkpoints'] else 'synchronous'}): training waited "
                f"{saves['checkpoint_blocked_seconds']:.2f} s, the saves took {saves['checkpoint_save_seconds']:.2f} s"
            )
    if not report["phases"].get("functional", {}).get("ok"):
        lines.append("FUNCTIONAL PASS FAILED:")
        for name, item in report["phases"].get("functional", {}).get("checks", {}).items():
            if not item["ok"]:
                lines.append(f"  {name}: {item.get('reason') or item.get('error')}")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="One prepared check of gptlab on a GPU (or, with --small, on the CPU)."
    )
    parser.add_argument("--small", action="store_true", help="tiny model on the CPU: every step, in about a minute")
    parser.add_argument(
        "--out", type=Path, default=None, help="write the JSON with every figure here (command logs go beside it)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where runs and checkpoints go (default: a temporary folder, removed after)",
    )
    parser.add_argument(
        "--phases",
        default="functional,bench,reference,max_microbatch",
        help="comma-separated subset of functional,bench,reference,max_microbatch (environment and prepare always run)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds after the start at which every command still running is stopped, so the JSON is "
        "written within a time limit (default: 570 on a GPU, under the device's 10-minute command limit; none with --small)",
    )
    parser.add_argument(
        "--break",
        dest="break_step",
        choices=["resume"],
        default=os.environ.get(BREAK_ENV) or None,
        help=f"for tests: break a functional step on purpose (also ${BREAK_ENV}=resume)",
    )
    args = parser.parse_args(argv)
    if args.break_step not in (None, "resume"):
        parser.error(f"${BREAK_ENV}={args.break_step}: only 'resume' is allowed")
    chosen = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(chosen) - {"functional", "bench", "reference", "max_microbatch"})
    if unknown:
        parser.error(f"--phases: unknown {', '.join(unknown)}; allowed: functional, bench, reference, max_microbatch")

    plan = small_plan() if args.small else gpu_plan()
    started = time.monotonic()
    global DEADLINE, CHILD_THREADS
    CHILD_THREADS = plan.child_threads
    deadline = args.deadline if args.deadline is not None else (None if args.small else 570.0)
    DEADLINE = started + deadline if deadline else None
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    log_dir = args.out.with_name(args.out.stem + "-logs") if args.out else work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "mode": plan.mode,
        "command": shlex.join([sys.executable, *sys.argv]),
        "notes": plan.notes,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget_seconds": plan.budgets,
        "deadline_seconds": deadline,
        "log_dir": str(log_dir),
        "phases": {},
    }

    def save_so_far() -> None:
        if args.out:
            write_json(args.out, {**report, "total_seconds": round(time.monotonic() - started, 2)})

    try:
        environment = environment_phase(plan, log_dir)
        report["environment"] = environment
        report["phases"]["environment"] = {"ok": environment["ok"], "seconds": environment["seconds"]}
        print("environment:", json.dumps(environment["info"], indent=1), flush=True)
        if not args.small and not environment["info"].get("cuda_available"):
            print(
                "error: torch sees no CUDA device; run with --small for the CPU version of this check", file=sys.stderr
            )
            return 2

        data_dir = work / "data"
        result = run("prepare", gptlab("prepare", "brown", data_dir, "--overwrite"), log_dir, plan.caps["prepare"])
        report["phases"]["prepare"] = {
            "ok": result["rc"] == 0,
            "seconds": result["seconds"],
            "command": summary(result),
        }
        print(f"prepare: {'ok' if result['rc'] == 0 else command_failure(result)} ({result['seconds']} s)", flush=True)
        save_so_far()

        speed_dir = write_run(work / "speed" / "run", plan.model, {**USERS_TRAIN, "microbatch_size": plan.microbatch})
        if "functional" in chosen:
            if report["phases"]["prepare"]["ok"]:
                report["phases"]["functional"] = functional_phase(
                    plan, work, log_dir, data_dir, args.break_step == "resume"
                )
            else:
                report["phases"]["functional"] = {
                    "ok": False,
                    "seconds": 0,
                    "checks": {"prepare": {"ok": False, "error": command_failure(result)}},
                }
            print(
                f"functional: {'ok' if report['phases']['functional']['ok'] else 'FAILED'} ({report['phases']['functional']['seconds']} s)",
                flush=True,
            )
            save_so_far()
        for name, phase in (
            ("bench", lambda: bench_phase(plan, speed_dir, log_dir)),
            ("reference", lambda: reference_phase(plan, log_dir)),
            ("max_microbatch", lambda: max_microbatch_phase(plan, speed_dir, log_dir)),
        ):
            if name in chosen:
                report["phases"][name] = phase()
                print(
                    f"{name}: {'ok' if report['phases'][name]['ok'] else 'FAILED'} ({report['phases'][name]['seconds']} s)",
                    flush=True,
                )
                save_so_far()
        report["total_seconds"] = round(time.monotonic() - started, 2)
        report["targets"] = targets(report, report["total_seconds"], plan)
        functional_ok = report["phases"].get("functional", {}).get("ok", True)
        others_ok = all(p.get("ok") for name, p in report["phases"].items() if name != "functional")
        report["functional_ok"] = functional_ok
        report["exit_code"] = 0 if functional_ok and others_ok else (1 if not functional_ok else 3)
        print(table(report), flush=True)
        return report["exit_code"]
    finally:
        for job in list(LIVE_JOBS):  # only after an error or SIGTERM: normally every job was waited for
            job.stop()
        if args.out:
            report.setdefault("total_seconds", round(time.monotonic() - started, 2))
            write_json(args.out, report)
            print(f"wrote {args.out}", flush=True)
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
