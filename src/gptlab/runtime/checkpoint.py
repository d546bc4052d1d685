"""Checkpoints on disk, in the ddp-base-model-from-scratch harness's layout.

`RUN_DIR/checkpoints/<UTC %Y%m%dZ%H%M%S>-iteration-<step>/` holds `model.safetensors` (the book's
layout), `optimizer.pt`, `scaler.pt` (fp16 only), `training_state.pt` (step and RNG states),
`meta.json`, `config.json` and `checksums.sha256` (the SHA-256 of every other file, in `sha256sum`
format, so `sha256sum -c checksums.sha256` checks a checkpoint by hand, computed from the bytes as they are
written). A sharded (FSDP) run's checkpoint holds `resume/` instead of `optimizer.pt`: its weights and AdamW
state as `torch.distributed.checkpoint` wrote them, one file per rank (`__<rank>_0.distcp`) and `.metadata`,
which reshard on load; the checksums cover them as `resume/<file>`. A checkpoint is taken in two steps:
`snapshot_checkpoint` copies the state to host memory (what training waits for when saves run in the
background, gptlab.train.checkpoint_writer), `write_checkpoint` writes it into a temporary folder, fsyncs it
and renames it into place; the relative symlinks `latest` and `best` are replaced atomically. Every file is
checked against its checksum before it is loaded (checkpoints written
without checksums, such as the users' harness's, are read as they are).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from gptlab.errors import UserError
from gptlab.files import (
    atomic_folder,
    atomic_write_json,
    fsync_directory,
    is_out_of_space,
    out_of_space_error,
    read_json,
    remove_stale_staging,
    strict_json,
)
from gptlab.model import GPT
from gptlab.rundir import CHECKPOINTS, METRICS, TRAIN_LOG
from gptlab.weights import (
    book_tensors_to_save,
    load_book_safetensors,
    load_book_state_dict,
    read_book_safetensors,
    save_book_safetensors,
)

POINTERS = ("latest", "best")
# The files of a checkpoint folder; training, resuming, evaluation and `gptlab import-hf` all go through here.
MODEL_WEIGHTS = "model.safetensors"  # the book's GPTModel layout (gptlab.weights)
META = "meta.json"  # the users' statistics of the steps since the last checkpoint, and gptlab's additions
CONFIG = "config.json"  # the resolved configuration the checkpoint was trained with
ABANDONED_PREFIX = "abandoned-"
CHECKSUMS = "checksums.sha256"
OPTIMIZER = "optimizer.pt"  # AdamW's state, whole (one process or DDP)
TRAINING_STATE = "training_state.pt"
SCALER = "scaler.pt"  # fp16 only: the gradient scaler
# A sharded run's resume state instead of optimizer.pt: the model and AdamW state in torch.distributed.checkpoint's
# own layout (each rank's shard in its own file, and `.metadata`), written by every rank (save_sharded_resume_state)
RESUME_STATE = "resume"
RESUME_METADATA = ".metadata"  # what torch.distributed.checkpoint writes last, once every rank's files are written


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    """Every file of the folder, those of its sub-folders (resume/) by their relative path."""
    directory = Path(directory)
    lines = [
        f"{sha256_of(path)}  {path.relative_to(directory).as_posix()}\n"
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != CHECKSUMS
    ]
    (Path(directory) / CHECKSUMS).write_text("".join(lines), encoding="utf-8")


def read_checksums(directory: Path) -> Optional[dict[str, str]]:
    """{file name: SHA-256} from checksums.sha256, or None for a checkpoint written without one."""
    path = Path(directory) / CHECKSUMS
    if not path.is_file():
        return None
    checksums = {}
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            digest, separator, name = line.partition("  ")
            if not separator or len(digest) != 64:
                raise ValueError(f"malformed line {line[:80]!r}")
            checksums[name] = digest
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: corrupt or unreadable checkpoint file ({error})") from None
    return checksums


def checkpoint_name(step: int, now: Optional[time.struct_time] = None) -> str:
    return time.strftime("%Y%m%dZ%H%M%S", now or time.gmtime()) + f"-iteration-{step}"


CHECKPOINT_NAME = re.compile(r"\d{8}Z\d{6}-iteration-\d+")  # exactly what checkpoint_name writes


def written_by_gptlab(path: Path) -> bool:
    """A folder pruning may delete: named exactly as checkpoint_name names them and holding the meta.json
    every gptlab checkpoint has. A user's copy (`my-saved-copy-iteration-2`, `...-iteration-9-backup`) is
    never one, whatever it holds."""
    return bool(CHECKPOINT_NAME.fullmatch(path.name)) and (path / META).is_file() and not path.is_symlink()


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


def _checkpoint_bytes(run_dir: Path, snapshot: CheckpointSnapshot) -> int:
    """What a checkpoint takes: the newest one's size, else its tensors' bytes."""
    existing = list_checkpoints(run_dir)
    if existing:
        return sum(path.stat().st_size for path in existing[-1].rglob("*") if path.is_file())
    return snapshot.tensor_bytes()


def point(run_dir: Path, pointer: str, name: str) -> None:
    """Atomically make `checkpoints/<pointer>` a relative link to `checkpoints/<name>`."""
    directory = Path(run_dir) / CHECKPOINTS
    tmp = directory / f".{pointer}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(name, tmp)
    os.replace(tmp, directory / pointer)
    fsync_directory(directory)


@dataclass
class CheckpointSnapshot:
    """Everything one checkpoint holds, taken at once on the host (`snapshot_checkpoint`), ready to be written
    (`write_checkpoint`) while training goes on. With `copied`, every tensor is a copy of its own: the next
    optimizer step cannot change what is written."""

    name: str  # the folder's name, given when the state was taken
    weights: dict[str, torch.Tensor]  # model.safetensors's tensors (the book's names)
    weights_metadata: Optional[dict[str, str]]
    optimizer: Optional[dict[str, Any]]  # None: a sharded run's, in `resume_state` instead
    scaler: Optional[dict[str, Any]]
    training_state: dict[str, Any]
    meta: bytes  # meta.json and config.json, already serialised
    config: bytes
    is_best: bool
    copied: bool
    resume_state: Optional[Path] = None  # save_sharded_resume_state's folder, moved in as resume/

    def tensor_bytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in _tensors_in(self.weights, self.optimizer))


def _tensors_in(*values: Any):
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            yield from _tensors_in(*value.values())
        elif isinstance(value, (list, tuple)):
            yield from _tensors_in(*value)


def host_copy(value: Any) -> Any:
    """`value` with every tensor copied to the CPU (a copy even of a CPU tensor) and every dict and list rebuilt,
    so nothing in it is shared with the training state it came from."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: host_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [host_copy(item) for item in value]
    if isinstance(value, tuple):
        return tuple(host_copy(item) for item in value)
    return value


