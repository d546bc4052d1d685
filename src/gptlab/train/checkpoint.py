"""Checkpoints on disk, in the ddp-base-model-from-scratch harness's layout.

`RUN_DIR/checkpoints/<UTC %Y%m%dZ%H%M%S>-iteration-<step>/` holds `model.safetensors` (the book's
layout), `optimizer.pt`, `scaler.pt` (fp16 only), `training_state.pt` (step and RNG states),
`meta.json` and `config.json`. A checkpoint is written into a temporary folder, fsynced and renamed
into place; the relative symlinks `latest` and `best` are replaced atomically.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from gptlab.errors import UserError
from gptlab.files import atomic_folder, atomic_write_json, fsync_directory, read_json, remove_stale_staging
from gptlab.model import GPT
from gptlab.rundir import CHECKPOINTS
from gptlab.weights import load_book_safetensors, load_book_state_dict, read_book_safetensors, save_book_safetensors

POINTERS = ("latest", "best")


def checkpoint_name(step: int, now: Optional[time.struct_time] = None) -> str:
    return time.strftime("%Y%m%dZ%H%M%S", now or time.gmtime()) + f"-iteration-{step}"


def rng_state() -> dict[str, Any]:
    """Every RNG a step can draw from, as plain types that `torch.load(weights_only=True)` accepts."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def gather_rng_states(distributed_context) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective call when several processes train)."""
    state = rng_state()
    if not distributed_context.active:
        return [state]
    import torch.distributed as dist

    gathered: list[Any] = [None] * distributed_context.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def point(run_dir: Path, pointer: str, name: str) -> None:
    """Atomically make `checkpoints/<pointer>` a relative link to `checkpoints/<name>`."""
    directory = Path(run_dir) / CHECKPOINTS
    tmp = directory / f".{pointer}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(name, tmp)
    os.replace(tmp, directory / pointer)
    fsync_directory(directory)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[torch.amp.GradScaler],
    training_state: dict[str, Any],
    meta: dict[str, Any],
    config: dict[str, Any],
    is_best: bool,
) -> Path:
    directory = Path(run_dir) / CHECKPOINTS
    directory.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = directory / name
    with atomic_folder(final) as staging:  # the same step saved twice within one second: the newer replaces it
        save_book_safetensors(model, staging / "model.safetensors")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), staging / "scaler.pt")
        torch.save(training_state, staging / "training_state.pt")
        atomic_write_json(staging / "meta.json", {**meta, "is_best": is_best})
        atomic_write_json(staging / "config.json", config)
    point(run_dir, "latest", name)
    if is_best:
        point(run_dir, "best", name)
    return final


@dataclass
class Checkpoint:
    path: Path
    # What verify() read, kept so that loading right after it does not read every file a second time.
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def meta(self) -> dict[str, Any]:
        return read_json(self.path / "meta.json")

    def load_model(self, model: GPT) -> None:
        weights = self._loaded.pop("model.safetensors", None)
        if weights is None:
            load_book_safetensors(model, self.path / "model.safetensors")
        else:
            load_book_state_dict(model, weights, str(self.path / "model.safetensors"))

    def _load_pt(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded.pop(name)
        path = self.path / name
        try:
            return torch.load(path, weights_only=True, map_location="cpu")
        except FileNotFoundError:
            raise UserError(f"{path}: missing from the checkpoint") from None
        except Exception as error:  # torch raises several types for truncated or foreign files
            raise UserError(f"{path}: corrupt or unreadable checkpoint file ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None

    def load_training_state(self) -> dict[str, Any]:
        return self._load_pt("training_state.pt")

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.load_state_dict(self._load_pt("optimizer.pt"))

    def load_scaler(self, scaler: Optional[torch.amp.GradScaler]) -> None:
        if scaler is not None and (self.path / "scaler.pt").is_file():
            scaler.load_state_dict(self._load_pt("scaler.pt"))

    def verify(self) -> None:
        """Read every file of the checkpoint fully; raise UserError naming the first bad file."""
        self._loaded["model.safetensors"] = read_book_safetensors(self.path / "model.safetensors")
        for name in ("optimizer.pt", "training_state.pt", "scaler.pt"):
            if name != "scaler.pt" or (self.path / name).exists():
                self._loaded[name] = self._load_pt(name)
        for name in ("meta.json", "config.json"):
            try:
                read_json(self.path / name)
            except (OSError, ValueError) as error:
                raise UserError(f"{self.path / name}: corrupt or unreadable checkpoint file ({error})") from None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint folders, oldest step first."""
    directory = Path(run_dir) / CHECKPOINTS
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and not p.is_symlink() and "-iteration-" in p.name and not p.name.startswith(".")]
    return sorted(found, key=lambda p: (int(p.name.rsplit("-", 1)[1]), p.name))


def find_checkpoint(run_dir: Path, which: str = "latest") -> Checkpoint:
    """`best`, `latest`, a checkpoint folder name, or a path to a checkpoint folder."""
    directory = Path(run_dir) / CHECKPOINTS
    candidate = Path(which) if Path(which).is_dir() and (Path(which) / "model.safetensors").exists() else directory / which
    if (candidate / "model.safetensors").is_file():
        return Checkpoint(candidate.resolve())
    available = [p.name for p in list_checkpoints(run_dir)]
    if not available:
        raise UserError(f"{run_dir}: no checkpoints yet; train it first with `gptlab train {run_dir}`")
    pointers = [p for p in POINTERS if (directory / p).exists()]
    raise UserError(f"{run_dir}: no checkpoint '{which}'; choose one of: {', '.join(pointers + available[-5:])}")


def find_resumable_checkpoint(run_dir: Path, which: str = "latest") -> Checkpoint:
    """Like find_checkpoint, but verified whole; a corrupt one is refused with the newest good one offered."""
    checkpoint = find_checkpoint(run_dir, which)
    try:
        checkpoint.verify()
    except UserError as error:
        good = None
        for path in reversed(list_checkpoints(run_dir)):
            try:
                Checkpoint(path).verify()
                good = path.name
                break
            except UserError:
                continue
        offer = f"; the newest good checkpoint is {good}: resume with --resume {good}" if good else "; no good checkpoint remains"
        raise UserError(error.lines[0] + offer) from None
    return checkpoint


def remove_stale_checkpoint_staging(run_dir: Path) -> None:
    """Remove half-written checkpoint folders and pointer links left by a process killed mid-save."""
    directory = Path(run_dir) / CHECKPOINTS
    if not directory.is_dir():
        return
    remove_stale_staging(directory)
    for path in directory.iterdir():
        if path.name.startswith(".tmp-") and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # the staging folder name of gptlab before files.atomic_folder
        elif path.name.startswith(".") and path.name.endswith(".tmp") and path.is_symlink():
            path.unlink()


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints, never the one `best` points to."""
    directory = Path(run_dir) / CHECKPOINTS
    best = (directory / "best").resolve() if (directory / "best").exists() else None
    removed = []
    for path in list_checkpoints(run_dir)[:-keep]:
        if best is not None and path.resolve() == best:
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed
