"""Finding a run's dataset: a local directory, or a Hugging Face dataset downloaded once into a datasets folder.

The ddp-base-model-from-scratch harness (ddp_train.py) downloads `dataset` with `snapshot_download` into `DATASETS_DIR/<repository id>/`;
gptlab looks in the same place, so their existing downloads are reused as they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gptlab.data.tokens import TokenDataset
from gptlab.errors import UserError
from gptlab.hub import bound_hub_waits
from gptlab.rundir import TRAIN_FILE, recorded_dataset_location

DATASETS_DIR_ENV = "GPTLAB_DATASETS_DIR"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def default_datasets_dir() -> Path:
    return Path(os.environ.get(DATASETS_DIR_ENV, "datasets"))


def download_hf_dataset(repo_id: str, target: Path, looked: str = "") -> None:
    """Download a whole dataset repository into `target` (the ddp-base-model-from-scratch harness's layout);
    `looked` names the local folders searched first, for the message when the download fails."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    bound_hub_waits()
    try:
        snapshot_download(repo_id=repo_id, repo_type="dataset", local_dir=str(target))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"dataset '{repo_id}': no token dataset folder "
            + (f"at {looked} " if looked else "")
            + f"and the download from the Hugging Face Hub into {target} failed ({first_line}); "
            "download it there yourself or give a local directory"
        ) from None


def readable_path(path: Path) -> Path:
    """`path` without `..` and symbolic-link detours (`runs/x/../../data` -> `data`), relative to the working
    directory when it lies under it, else absolute: how it appears in logs, summaries and evaluations."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve())
    except ValueError:
        return resolved


def is_hub_id(dataset: str) -> bool:
    """`dataset` reads as a Hugging Face repository id (OWNER/NAME)."""
    return bool(_REPO_ID.match(dataset))


def find_local_dataset(dataset: str, run_dir: Path, datasets_dir: Path | None = None) -> TokenDataset | None:
    """`dataset` already on this machine, by the same search as `locate_dataset`; None when it is not. Downloads nothing."""
    try:
        return locate_dataset(dataset, run_dir, datasets_dir, download=False)
    except UserError:
        return None


def is_local_dataset(dataset: str, run_dir: Path) -> bool:
    """train.json's `dataset` names a folder on this machine (found before any Hub id, as locate_dataset looks)."""
    candidates = [Path(dataset)] if Path(dataset).is_absolute() else [Path(run_dir) / dataset, Path(dataset)]
    return Path(dataset).is_absolute() or any((candidate / "train.safetensors").is_file() for candidate in candidates)


def locate_dataset(
    dataset: str, run_dir: Path, datasets_dir: Path | None = None, download: bool = True
) -> TokenDataset:
    """Resolve train.json's `dataset` value, in this order: a path (absolute, or relative to the run
    directory; then the folder recorded when the run started, so a run finds its data from any working
    directory; then relative to the working directory); `<datasets_dir>/<repository id>`; only when none of
    these holds it, a download of that id."""
    recorded = recorded_dataset_location(run_dir, dataset)
    if Path(dataset).is_absolute():
        candidates = [Path(dataset)]
    else:
        candidates = [Path(run_dir) / dataset, *([recorded] if recorded is not None else []), Path(dataset)]
    for candidate in candidates:
        if (candidate / "train.safetensors").is_file():
            return TokenDataset(readable_path(candidate))
    datasets_dir = Path(datasets_dir) if datasets_dir is not None else default_datasets_dir()
    looked = ", ".join(str(readable_path(candidate)) for candidate in candidates)
    if _REPO_ID.match(dataset):
        cached = datasets_dir / dataset
        if (cached / "train.safetensors").is_file():
            return TokenDataset(cached)
        if download:
            download_hf_dataset(dataset, cached, looked=f"{looked}, {cached}")
            return TokenDataset(cached)
    raise UserError(
        f"{Path(run_dir) / TRAIN_FILE}: dataset: '{dataset}' is neither a token dataset directory "
        f"(looked in {looked}) nor in {datasets_dir}; "
        f"make one with `gptlab prepare SOURCE DIR` or give a Hugging Face dataset id"
    )