def _json_bytes(data: Any) -> bytes:
    return (strict_json(data, indent=2, sort_keys=False) + "\n").encode("utf-8")


def snapshot_checkpoint(
    step: int,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[torch.amp.GradScaler],
    training_state: dict[str, Any],
    meta: dict[str, Any],
    config: dict[str, Any],
    is_best: bool,
    resume_state: Optional[Path] = None,
    copy: bool = True,
) -> CheckpointSnapshot:
    """The state a checkpoint of `step` holds. With `copy` (a background save), the optimizer state and the
    training state are copied to the host as well as the weights (always copies: safetensors stores Q, K and V
    apart): one more copy of the weights and AdamW state in host memory until the save ends. Without it
    (a save written before the next step), the optimizer's tensors are referenced, not copied.
    `resume_state`, when given, is a sharded run's weights and AdamW state already on disk (written by
    save_sharded_resume_state): it is moved into the checkpoint instead of writing optimizer.pt."""
    weights, weights_metadata = book_tensors_to_save(model, MODEL_WEIGHTS)
    optimizer_dict = None if resume_state is not None else optimizer.state_dict()
    scaler_dict = scaler.state_dict() if scaler is not None else None
    if copy:
        optimizer_dict, scaler_dict, training_state = host_copy((optimizer_dict, scaler_dict, training_state))
    return CheckpointSnapshot(
        name=checkpoint_name(step),
        weights=weights,
        weights_metadata=weights_metadata,
        optimizer=optimizer_dict,
        scaler=scaler_dict,
        training_state=training_state,
        meta=_json_bytes({**meta, "is_best": is_best}),
        config=_json_bytes(config),
        is_best=is_best,
        copied=copy,
        resume_state=resume_state,
    )


