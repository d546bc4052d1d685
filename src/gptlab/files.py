"""Atomic writes of files and folders: a reader, or a process killed mid-write, only ever sees the old one or the new one."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, fsync the result, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    os.chmod(tmp_path, shareable_mode())
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: Path, records: list[dict]) -> None:
    """Append records to a JSON-lines file; each line is complete, flushed and fsynced before returning."""
    if not records:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in records))
        handle.flush()
        os.fsync(handle.fileno())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def current_umask() -> int:
    """The process's umask (reading it means setting it; it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shareable_mode() -> int:
    """Mode of a file as the user's umask makes it: safetensors and mkstemp write owner-only files, but
    results are meant to be shared."""
    return 0o666 & ~current_umask()


_STAGED = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.(?P<kind>tmp|old)")


def _fresh_sibling(final: Path, kind: str) -> Path:
    """A new hidden folder beside `final`, named for this process (see remove_stale_staging)."""
    while True:
        candidate = final.parent / f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """A staging folder beside `final` to fill; when the block ends, its files are made shareable and fsynced
    and it is renamed to `final`. An existing `final` is moved aside first and removed only once the new folder
    is in place, so `final` is always the old folder or the new one, never a mix. On any error the staging
    folder is removed and `final` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = _fresh_sibling(final, "tmp")
    try:
        yield staging
        mode = shareable_mode()
        for path in staging.rglob("*"):
            if path.is_file() and not path.is_symlink():
                os.chmod(path, mode)
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        for directory in [staging, *(p for p in staging.rglob("*") if p.is_dir() and not p.is_symlink())]:
            fsync_directory(directory)
        old = None
        if final.exists() or final.is_symlink():
            old = _fresh_sibling(final, "old")
            os.rename(final, old / "replaced")
        try:
            os.rename(staging, final)
        except BaseException:
            if old is not None:
                os.rename(old / "replaced", final)
                old.rmdir()
            raise
        fsync_directory(final.parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_stale_staging(parent: Path, name: Optional[str] = None) -> None:
    """Clear what an `atomic_folder` in `parent` left when its process was killed (its process id no longer
    runs): a staging folder is removed; a folder moved aside is put back if nothing replaced it. `name`
    limits this to one final folder's leftovers."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for path in parent.glob(f".{name}.*" if name is not None else ".*"):
        match = _STAGED.fullmatch(path.name)
        if match is None or (name is not None and match["name"] != name) or not path.is_dir() or path.is_symlink():
            continue
        try:
            os.kill(int(match["pid"]), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        final = parent / match["name"]
        if match["kind"] == "old" and not final.exists() and (path / "replaced").is_dir():
            os.rename(path / "replaced", final)  # killed between moving the old folder aside and renaming the new one in
            path.rmdir()
        else:
            shutil.rmtree(path, ignore_errors=True)
