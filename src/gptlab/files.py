"""Atomic writes of files and folders: a reader, or a process killed mid-write, only ever sees the old one or the new one."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from gptlab.errors import BadFile, OutOfSpace, ReadOnly

# torch.save's C++ writer (RuntimeError) and safetensors' Rust writer (SafetensorError) report a full
# device in their message only.
_WRITE_FAILURES = ("basic_ios::clear", "file write failed", "No space left", "StorageFull", "Disk quota exceeded")


def is_out_of_space(error: BaseException) -> bool:
    """A write failed because the device (or the user's quota) is full."""
    if isinstance(error, OutOfSpace):
        return True
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, Exception) and any(text in str(error) for text in _WRITE_FAILURES):
        return True
    # torch.save reports a failed write while closing its archive, chained to the original error
    context = error.__cause__ or error.__context__
    return context is not None and context is not error and is_out_of_space(context)


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def out_of_space_error(what: Path | str, needed_bytes: int | None, after: str = "", cleaned: bool = True) -> OutOfSpace:
    """One line: what could not be written, the space it needs and the space there is."""
    where = Path(what)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    needed = f"about {human_bytes(needed_bytes)} needed, " if needed_bytes else ""
    return OutOfSpace(
        f"{what}: could not be written: no space left on the device ({needed}{human_bytes(free)} free); "
        + (f"the partial write was removed{after}; " if cleaned else "")
        + "free some space and run it again"
    )


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


def atomic_write(path: Path, write: Callable[[Path], None], needed_bytes: int | None = None) -> None:
    """Call `write(tmp_path)`, fsync the result, then rename it over `path` (a full device: one OutOfSpace line)."""
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
    except BaseException as error:
        tmp_path.unlink(missing_ok=True)
        if is_out_of_space(error):
            raise out_of_space_error(path, needed_bytes) from None
        raise
    fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    atomic_write(path, lambda tmp: tmp.write_bytes(data), needed_bytes=len(data))


def finite_or_null(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None: strict JSON has no such numbers."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_or_null(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_null(value) for value in data]
    return data


def strict_json(data: Any, **options: Any) -> str:
    """JSON that every parser accepts: NaN and infinities are written as null (a value that is undefined)."""
    return json.dumps(finite_or_null(data), allow_nan=False, **options)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, strict_json(data, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: Path, records: list[dict]) -> None:
    """Append records to a JSON-lines file; each line is complete and fsynced before returning, and a failed
    append is cut back to where it began (never half a line)."""
    if not records:
        return
    data = "".join(strict_json(record) + "\n" for record in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size_before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as error:
            os.ftruncate(fd, size_before)
            if is_out_of_space(error):
                raise out_of_space_error(path, len(data)) from None
            raise
    finally:
        os.close(fd)


class DuplicateKeyError(ValueError):
    def __init__(self, key: str):
        super().__init__(f"key '{key}' appears more than once")
        self.key = key


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def loads_no_duplicates(text: str) -> Any:
    """json.loads, but an object that repeats a key raises DuplicateKeyError (the last one would silently win)."""
    return json.loads(text, object_pairs_hook=_refuse_duplicate_keys)


def read_json(path: Path, shape: type | None = None) -> Any:
    """A JSON file's content; an empty, torn, non-UTF-8 or too deeply nested file, or (with `shape`) one whose
    top level is not that type, raises BadFile naming the file and what is wrong."""
    path = Path(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise BadFile(f"{path}: is empty (a write was cut short?); restore it or remove the run's damaged file")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise BadFile(f"{path}: not UTF-8 text (byte {error.start}); it should be UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise BadFile(f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise BadFile(f"{path}: nested too deeply to be read") from None
    if shape is not None and not isinstance(data, shape):
        wanted = {dict: "a JSON object", list: "a JSON list"}.get(shape, shape.__name__)
        raise BadFile(f"{path}: must hold {wanted}, not {type(data).__name__}")
    return data


def is_read_only(error: BaseException) -> bool:
    """A write failed because the file system is mounted read-only or the folder's permissions forbid it."""
    return isinstance(error, OSError) and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[^.]+\.tmp")


def read_only_error(error: OSError) -> ReadOnly:
    """One line naming the file that could not be written (not the temporary name an atomic write used)."""
    where = Path(error.filename) if error.filename else "a file"
    if isinstance(where, Path) and (match := _TEMPORARY.fullmatch(where.name)):
        where = where.parent / match["name"]
    why = "the file system is read-only" if error.errno == errno.EROFS else "permission denied"
    return ReadOnly(f"{where}: cannot be written: {why}; give gptlab a folder it can write to")


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
            os.rename(
                path / "replaced", final
            )  # killed between moving the old folder aside and renaming the new one in
            path.rmdir()
        else:
            shutil.rmtree(path, ignore_errors=True)


def user_cache_dir(*parts: str) -> Path:
    """gptlab's folder in the user's cache: $XDG_CACHE_HOME/gptlab/PARTS (default ~/.cache/gptlab/PARTS)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "gptlab", *parts)