class _HashingFile:
    """A file being written whose SHA-256 is computed from the bytes as they are written (no second read)."""

    def __init__(self, path: Path):
        self.name = Path(path).name
        self._handle = open(path, "wb")
        self.digest = hashlib.sha256()

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        return self._handle.write(view)

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "_HashingFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.close()


def write_checkpoint(run_dir: Path, snapshot: CheckpointSnapshot) -> Path:
    """Write `snapshot` into `checkpoints/<its name>`: each file hashed as it is written, checksums.sha256 from
    those hashes, every file fsynced, the folder renamed into place, then `latest` (and `best`) pointed at it.
    A full device: one OutOfSpace line, the partial folder removed, `latest` untouched."""
    directory = Path(run_dir) / CHECKPOINTS
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / snapshot.name
    try:
        with atomic_folder(final) as staging:  # the same step saved twice within one second: the newer replaces it
            digests = {}

            def write(name: str, fill) -> None:
                with _HashingFile(staging / name) as handle:
                    fill(handle)
                digests[name] = handle.digest.hexdigest()

            write(MODEL_WEIGHTS, lambda f: f.write(save_safetensors(snapshot.weights, snapshot.weights_metadata)))
            if snapshot.resume_state is not None:  # written by every rank already: moved in, hashed as it is
                os.rename(snapshot.resume_state, staging / RESUME_STATE)
                for path in sorted((staging / RESUME_STATE).rglob("*")):
                    if path.is_file():
                        digests[path.relative_to(staging).as_posix()] = sha256_of(path)
            else:
                write(OPTIMIZER, lambda f: torch.save(snapshot.optimizer, f))
            if snapshot.scaler is not None:
                write(SCALER, lambda f: torch.save(snapshot.scaler, f))
            write(TRAINING_STATE, lambda f: torch.save(snapshot.training_state, f))
            write(META, lambda f: f.write(snapshot.meta))
            write(CONFIG, lambda f: f.write(snapshot.config))
            (staging / CHECKSUMS).write_text(
                "".join(f"{digest}  {name}\n" for name, digest in sorted(digests.items())), encoding="utf-8"
            )
    except Exception as error:  # atomic_folder has removed the staging folder: the space comes back
        if is_out_of_space(error):
            latest = directory / "latest"
            kept = f"; `latest` still points to {os.readlink(latest)}" if latest.is_symlink() else ""
            raise out_of_space_error(final, _checkpoint_bytes(run_dir, snapshot), after=kept) from None
        raise
    point(run_dir, "latest", snapshot.name)
    if snapshot.is_best:
        point(run_dir, "best", snapshot.name)
    return final


def resume_staging(run_dir: Path, step: int) -> Path:
    """Where every rank writes a sharded run's resume state before rank 0 moves it into the checkpoint's staging
    folder; the `.tmp-` prefix has a process killed before that leave nothing the next start does not remove."""
    return Path(run_dir) / CHECKPOINTS / f".tmp-{RESUME_STATE}-iteration-{step}"


