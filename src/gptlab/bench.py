"""Throughput harness: time training steps of a run's real configuration, with the trainer's own step code.

`bench_run` writes the run's resolved config into a temporary run directory, builds it with
`gptlab.train.loop.setup` and times `forward_backward` + `optimizer_step`, the two functions `fit` calls,
so whatever the trainer does (precision, optimizer, fast paths) is what is measured. It reports tokens/s,
ms per step, model FLOPs per token, MFU against the device's datasheet peak, peak memory, and the time
spent in data, forward, backward and optimizer. `compare_runs` does that once per override;
`find_max_microbatch` finds the largest microbatch that fits by doubling, then bisecting.

docs/performance.md gives the formulas and how each number is measured.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import os
import re
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gptlab.config import ModelConfig, RunConfig, TrainConfig, load_run_config, merge_overrides, parse_assignments
from gptlab.data.locate import locate_dataset
from gptlab.data.tokens import TokenSplitWriter
from gptlab.errors import UserError
from gptlab.rundir import MODEL_FILE, TRAIN_FILE
from gptlab.train.loop import Run, forward_backward, optimizer_step, setup
from gptlab.train.record import environment

PHASES = ("data", "forward", "backward", "optimizer")
TRIAL_STEPS = 2  # a microbatch trial runs two steps: AdamW's state only exists from the first step's end
MAX_MICROBATCH_SEARCHED = 1 << 16

# --- model FLOPs ----------------------------------------------------------------------------------


def matmul_parameters(config: ModelConfig) -> int:
    """Weights that take part in a matmul for every token: per block Q, K, V and the attention output
    (4 C^2) and the MLP (8 C^2), plus the output head (V x C).

    Position embeddings and an untied token embedding are table look-ups, not matmuls; a tied model's
    shared matrix counts once, as the head. Biases and LayerNorm parameters (about 0.1% of GPT-2 small)
    are additions and are left out. Computed from the config, so a head padded for speed still counts
    the real vocabulary: MFU credits only useful work.
    """
    width = config.emb_dim
    return config.n_layers * 12 * width * width + config.vocab_size * width


def flops_per_token(config: ModelConfig) -> int:
    """Training FLOPs per token, the PaLM / nanoGPT estimate: 6 x matmul parameters (2 forward, 4 backward)
    + 12 x layers x width x context (attention scores and their weighted sum, forward and backward,
    counted over the full T x T square as the convention has it, although a causal kernel computes half)."""
    return 6 * matmul_parameters(config) + 12 * config.n_layers * config.emb_dim * config.context_length


# --- device peaks ---------------------------------------------------------------------------------

# Dense peak TFLOP/s from the vendors' datasheets (the datasheets' larger figures assume 2:4 sparsity).
# fp16 and bf16: tensor cores accumulating in float32, as autocast uses them; tf32: tensor cores;
# fp32: plain float32 (gptlab's 'fp32' turns TF32 off). First matching pattern wins, so the more
# specific names come first. Matched against torch.cuda.get_device_name().
PEAK_TFLOPS: list[tuple[str, str, dict[str, float]]] = [
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (r"\bH100\b.*\bNVL\b", "H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (r"\bH100\b", "H100 SXM", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    (r"\bH200\b.*\bNVL\b", "H200 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (r"\bG?H200\b", "H200 SXM", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    (r"\bA100\b", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"\bA10\b", "A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"\bL40S\b", "L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    (r"\bL40\b", "L40", {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    (r"\bL4\b", "L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"RTX 4090", "RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    (r"RTX 3090 Ti", "RTX 3090 Ti", {"bf16": 80.0, "fp16": 80.0, "tf32": 40.0, "fp32": 40.0}),
    (r"RTX 3090", "RTX 3090", {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6}),
    (r"\bV100\b.*\bPCIE\b", "V100 PCIe", {"fp16": 112.0, "tf32": 14.0, "fp32": 14.0}),  # no bf16 or TF32 units
    (r"\bV100\b", "V100 SXM2", {"fp16": 125.0, "tf32": 15.7, "fp32": 15.7}),
]


def lookup_peak_tflops(device_name: str, precision: str) -> Optional[tuple[float, str]]:
    """(dense peak TFLOP/s, which table row) for a device name and gptlab precision; None when unknown."""
    for pattern, label, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            peak = peaks.get(precision)
            return (peak, f"{label} {precision} dense (datasheet)") if peak is not None else None
    return None


# --- memory ----------------------------------------------------------------------------------------


class MemoryLimitExceeded(RuntimeError):
    """A step's tensors would take more than the simulated device memory (`--memory-limit-bytes` on a CPU)."""


