"""The files an evaluation task reads from the user's cache when none is given: downloaded once, kept only
when they read as the task's files, and one line saying to pass `--file` when there is no network."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from gptlab.errors import UserError
from gptlab.files import atomic_write, user_cache_dir

DOWNLOAD_READ_TIMEOUT = 30.0  # seconds without a byte
DOWNLOAD_DEADLINE = 600.0  # seconds for the whole file (HellaSwag's is about 11 MB)


def cache_dir(task: str) -> Path:
    """$XDG_CACHE_HOME/gptlab/TASK (default ~/.cache/gptlab/TASK)."""
    return user_cache_dir(task)


def locate_file(file: Optional[Path], task: str, file_name: str, url: str, check: Callable[[Path], object]) -> Path:
    """`file` when given; else the cached `file_name`, downloaded from `url` first when it is not cached yet."""
    if file is not None:
        if not Path(file).is_file():
            raise UserError(f"--file {file}: no such file; give the path of a {file_name} file")
        return Path(file)
    cached = cache_dir(task) / file_name
    if not cached.is_file():
        download_file(cached, url, task, check)
    return cached


def download_file(target: Path, url: str, task: str, check: Callable[[Path], object]) -> None:
    """Download `url` to `target`, kept only when `check` reads it (a proxy's error page never becomes the cache)."""
    print(f"Downloading {task}'s items from {url} to {target} (once) ...", file=sys.stderr)
    deadline = time.monotonic() + DOWNLOAD_DEADLINE
    try:
        # the socket timeout bounds each wait; the deadline bounds the whole, against a server trickling bytes
        with urllib.request.urlopen(url, timeout=DOWNLOAD_READ_TIMEOUT) as response:
            chunks = []
            while chunk := response.read1(1 << 16):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not complete after {DOWNLOAD_DEADLINE:g} s")
            data = b"".join(chunks)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(
            f"{task}: cannot download {url} ({reason}); download {target.name} yourself and pass --file PATH"
        ) from None

    def write_checked(tmp: Path) -> None:
        tmp.write_bytes(data)
        check(tmp)

    atomic_write(target, write_checked, needed_bytes=len(data))