def save_sharded_resume_state(run_dir: Path, step: int, model: torch.nn.Module, optimizer, is_main: bool) -> Path:
    """A collective: every rank writes its own shards of the weights and AdamW state with
    torch.distributed.checkpoint (fsynced) into resume_staging(); returns that folder once every rank has
    written, for snapshot_checkpoint(resume_state=...) on rank 0. No rank ever holds the whole optimizer state."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = resume_staging(run_dir, step)
    if is_main:
        shutil.rmtree(folder, ignore_errors=True)  # the same step saved again (a resume that stops at once)
        folder.mkdir(parents=True)
    dist.barrier()  # nobody writes before the folder is fresh
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, storage_writer=dcp.FileSystemWriter(folder))
    dist.barrier()  # every rank's files are written and fsynced before rank 0 moves the folder
    return folder


class _MetadataUnpickler(pickle.Unpickler):
    """torch.distributed.checkpoint's `.metadata` is a pickle; gptlab never runs a file's code, so only the
    classes that metadata is made of load (the same promise as torch.load(weights_only=True) for the .pt files)."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # torch.strided, by its name
        ("pathlib", "PosixPath"),  # where it was written (storage_meta.checkpoint_id)
        ("pathlib", "WindowsPath"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint.") or (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"refused: it holds a pickled {module}.{name}, which is not part of torch.distributed.checkpoint's "
            "metadata (gptlab never runs a file's code)"
        )