class TensorBytesTracker(TorchDispatchMode):
    """Counts the bytes of tensor storage alive, op by op, on any device.

    Every op's outputs pass through `__torch_dispatch__` (below autograd and autocast, so forward,
    backward, casts and optimizer updates alike); a storage seen for the first time is added, and a
    finalizer subtracts it when the storage is freed. Tensors alive at the start (parameters, gradients,
    optimizer state) are registered up front, so `peak` is the most tensor memory a step held at once:
    what `torch.cuda.max_memory_allocated` reports on a GPU, without the allocator's rounding. Scratch
    buffers inside a kernel and tensors a compiled graph allocates itself are not seen.

    With `limit` set, the op that takes the total over it raises `MemoryLimitExceeded`, as an
    allocation on a device of that size would fail.
    """

    def __init__(self, already_alive: list[torch.Tensor], limit: Optional[int] = None):
        super().__init__()
        self.limit = limit
        self.alive = 0
        self.peak = 0
        self._finalizers: dict[int, weakref.finalize] = {}
        for tensor in already_alive:
            self._add(tensor, check=False)
        self.at_start = self.alive

    def _freed(self, key: int, size: int) -> None:
        self.alive -= size
        self._finalizers.pop(key, None)

    def _add(self, tensor: torch.Tensor, check: bool = True) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested)
            return
        key = storage._cdata
        if key in self._finalizers:
            return
        size = storage.nbytes()
        self._finalizers[key] = weakref.finalize(storage, self._freed, key, size)
        self.alive += size
        self.peak = max(self.peak, self.alive)
        if check and self.limit is not None and self.alive > self.limit:
            raise MemoryLimitExceeded(f"gptlab bench: simulated out of memory: {self.alive:,} tensor bytes alive, limit {self.limit:,}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        outputs = func(*args, **(kwargs or {}))
        for value in tree_flatten(outputs)[0]:
            if isinstance(value, torch.Tensor):
                self._add(value)
        return outputs

    def __exit__(self, *exc_info):
        for finalizer in self._finalizers.values():
            finalizer.detach()
        self._finalizers.clear()
        return super().__exit__(*exc_info)


def _tensors_alive(run: Run) -> list[torch.Tensor]:
    tensors = [t for t in run.model.parameters()] + [t for t in run.model.buffers()]
    tensors += [p.grad for p in run.model.parameters() if p.grad is not None]
    for state in run.optimizer.state.values():
        tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
    return tensors


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory, the CPU allocator failing, or the simulated limit."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryLimitExceeded)):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in message for marker in ("out of memory", "can't allocate", "not enough memory", "simulated out of memory"))


def minor_page_faults() -> Optional[int]:
    """Minor page faults of this process so far (None where `resource` is missing). Many per step on a CPU
    mean freed memory goes back to the kernel and is faulted in again (see gptlab.train.host)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def available_host_memory() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else total physical memory, else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str, option: str = "--memory-limit-bytes") -> int:
    """'40GB', '38GiB', '500000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS or float(match.group(1)) * _SIZE_UNITS[unit] < 1:
        raise UserError(f"{option} {text}: expected a positive number of bytes, optionally with a unit (KB, MB, GB, KiB, MiB, GiB), e.g. 40GB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_bytes(count: Optional[int]) -> str:
    if count is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count} B"


# --- a run built by the trainer's own setup, in a temporary directory ----------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def _tokens_per_step(config: RunConfig) -> int:
    return config.train.microbatch_size * config.train.gradient_accumulation_steps * config.model.context_length


def _write_random_tokens(directory: Path, count: int, vocab_size: int) -> None:
    """A train split of uniformly random token ids (uint16, as every gptlab dataset)."""
    directory.mkdir(parents=True)
    writer = TokenSplitWriter(directory / "train.safetensors")
    generator = np.random.default_rng(0)
    for start in range(0, count, 1 << 22):
        writer.write(generator.integers(0, min(vocab_size, 1 << 16), size=min(1 << 22, count - start), dtype=np.uint16))
    writer.close()


def _dataset_for(config: RunConfig, run_dir: Path, datasets_dir: Optional[Path], steps: int) -> Path:
    """The run's own token dataset, checked to hold `steps` steps from start_train_token."""
    try:
        dataset = locate_dataset(config.train.dataset, run_dir, datasets_dir, download=False)
    except UserError as error:
        raise UserError(*error.lines, "or benchmark on random tokens with --synthetic") from None
    available = len(dataset.split("train")) - config.train.start_train_token
    needed = steps * _tokens_per_step(config) + 1
    if needed > available:
        raise UserError(f"{run_dir / TRAIN_FILE}: dataset: {dataset.directory} has {max(available, 0):,} train tokens from start_train_token, "
                        f"but bench needs {needed:,} ({steps} steps of {_tokens_per_step(config):,}); use fewer --steps or --synthetic")
    return dataset.directory.resolve()


@contextlib.contextmanager
def prepared_run(config: RunConfig, steps: int, dataset_dir: Optional[Path] = None) -> Iterator[Run]:
    """`setup` of `config` in a temporary run directory whose data covers `steps` steps.

    `dataset_dir` None means random tokens. Nothing is written into the user's run directory, and
    setup's header lines are kept off the screen.
    """
    with tempfile.TemporaryDirectory(prefix="gptlab-bench-") as tmp:
        tmp_dir = Path(tmp)
        resolved = config.to_json_dict()
        start_token = config.train.start_train_token
        if dataset_dir is None:
            dataset_dir, start_token = tmp_dir / "tokens", 0
            _write_random_tokens(dataset_dir, steps * _tokens_per_step(config) + 1, config.model.vocab_size)
        resolved["train"].update(dataset=str(dataset_dir), start_train_token=start_token,
                                 min_train_tokens=steps * _tokens_per_step(config), validation_batches=0)
        run_dir = tmp_dir / "run"
        run_dir.mkdir()
        for name, file_name in (("model", MODEL_FILE), ("train", TRAIN_FILE)):
            (run_dir / file_name).write_text(json.dumps(resolved[name]), encoding="utf-8")
        with contextlib.redirect_stdout(io.StringIO()):
            run = setup(run_dir, show_progress=False)
        try:
            yield run
        finally:
            del run


def train_step(run: Run, step: int) -> None:
    """One optimizer step exactly as `fit` takes it (minus recording)."""
    loss = forward_backward(run, step)
    optimizer_step(run, loss)


@contextlib.contextmanager
def phase_clock(run: Run, seconds: dict[str, float]) -> Iterator[None]:
    """Adds to `seconds['data']` the time inside the run's batch reads and to `seconds['backward']` the time
    inside `torch.autograd.backward` (which `Tensor.backward` calls), without changing the step code.

    On CUDA each boundary synchronises the device, so the phases add up but the step loses overlap;
    this is why phases are timed on steps of their own.
    """
    reader, backward, device = run.reader, torch.autograd.backward, run.device

    def timed(name: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            _sync(device)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                _sync(device)
                seconds[name] += time.perf_counter() - started

        return wrapper

    class TimedReader:
        read = staticmethod(timed("data", reader.read))

        def __getattr__(self, name: str) -> Any:
            return getattr(reader, name)

    run.reader = TimedReader()
    torch.autograd.backward = timed("backward", backward)
    try:
        yield
    finally:
        run.reader = reader
        torch.autograd.backward = backward


def _time_phases(run: Run, steps: range) -> dict[str, float]:
    seconds = dict.fromkeys(PHASES, 0.0)
    with phase_clock(run, seconds):
        for step in steps:
            _sync(run.device)
            started = time.perf_counter()
            loss = forward_backward(run, step)
            _sync(run.device)
            forward_backward_done = time.perf_counter()
            optimizer_step(run, loss)
            _sync(run.device)
            seconds["optimizer"] += time.perf_counter() - forward_backward_done
            seconds["forward"] += forward_backward_done - started  # data and backward are taken off below
    seconds["forward"] -= seconds["data"] + seconds["backward"]
    return {name: round(value / len(steps) * 1e3, 3) for name, value in seconds.items()}


def step_peak_memory(run: Run, step: int, limit: Optional[int] = None) -> tuple[int, str]:
    """Run one step and return (peak bytes, how they were measured)."""
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
        train_step(run, step)
        _sync(run.device)
        return torch.cuda.max_memory_allocated(run.device), "torch.cuda.max_memory_allocated"
    with TensorBytesTracker(_tensors_alive(run), limit) as tracker:
        train_step(run, step)
    return tracker.peak, "tensor bytes alive, tracked op by op (TensorBytesTracker)"


# --- bench -----------------------------------------------------------------------------------------

RESULT_FIELDS = (
    "run_dir", "overrides", "device", "device_name", "precision", "parameters", "matmul_parameters", "flops_per_token",
    "microbatch_size", "gradient_accumulation_steps", "context_length", "tokens_per_step", "tokens", "warmup_steps",
    "warmup_seconds", "steps", "step_ms", "ms_per_step", "tokens_per_second", "model_tflops_per_second",
    "peak_tflops", "peak_tflops_source", "mfu", "peak_memory_bytes", "peak_memory_method", "page_faults_per_step",
    "phase_steps", "phases_ms",
    "config", "environment",
)


def measure(config: RunConfig, *, steps: int = 10, warmup_steps: int = 3, phase_steps: int = 3,
            dataset_dir: Optional[Path] = None, peak_tflops: Optional[float] = None, measure_memory: bool = True) -> dict[str, Any]:
    """Time `steps` training steps of `config` after `warmup_steps` untimed ones (which include any
    compilation); then `phase_steps` steps timed phase by phase, then one step for peak memory on the CPU."""
    memory_steps = 1 if measure_memory else 0
    total = warmup_steps + steps + phase_steps + memory_steps
    with prepared_run(config, total, dataset_dir) as run:
        device = run.device
        started = time.perf_counter()
        for step in range(warmup_steps):
            train_step(run, step)
        _sync(device)
        warmup_seconds = time.perf_counter() - started
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        step_ends = []
        faults_before = minor_page_faults()
        started = time.perf_counter()
        for step in range(warmup_steps, warmup_steps + steps):
            train_step(run, step)
            step_ends.append(time.perf_counter())
        _sync(device)
        elapsed = time.perf_counter() - started
        faults = minor_page_faults()
        page_faults_per_step = (faults - faults_before) // steps if faults is not None and faults_before is not None else None
        step_ms = [round((end - begin) * 1e3, 3) for begin, end in zip([started] + step_ends[:-1], step_ends)]

        peak_memory, memory_method = None, None
        if measure_memory and device.type == "cuda":
            peak_memory, memory_method = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated over the timed steps"
        first_phase_step = warmup_steps + steps
        phases = _time_phases(run, range(first_phase_step, first_phase_step + phase_steps)) if phase_steps else None
        if measure_memory and device.type != "cuda":
            peak_memory, memory_method = step_peak_memory(run, first_phase_step + phase_steps)
        name = device_name(device)
        precision = run.precision.name
        parameters = run.model.parameter_count()

    tokens_per_step = _tokens_per_step(config)
    tokens_per_second = tokens_per_step * steps / elapsed
    flops = flops_per_token(config.model)
    achieved = tokens_per_second * flops / 1e12
    if peak_tflops is not None:
        peak, peak_source = peak_tflops, "--peak-tflops"
    else:
        peak, peak_source = (lookup_peak_tflops(name, precision) or (None, None)) if device.type == "cuda" else (None, None)
    return {
        "device": str(device), "device_name": name, "precision": precision,
        "parameters": parameters, "matmul_parameters": matmul_parameters(config.model), "flops_per_token": flops,
        "microbatch_size": config.train.microbatch_size, "gradient_accumulation_steps": config.train.gradient_accumulation_steps,
        "context_length": config.model.context_length, "tokens_per_step": tokens_per_step,
        "tokens": str(dataset_dir) if dataset_dir is not None else "synthetic",
        "warmup_steps": warmup_steps, "warmup_seconds": round(warmup_seconds, 3),
        "steps": steps, "step_ms": step_ms, "ms_per_step": round(elapsed / steps * 1e3, 3),
        "tokens_per_second": round(tokens_per_second, 1), "model_tflops_per_second": float(f"{achieved:.6g}"),
        "peak_tflops": peak, "peak_tflops_source": peak_source, "mfu": float(f"{achieved / peak:.6g}") if peak else None,
        "peak_memory_bytes": peak_memory, "peak_memory_method": memory_method, "page_faults_per_step": page_faults_per_step,
        "phase_steps": phase_steps, "phases_ms": phases,
        "config": config.to_json_dict(),
    }


def _check_single_process() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("gptlab bench runs in one process; start it without torchrun")


def _check_options(steps: int, warmup_steps: int, phase_steps: int, peak_tflops: Optional[float]) -> None:
    if steps < 1:
        raise UserError(f"--steps {steps}: must be at least 1")
    if warmup_steps < 0 or phase_steps < 0:
        raise UserError(f"--warmup-steps {warmup_steps} / --phase-steps {phase_steps}: must be 0 or more")
    if peak_tflops is not None and not (peak_tflops > 0 and math.isfinite(peak_tflops)):
        raise UserError(f"--peak-tflops {peak_tflops}: must be a positive number of TFLOP/s, e.g. 989 for an H100 in bf16")


def bench_run(run_dir: Path, *, overrides: Optional[dict[str, dict]] = None, settings: tuple[str, ...] = (), steps: int = 10,
              warmup_steps: int = 3, phase_steps: int = 3, synthetic: bool = False, datasets_dir: Optional[Path] = None,
              peak_tflops: Optional[float] = None) -> dict[str, Any]:
    """Benchmark the run in `run_dir` (with `overrides` applied; `settings` are their KEY=VALUE spelling, for the record)."""
    _check_single_process()
    _check_options(steps, warmup_steps, phase_steps, peak_tflops)
    run_dir = Path(run_dir)
    config = load_run_config(run_dir, overrides)
    total = warmup_steps + steps + phase_steps + 1
    dataset_dir = None if synthetic else _dataset_for(config, run_dir, datasets_dir, total)
    result = {"run_dir": str(run_dir), "overrides": list(settings)}
    result.update(measure(config, steps=steps, warmup_steps=warmup_steps, phase_steps=phase_steps,
                          dataset_dir=dataset_dir, peak_tflops=peak_tflops))
    result["environment"] = environment()
    return {key: result[key] for key in RESULT_FIELDS}


def compare_runs(run_dir: Path, assignments: tuple[str, ...], *, base_overrides: Optional[dict[str, dict]] = None,
                 settings: tuple[str, ...] = (), progress: Optional[Callable[[str], None]] = None, **options: Any) -> dict[str, Any]:
    """`bench_run` once per KEY=VALUE in `assignments`, each on top of `base_overrides`, in that order."""
    if not assignments:
        raise UserError("--compare: give one KEY=VALUE per column after RUN_DIR, e.g. --compare precision=fp32 precision=bf16")
    columns_overrides = []
    for assignment in assignments:
        column = parse_assignments((assignment,), option="--compare")
        try:
            load_run_config(Path(run_dir), merge_overrides(base_overrides, column))
        except UserError as error:
            raise UserError(*[f"--compare {assignment}: {line}" for line in error.lines]) from None
        columns_overrides.append(column)
    columns = []
    for index, (assignment, column) in enumerate(zip(assignments, columns_overrides), start=1):
        if progress is not None:
            progress(f"[{index}/{len(assignments)}] {assignment}")
        result = bench_run(run_dir, overrides=merge_overrides(base_overrides, column), settings=(*settings, assignment), **options)
        columns.append({"column": assignment, **result})
        _release_memory(torch.device(result["device"]))
    return {"run_dir": str(run_dir), "columns": columns, "environment": environment()}


def seconds_per_step(model_config: ModelConfig, train_config: TrainConfig, steps: int = 3, warmup_steps: int = 1,
                     device: torch.device | str = "cpu") -> float:
    """Mean wall time of one optimizer step (all microbatches) after `warmup_steps` untimed ones, on random tokens."""
    device = torch.device(device)
    config = RunConfig(model=model_config, train=train_config.model_copy(update={"device": device.type}))
    result = measure(config, steps=steps, warmup_steps=warmup_steps, phase_steps=0, measure_memory=False)
    return result["ms_per_step"] / 1e3


# --- the largest microbatch that fits -------------------------------------------------------------


@dataclass
class Trial:
    microbatch: int
    fits: bool
    outcome: str  # "fits", "over the memory limit" or "out of memory"
    peak_memory_bytes: Optional[int]
    seconds: float


def _predicted_fit(trials: list[Trial], limit: int) -> Optional[int]:
    """The largest microbatch a straight line through the two largest fitting trials' peaks keeps under `limit`."""
    fitting = sorted((t for t in trials if t.fits and t.peak_memory_bytes is not None), key=lambda t: t.microbatch)[-2:]
    if len(fitting) < 2:
        return None
    (small, large) = fitting
    per_sequence = (large.peak_memory_bytes - small.peak_memory_bytes) / (large.microbatch - small.microbatch)
    if per_sequence <= 0:
        return None
    return large.microbatch + int((limit - large.peak_memory_bytes) // per_sequence)


def search_max_microbatch(attempt: Callable[[int], Trial], limit: Optional[int] = None,
                          upper: int = MAX_MICROBATCH_SEARCHED) -> tuple[int, list[Trial]]:
    """Double from 1 until a microbatch does not fit, then bisect between the last fit and the first failure.

    When the memory limit is known, the first two probes of the bisection go where a straight line through
    the measured peaks predicts the largest fit and one above it, which usually settles it; midpoints
    follow if not. Assumes memory grows with the microbatch. Returns (largest fit, 0 if none; trials).
    """
    trials: list[Trial] = []

    def fits(microbatch: int) -> bool:
        trials.append(attempt(microbatch))
        return trials[-1].fits

    largest_fit, microbatch = 0, 1
    while microbatch <= upper and fits(microbatch):
        largest_fit, microbatch = microbatch, microbatch * 2
    if largest_fit == 0 or microbatch > upper:
        return largest_fit, trials
    smallest_failure = microbatch
    guided_probes = 2 if limit is not None else 0
    while smallest_failure - largest_fit > 1:
        probe = (largest_fit + smallest_failure) // 2
        predicted = _predicted_fit(trials, limit) if guided_probes else None
        if predicted is not None:
            probe, guided_probes = min(max(predicted, largest_fit + 1), smallest_failure - 1), guided_probes - 1
        if fits(probe):
            largest_fit = probe
        else:
            smallest_failure = probe
    return largest_fit, trials


def try_microbatch(config: RunConfig, microbatch: int, limit: Optional[int]) -> Trial:
    """Two training steps at `microbatch` on random tokens; out-of-memory errors become a failed trial."""
    trial_config = config.model_copy(update={"train": config.train.model_copy(update={"microbatch_size": microbatch})})
    device = None
    started = time.perf_counter()
    outcome, peak = "fits", None
    try:
        with prepared_run(trial_config, TRIAL_STEPS) as run:
            device = run.device
            peak = max(step_peak_memory(run, step, limit)[0] for step in range(TRIAL_STEPS))
            del run
    except Exception as error:  # noqa: BLE001 - only out-of-memory is caught; everything else is re-raised
        if not is_out_of_memory(error):
            raise
        outcome = "over the memory limit" if isinstance(error, MemoryLimitExceeded) else "out of memory"
    _release_memory(device or torch.device("cpu"))
    return Trial(microbatch, outcome == "fits", outcome, peak, round(time.perf_counter() - started, 3))


def find_max_microbatch(run_dir: Path, *, overrides: Optional[dict[str, dict]] = None, memory_limit_bytes: Optional[int] = None,
                        progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """The largest microbatch of the run's config that trains (two steps, random tokens) within device memory.

    On a GPU the limit is the device (a real out-of-memory error); with `memory_limit_bytes` the process
    is also capped at that many bytes (`torch.cuda.set_per_process_memory_fraction`), as on a smaller card.
    On the CPU a trial fails when the tensor bytes alive would exceed the limit: `memory_limit_bytes`, else
    the memory available when the search starts.
    """
    _check_single_process()
    if memory_limit_bytes is not None and memory_limit_bytes < 1:
        raise UserError(f"--memory-limit-bytes {memory_limit_bytes}: must be a positive number of bytes")
    run_dir = Path(run_dir)
    config = load_run_config(run_dir, overrides)
    from gptlab.train.distributed import from_environment, pick_device

    device = pick_device(config.train.device, from_environment())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{run_dir / TRAIN_FILE}: device: 'cuda' was asked for but torch sees no CUDA device")
    _release_memory(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        limit = memory_limit_bytes if memory_limit_bytes is not None else free
        limit_source = "--memory-limit-bytes (per-process memory fraction)" if memory_limit_bytes is not None else "free device memory at start"
        if memory_limit_bytes is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, memory_limit_bytes / total), device)
        cpu_limit = None
    else:
        limit = memory_limit_bytes if memory_limit_bytes is not None else available_host_memory()
        limit_source = "--memory-limit-bytes (simulated)" if memory_limit_bytes is not None else "MemAvailable at start"
        cpu_limit = limit

    def attempt(microbatch: int) -> Trial:
        trial = try_microbatch(config, microbatch, cpu_limit)
        if progress is not None:
            progress(f"microbatch {microbatch}: {trial.outcome}" + (f" (peak {format_bytes(trial.peak_memory_bytes)})" if trial.fits else "")
                     + f", {trial.seconds:.1f} s")
        return trial

    try:
        largest, trials = search_max_microbatch(attempt, limit)
    finally:
        if device.type == "cuda" and memory_limit_bytes is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {
        "run_dir": str(run_dir), "max_microbatch": largest, "trials": [asdict(trial) for trial in trials], "trial_count": len(trials),
        "hit_search_bound": largest >= MAX_MICROBATCH_SEARCHED,
        "memory_limit_bytes": limit, "memory_limit_source": limit_source,
        "peak_memory_method": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "tensor bytes alive, tracked op by op (TensorBytesTracker)",
        "device": str(device), "device_name": device_name(device), "precision": config.train.effective_precision,
        "context_length": config.model.context_length, "gradient_accumulation_steps": config.train.gradient_accumulation_steps,
        "trial_steps": TRIAL_STEPS, "config": config.to_json_dict(), "environment": environment(),
    }


# --- text output ---------------------------------------------------------------------------------


def _rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    mfu = f"{result['mfu'] * 100:.1f}% of {result['peak_tflops']:g}" if result["mfu"] is not None else "n/a (no known peak; --peak-tflops)"
    phases = result["phases_ms"] or {}
    return [
        ("tokens/s", f"{result['tokens_per_second']:,.0f}"),
        ("ms per step", f"{result['ms_per_step']:,.1f}"),
        ("model GFLOPs per token", f"{result['flops_per_token'] / 1e9:.4g}"),
        ("model TFLOP/s", f"{result['model_tflops_per_second']:.4g}"),
        ("MFU (peak TFLOP/s)", mfu),
        ("peak memory", format_bytes(result["peak_memory_bytes"])),
        ("minor page faults per step", f"{result['page_faults_per_step']:,}" if result["page_faults_per_step"] is not None else "n/a"),
        *((f"{name} ms per step", f"{phases[name]:,.1f}" if name in phases else "n/a") for name in PHASES),
        ("warm-up s", f"{result['warmup_seconds']:.2f}"),
    ]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [headers] + rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(cells, widths))) + " |"

    return [line(headers), "|" + "|".join("-" * (width + 2) for width in widths) + "|"] + [line(row) for row in rows]


def _header(result: dict[str, Any]) -> list[str]:
    env = result["environment"]
    config = result["config"]["model"]
    return [
        f"gptlab {env['gptlab']} | Python {env['python']} | torch {env['torch']} | CUDA {env['cuda']} | {result['device']} ({result['device_name']})",
        f"model: {config['n_layers']} layers, {config['emb_dim']} wide, {config['n_heads']} heads, context {config['context_length']}, "
        f"vocab {config['vocab_size']:,}, tied head: {str(config['tie_weights']).lower()}; {result['parameters']:,} parameters",
        f"batch: microbatch {result['microbatch_size']} x accumulation {result['gradient_accumulation_steps']} x context {result['context_length']} "
        f"= {result['tokens_per_step']:,} tokens per step; tokens: {result['tokens']}",
        f"steps: {result['warmup_steps']} warm-up, {result['steps']} timed, {result['phase_steps']} timed phase by phase; "
        f"peak memory: {result['peak_memory_method'] or 'not measured'}",
    ]


def format_bench(result: dict[str, Any]) -> list[str]:
    rows = [[name, value] for name, value in _rows(result)]
    rows.insert(5, ["MFU peak from", result["peak_tflops_source"] or "n/a"])
    return _header(result) + [f"precision: {result['precision']}", ""] + _table(["measure", "value"], rows)


def format_comparison(comparison: dict[str, Any]) -> list[str]:
    columns = comparison["columns"]
    per_column = [dict(_rows(column)) for column in columns]
    names = [name for name, _ in _rows(columns[0])]
    rows = [[name] + [values[name] for values in per_column] for name in names]
    baseline = columns[0]["tokens_per_second"]
    rows.insert(1, ["tokens/s vs first column"] + [f"{column['tokens_per_second'] / baseline:.2f}x" for column in columns])
    rows.append(["precision"] + [column["precision"] for column in columns])
    return _header(columns[0])[:1] + [f"run: {comparison['run_dir']}", ""] + _table(["measure"] + [c["column"] for c in columns], rows)


def format_max_microbatch(result: dict[str, Any]) -> list[str]:
    lines = [f"{result['device']} ({result['device_name']}), precision {result['precision']}, context {result['context_length']}, "
             f"limit {format_bytes(result['memory_limit_bytes'])} ({result['memory_limit_source']})", ""]
    lines += _table(["microbatch", "outcome", "peak memory", "seconds"],
                    [[str(t["microbatch"]), t["outcome"], format_bytes(t["peak_memory_bytes"]), f"{t['seconds']:.1f}"] for t in result["trials"]])
    lines.append("")
    if result["max_microbatch"] == 0:
        lines.append("Not even microbatch 1 fits.")
    else:
        lines.append(f"Largest microbatch that fits: {result['max_microbatch']} ({result['trial_count']} trials"
                     + (", stopped at the search bound" if result["hit_search_bound"] else "") + ")")
    return lines
