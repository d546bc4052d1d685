"""A run built by the trainer's own `setup` in a temporary directory, and its steps timed phase by phase.

Whatever the trainer does (precision, optimizer, fast paths) is what is measured: a step here is
`forward_backward` + `optimizer_step`, the two functions `fit` calls.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from gptlab.bench.memory import TensorBytesTracker
from gptlab.config import RunConfig
from gptlab.data.locate import locate_dataset
from gptlab.data.tokens import TokenSplitWriter
from gptlab.errors import UserError
from gptlab.rundir import MODEL_FILE, TRAIN_FILE
from gptlab.train.loop import forward_backward, optimizer_step, setup
from gptlab.train.state import Training

PHASES = ("data", "forward", "backward", "optimizer")


def check_single_process() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("gptlab bench runs in one process; start it without torchrun")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_tokens(config: RunConfig) -> int:
    return config.train.microbatch_size * config.train.gradient_accumulation_steps * config.model.context_length


def _write_random_tokens(directory: Path, count: int, vocab_size: int) -> None:
    """A train split of uniformly random token ids (uint16, as every gptlab dataset)."""
    directory.mkdir(parents=True)
    writer = TokenSplitWriter(directory / "train.safetensors")
    generator = np.random.default_rng(0)
    for start in range(0, count, 1 << 22):
        writer.write(generator.integers(0, min(vocab_size, 1 << 16), size=min(1 << 22, count - start), dtype=np.uint16))
    writer.close()


def dataset_for(config: RunConfig, run_dir: Path, datasets_dir: Optional[Path], steps: int) -> Path:
    """The run's own token dataset, checked to hold `steps` steps from start_train_token."""
    try:
        dataset = locate_dataset(config.train.dataset, run_dir, datasets_dir, download=False)
    except UserError as error:
        raise UserError(*error.lines, "or benchmark on random tokens with --synthetic") from None
    available = len(dataset.split("train")) - config.train.start_train_token
    needed = steps * step_tokens(config) + 1
    if needed > available:
        raise UserError(
            f"{run_dir / TRAIN_FILE}: dataset: {dataset.directory} has {max(available, 0):,} train tokens from start_train_token, "
            f"but bench needs {needed:,} ({steps} steps of {step_tokens(config):,}); use fewer --steps or --synthetic"
        )
    return dataset.directory.resolve()


@contextlib.contextmanager
def prepared_run(config: RunConfig, steps: int, dataset_dir: Optional[Path] = None) -> Iterator[Training]:
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
            _write_random_tokens(dataset_dir, steps * step_tokens(config) + 1, config.model.vocab_size)
        resolved["train"].update(
            dataset=str(dataset_dir),
            start_train_token=start_token,
            min_train_tokens=steps * step_tokens(config),
            validation_batches=0,
            loggers=[],
        )  # a benchmark is no run to track in TensorBoard or wandb
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


def train_step(run: Training, step: int) -> None:
    """One optimizer step exactly as `fit` takes it (minus recording)."""
    loss = forward_backward(run, step)
    optimizer_step(run, loss)


@contextlib.contextmanager
def phase_clock(run: Training, seconds: dict[str, float]) -> Iterator[None]:
    """Adds to `seconds['data']` the time inside the run's batch reads and to `seconds['backward']` the time
    inside `torch.autograd.backward` (which `Tensor.backward` calls), without changing the step code.

    On CUDA each boundary synchronises the device, so the phases add up but the step loses overlap;
    this is why phases are timed on steps of their own.
    """
    reader, backward, device = run.reader, torch.autograd.backward, run.device

    def timed(name: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            synchronize(device)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                synchronize(device)
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


def time_phases(run: Training, steps: range) -> dict[str, float]:
    seconds = dict.fromkeys(PHASES, 0.0)
    with phase_clock(run, seconds):
        for step in steps:
            synchronize(run.device)
            started = time.perf_counter()
            loss = forward_backward(run, step)
            synchronize(run.device)
            forward_backward_done = time.perf_counter()
            optimizer_step(run, loss)
            synchronize(run.device)
            seconds["optimizer"] += time.perf_counter() - forward_backward_done
            seconds["forward"] += forward_backward_done - started  # data and backward are taken off below
    seconds["forward"] -= seconds["data"] + seconds["backward"]
    return {name: round(value / len(steps) * 1e3, 3) for name, value in seconds.items()}


def step_peak_memory(run: Training, step: int, limit: Optional[int] = None) -> tuple[int, str]:
    """Run one step and return (peak bytes, how they were measured)."""
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
        train_step(run, step)
        synchronize(run.device)
        return torch.cuda.max_memory_allocated(run.device), "torch.cuda.max_memory_allocated"
    with TensorBytesTracker(_tensors_alive(run), limit) as tracker:
        train_step(run, step)
    return tracker.peak, "tensor bytes alive, tracked op by op (TensorBytesTracker)"


def _tensors_alive(run: Training) -> list[torch.Tensor]:
    tensors = [t for t in run.model.parameters()] + [t for t in run.model.buffers()]
    tensors += [p.grad for p in run.model.parameters() if p.grad is not None]
    for state in run.optimizer.state.values():
        tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
    return tensors