def _resume_state_reader(folder: Path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with open(Path(folder) / RESUME_METADATA, "rb") as handle:
                metadata = _MetadataUnpickler(handle).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader(folder)


def save_weights_only_checkpoint(
    run_dir: Path, step: int, model: GPT, meta: dict[str, Any], config: dict[str, Any]
) -> str:
    """A checkpoint of weights, meta.json and config.json alone (no optimizer or training state: it can be
    evaluated, sampled and trained from with init_from, not resumed), which `latest` and `best` point to."""
    directory = Path(run_dir) / CHECKPOINTS
    directory.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    with atomic_folder(directory / name) as staging:
        save_book_safetensors(model, staging / MODEL_WEIGHTS)
        atomic_write_json(staging / META, meta)
        atomic_write_json(staging / CONFIG, config)
        write_checksums(staging)
    for pointer in POINTERS:
        point(run_dir, pointer, name)
    return name


def initial_weights(path: Path) -> Optional[Path]:
    """The weights at `path`: a model.safetensors itself, a checkpoint folder's, or a run directory's latest."""
    for candidate in (path, path / MODEL_WEIGHTS, path / CHECKPOINTS / POINTERS[0] / MODEL_WEIGHTS):
        if candidate.is_file():
            return candidate
    return None


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

    @property
    def config(self) -> dict[str, Any]:
        """The resolved configuration (model and train) it was trained with."""
        return read_json(self.path / CONFIG)

    def check_content(self, name: str) -> None:
        """Refuse a file whose bytes differ from the checksum written with the checkpoint."""
        if "_checksums" not in self._loaded:
            self._loaded["_checksums"] = read_checksums(self.path)
        expected = (self._loaded["_checksums"] or {}).get(name)
        path = self.path / name
        if expected is None or not path.is_file():
            return
        if sha256_of(path) != expected:
            raise UserError(
                f"{path}: damaged: its content no longer matches the checksum written with the checkpoint ({CHECKSUMS})"
            )

    def load_model(self, model: GPT) -> None:
        weights = self._loaded.pop("model.safetensors", None)
        if weights is None:
            self.check_content("model.safetensors")
            load_book_safetensors(model, self.path / "model.safetensors")
        else:
            load_book_state_dict(model, weights, str(self.path / "model.safetensors"))

    def _load_pt(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded.pop(name)
        path = self.path / name
        self.check_content(name)
        try:
            return torch.load(path, weights_only=True, map_location="cpu")
        except FileNotFoundError:
            raise UserError(f"{path}: missing from the checkpoint") from None
        except pickle.UnpicklingError:  # torch's message advises weights_only=False, which would run the file's code
            raise UserError(
                f"{path}: refused: it holds pickled objects other than tensors and plain values, "
                f"which gptlab never loads (they can run code)"
            ) from None
        except Exception as error:  # torch raises several types for truncated or foreign files
            raise UserError(
                f"{path}: corrupt or unreadable checkpoint file ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
            ) from None

    def load_training_state(self) -> dict[str, Any]:
        return _checked_training_state(self._load_pt(TRAINING_STATE), self.path / TRAINING_STATE)

    def optimizer_state(self) -> dict[str, Any]:
        return self._load_pt(OPTIMIZER)

    @property
    def sharded(self) -> bool:
        """Written by a sharded (FSDP) run: resume/ holds the weights and AdamW state, not optimizer.pt."""
        return (self.path / RESUME_STATE).is_dir()

    def load_resume_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """A sharded checkpoint's weights and AdamW state into `model` and `optimizer`, at any world size: sharded
        or not, each rank reads the parts it holds (torch.distributed.checkpoint reshards); a collective when
        several processes train."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        folder = self.path / RESUME_STATE
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        try:
            with warnings.catch_warnings():  # one process reads a sharded run's state: that is meant
                warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
                dcp.load(state, storage_reader=_resume_state_reader(folder))
        except (Exception, CheckpointException) as error:  # a missing shard or key, another model's, a refused pickle
            raise UserError(f"{folder}: corrupt or unreadable sharded resume state ({_first_failure(error)})") from None
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.load_state_dict(self.optimizer_state())

    def load_scaler(self, scaler: Optional[torch.amp.GradScaler]) -> None:
        if scaler is not None and (self.path / SCALER).is_file():
            scaler.load_state_dict(self._load_pt(SCALER))

    def verify(self) -> None:
        """Read every file of the checkpoint fully; raise UserError naming the first bad file."""
        self.check_content("model.safetensors")
        self._loaded["model.safetensors"] = read_book_safetensors(self.path / "model.safetensors")
        for name in (OPTIMIZER, TRAINING_STATE, SCALER):
            if (name == OPTIMIZER and not self.sharded) or name == TRAINING_STATE or (self.path / name).exists():
                self._loaded[name] = self._load_pt(name)
        if self.sharded:
            self._verify_resume_state()
        _checked_training_state(self._loaded[TRAINING_STATE], self.path / TRAINING_STATE)
        for name in ("meta.json", "config.json"):
            self.check_content(name)
            try:
                read_json(self.path / name)
            except (OSError, ValueError) as error:
                raise UserError(f"{self.path / name}: corrupt or unreadable checkpoint file ({error})") from None

    def _verify_resume_state(self) -> None:
        """resume/ whole: its `.metadata` and every shard file the checksums name are there and unaltered, and
        nothing the checksums do not name (checkpoints written without checksums: the metadata is there)."""
        folder = self.path / RESUME_STATE
        if "_checksums" not in self._loaded:
            self._loaded["_checksums"] = read_checksums(self.path)
        listed = sorted(name for name in self._loaded["_checksums"] or {} if name.startswith(RESUME_STATE + "/"))
        if not (folder / RESUME_METADATA).is_file():
            raise UserError(
                f"{folder / RESUME_METADATA}: missing from the checkpoint (its sharded resume state is incomplete)"
            )
        for name in listed:
            if not (self.path / name).is_file():
                raise UserError(
                    f"{self.path / name}: missing from the checkpoint (its sharded resume state is incomplete)"
                )
            self.check_content(name)
        if self._loaded["_checksums"] is not None:
            unlisted = sorted(
                path.relative_to(self.path).as_posix()
                for path in folder.rglob("*")
                if path.is_file() and path.relative_to(self.path).as_posix() not in listed
            )
            if unlisted:
                raise UserError(
                    f"{self.path / unlisted[0]}: not named in {CHECKSUMS}: not part of this checkpoint as written"
                )


def _first_failure(error: BaseException) -> str:
    """The first line of what went wrong in torch.distributed.checkpoint: the first failed rank's own error, not
    the CheckpointException that gathers them (whose message is a list of ranks and tracebacks)."""
    failures = getattr(error, "failures", None)  # CheckpointException: {rank: (exception, stack summary)}
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        error = first[0] if isinstance(first, tuple) and first and isinstance(first[0], BaseException) else error
    lines = [line for line in str(error).splitlines() if line.strip()]
    # DCP's own read step joins the reasons: "metadata is None; global metadata read failed: <reason>; ..."
    text = lines[0] if lines else type(error).__name__
    reason = text.split("global metadata read failed: ", 1)[-1].split("; rank local metadata", 1)[0]
    return reason[:300]


def _checked_training_state(state: Any, path: Path) -> dict[str, Any]:
    """What resuming reads from training_state.pt, present with the right types (it loaded, but is it ours?)."""
    expected = {"step": int, "totals": dict, "rng": (list, dict)}
    wrong = [
        key for key, kind in expected.items() if not isinstance(state, dict) or not isinstance(state.get(key), kind)
    ]
    if wrong:
        raise UserError(f"{path}: not a gptlab training state ({', '.join(wrong)} missing or of the wrong type)")
    return state


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint folders, oldest step first."""
    directory = Path(run_dir) / CHECKPOINTS
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.is_dir() and not p.is_symlink() and _CHECKPOINT_NAME.search(p.name) and not p.name.startswith(".")
    ]
    return sorted(found, key=lambda p: (step_of(p), p.name))


def not_checkpoints(run_dir: Path) -> list[str]:
    """Folders in checkpoints/ that look like a checkpoint's copy but whose name does not end in
    `-iteration-<step>` (e.g. `...-iteration-9-backup`): discovery ignores them, and callers say so."""
    directory = Path(run_dir) / CHECKPOINTS
    if not directory.is_dir():
        return []
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.is_dir() and not p.is_symlink() and "-iteration-" in p.name and not _CHECKPOINT_NAME.search(p.name)
    )


