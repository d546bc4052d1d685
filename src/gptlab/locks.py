"""One writer at a time: an advisory lock file per run directory (and per experiment file).

The lock is `fcntl.flock` on a small file that also says who holds it (PID, host, command, since when), so
a second writer is refused with one line naming the holder instead of interleaving its steps with the
first one's. flock belongs to the open file: the kernel releases it when the holder exits, SIGKILL
included, so a lock can never be left stuck; a file that still names a dead process only gets a note.

Readers never take it and never wait. The file stays in place after release (emptied): removing it would
let a process that opened the old file a moment earlier hold a lock nobody else sees.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from gptlab.errors import UserError

# Locks this process holds, by resolved path, with how deeply they are nested: a command that takes a run's
# lock and then calls a function that takes it again (eval --save writing evaluation.json) must not refuse
# itself. (flock would: a second open() of the same file is a second, conflicting lock.)
_held: dict[str, list[int]] = {}  # path -> [file descriptor, depth]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _holder(fd: int) -> Optional[dict]:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(holder: Optional[dict]) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    return (
        f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')} "
        f"({holder.get('command', 'gptlab')}, since {holder.get('since', '?')})"
    )


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


@contextmanager
def exclusive(
    lock_path: Path,
    what: str,
    command: str,
    note: Callable[[str], None] = _stderr,
    take: bool = True,
    wait: float = 0.0,
) -> Iterator[None]:
    """Hold the lock at `lock_path` for the block, or raise UserError naming its holder. `what` names the
    thing locked in messages ("run runs/a"). With `take=False` (a torchrun rank other than 0) it does nothing.
    `wait`: seconds to keep trying, for a block of a few milliseconds that another such block may hold."""
    if not take:
        yield
        return
    lock_path = Path(lock_path)
    key = str(lock_path.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno == errno.EROFS:
            raise UserError(f"{what}: cannot write into {lock_path.parent}: the file system is read-only") from None
        if error.errno in (errno.EACCES, errno.EPERM):
            raise UserError(f"{what}: cannot write into {lock_path.parent}: it is read-only for this user") from None
        if error.errno == errno.ENOENT:
            raise UserError(f"{what}: {lock_path.parent} does not exist") from None
        raise UserError(f"{what}: cannot create {lock_path} ({error.strerror})") from None
    give_up = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < give_up:
                time.sleep(0.05)
                continue
            holder = _holder(fd)
            os.close(fd)
            raise UserError(
                f"{what} is being written by {describe_holder(holder)}; wait for it to finish or stop it, then try again"
            ) from None
        except OSError as error:  # a filesystem without locks: say so rather than write unguarded in silence
            os.close(fd)
            raise UserError(f"{what}: cannot lock {lock_path} ({error.strerror})") from None
    host = socket.gethostname()
    previous = _holder(fd)
    if previous:
        # flock was free, so whoever wrote this is gone (or, on another host, lost its lock with its machine)
        gone = (
            "has exited" if previous.get("host") == host and not _alive(previous.get("pid")) else "no longer holds it"
        )
        note(
            f"Note: {what} was last written by {describe_holder(previous)}, which {gone} without releasing its lock file; taking it over"
        )
    mine = {
        "pid": os.getpid(),
        "host": host,
        "command": command,
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode("utf-8"), 0)
    except OSError:
        # a full disk: the flock holds without the holder's name, and the command's own write then fails
        # naming its file (the name in the lock is only for a second writer's message)
        pass
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        try:
            os.ftruncate(fd, 0)  # a clean release leaves no name behind, so the next writer gets no note
        except OSError:
            pass
        os.close(fd)  # releases the flock