def find_checkpoint(run_dir: Path, which: str = "latest") -> Checkpoint:
    """`best`, `latest`, a checkpoint folder name, or a path to a checkpoint folder."""
    directory = Path(run_dir) / CHECKPOINTS
    candidate = (
        Path(which) if Path(which).is_dir() and (Path(which) / "model.safetensors").exists() else directory / which
    )
    if (candidate / "model.safetensors").is_file():
        return Checkpoint(candidate.resolve())
    available = [p.name for p in list_checkpoints(run_dir)]
    if not available:
        raise UserError(f"{run_dir}: no checkpoints yet; train it first with `gptlab train {run_dir}`")
    pointers = [p for p in POINTERS if (candidate.parent / p / "model.safetensors").is_file()]
    choices = f"choose one of: {', '.join(pointers + available[-5:])}"
    if candidate.is_symlink() and not candidate.exists():
        raise UserError(f"{candidate}: points to {os.readlink(candidate)}, which does not exist; {choices}")
    if candidate.is_dir():
        held = sorted(path.name for path in candidate.iterdir())
        raise UserError(f"{candidate}: has no model.safetensors (it holds: {', '.join(held) or 'nothing'}); {choices}")
    raise UserError(f"{run_dir}: no checkpoint '{which}'; {choices}")


def find_resumable_checkpoint(run_dir: Path, which: str = "latest") -> Checkpoint:
    """Like find_checkpoint, but verified whole; a corrupt one is refused with the newest good one offered."""
    checkpoint = find_checkpoint(run_dir, which)
    try:
        checkpoint.verify()
    except UserError as error:
        raise UserError(
            error.lines[0]
            + offer_good_checkpoint(run_dir, "resume with --resume", lambda c: c.verify(), damaged=checkpoint.path)
        ) from None
    return checkpoint


def offer_good_checkpoint(run_dir: Path, how: str, check, damaged: Path) -> str:
    """'; the newest good checkpoint is X: ...' for the newest checkpoint that passes `check`, never `damaged`
    itself (a quick `check` can pass a checkpoint whose full load just failed)."""
    for path in reversed(list_checkpoints(run_dir)):
        if path.resolve() == Path(damaged).resolve():
            continue
        try:
            check(Checkpoint(path))
        except UserError:
            continue
        return f"; the newest good checkpoint is {path.name}: {how} {path.name}"
    return "; no good checkpoint remains"


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


def set_aside_later_checkpoints(run_dir: Path, resumed: Checkpoint) -> Optional[Path]:
    """Resuming from an older checkpoint starts a new line of history: move the checkpoints of the old
    line that come after it into `checkpoints/abandoned-<UTC time>/` (with a copy of the old metrics.jsonl),
    so pruning, `latest` and `best` only ever see the current line. Nothing is deleted.

    `latest` is pointed at the resumed checkpoint; `best` at the newest remaining checkpoint that was
    best when written (or removed when none remains). Returns the folder, or None when nothing came later.
    """
    directory = Path(run_dir) / CHECKPOINTS
    resumed_step = step_of(resumed.path)
    later = [
        path
        for path in list_checkpoints(run_dir)
        if step_of(path) > resumed_step and path.resolve() != resumed.path.resolve()
    ]
    if not later:
        return None
    aside = _new_aside_folder(directory)
    metrics = Path(run_dir) / METRICS
    if metrics.is_file():
        shutil.copy2(metrics, aside / METRICS)
    for path in later:
        os.rename(path, aside / path.name)
    fsync_directory(aside)
    fsync_directory(directory)
    if resumed.path.parent.resolve() == directory.resolve():
        point(run_dir, "latest", resumed.path.name)
    best_link = directory / "best"
    if best_link.is_symlink() and not best_link.exists():  # it pointed into the abandoned line
        still_best = [path for path in list_checkpoints(run_dir) if _was_best(path)]
        if still_best:
            point(run_dir, "best", still_best[-1].name)
        else:
            best_link.unlink()
            fsync_directory(directory)
    return aside


def _new_aside_folder(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    aside = directory / f"{ABANDONED_PREFIX}{time.strftime('%Y%m%dZ%H%M%S', time.gmtime())}"
    while aside.exists():
        aside = aside.with_name(aside.name + "+")
    aside.mkdir()
    return aside


def set_aside_leftovers(run_dir: Path) -> Optional[tuple[Path, list[str]]]:
    """A fresh start over a run that was stopped before its first checkpoint: move the earlier start's
    metrics.jsonl and train.log into `checkpoints/abandoned-<UTC time>/`, as a rewind moves a later line of
    history, instead of deleting them. Returns the folder and the names moved, or None when there were none."""
    leftovers = [Path(run_dir) / name for name in (METRICS, TRAIN_LOG) if (Path(run_dir) / name).is_file()]
    if not leftovers:
        return None
    directory = Path(run_dir) / CHECKPOINTS
    aside = _new_aside_folder(directory)
    for path in leftovers:
        os.rename(path, aside / path.name)
    fsync_directory(aside)
    fsync_directory(Path(run_dir))
    return aside, [path.name for path in leftovers]


def _was_best(path: Path) -> bool:
    try:
        return bool(read_json(path / "meta.json").get("is_best"))
    except (OSError, ValueError, AttributeError):
        return False


# A checkpoint folder's name ends in -iteration-<step> (the users' scripts read <UTC>-iteration-<step>).
_CHECKPOINT_NAME = re.compile(r"-iteration-(\d+)$")


def step_of(path: Path) -> int:
    match = _CHECKPOINT_NAME.search(Path(path).name)
    if match is None:
        raise UserError(f"{path}: not a checkpoint folder name (<UTC time>-iteration-<step>)")
    return int(match[1])


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints, never the one `best` points to.

    Only the current line of history is here: an older line was moved aside on resume
    (`set_aside_later_checkpoints`), so the newest steps are also the newest checkpoints."""
    directory = Path(run_dir) / CHECKPOINTS
    best = (directory / "best").resolve() if (directory / "best").exists() else None
    removed = []
    for path in [path for path in list_checkpoints(run_dir) if written_by_gptlab(path)][:-keep]:
        if best is not None and path.resolve() == best:
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed
