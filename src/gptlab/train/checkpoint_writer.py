"""Checkpoints written off the training path: the loop hands over a host snapshot and goes on training.

One save at most is in flight: a checkpoint due while the previous one is still being written waits for it
first, so the host never holds more than one snapshot. The writer thread writes and hashes the files, renames
the folder into place, points `latest` (and `best`) at it and prunes, in that order, one checkpoint after the
other. What the loop learns from it, it learns on its own thread: a save that ended (`poll`, then `on_written`
is called, e.g. to announce the checkpoint, which is on disk by then) or one that failed (its error is raised
by the next `poll`, `save` or `wait`: the loop stops with that one line; every checkpoint written before it is
untouched). A SIGKILL at any instant leaves at worst a staging folder, which the next start removes: `latest`
only ever points at a complete, verified checkpoint.

`background=False` writes each checkpoint before `save` returns (the synchronous path), with the same
bookkeeping, so the loop treats both alike.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Optional

from gptlab.runtime.checkpoint import CheckpointSnapshot, prune_checkpoints, write_checkpoint


class CheckpointWriter:
    def __init__(self, run_dir: Path, keep_checkpoints: Optional[int], background: bool):
        self.run_dir = Path(run_dir)
        self.keep_checkpoints = keep_checkpoints
        self.background = background
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._written: Optional[tuple[Callable[[float], None], float]] = None  # (on_written, seconds), unreported

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def save(
        self,
        snapshot: CheckpointSnapshot,
        snapshot_seconds: float = 0.0,
        on_written: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        """Write `snapshot` (in the background when so made), after the save in flight has ended.
        `snapshot_seconds`, the time taking it took, is counted in the save's time."""
        self.wait()
        if not self.background:
            self._write(snapshot, snapshot_seconds, on_written)
            self.poll()
            return
        if not snapshot.copied:
            raise ValueError("a background save needs a snapshot whose tensors are copies")
        self._thread = threading.Thread(
            target=self._write,
            args=(snapshot, snapshot_seconds, on_written),
            name=f"gptlab checkpoint {snapshot.name}",
            daemon=True,  # a second Ctrl-C ends the process at once; the staging folder is removed by the next start
        )
        self._thread.start()

    def _write(
        self, snapshot: CheckpointSnapshot, snapshot_seconds: float, on_written: Callable[[float], None]
    ) -> None:
        started = time.perf_counter()
        try:
            write_checkpoint(self.run_dir, snapshot)
            if self.keep_checkpoints is not None:
                prune_checkpoints(self.run_dir, self.keep_checkpoints)
        except BaseException as error:  # reported on the loop's thread by poll, save or wait
            self._error = error
            return
        finally:
            del snapshot  # the host copy goes as soon as it is written
        self._written = (on_written, snapshot_seconds + time.perf_counter() - started)

    def poll(self) -> None:
        """Report a save that has ended: raise its error, or call its `on_written` with the seconds it took."""
        if self.in_flight:
            return
        self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error
        if self._written is not None:
            on_written, seconds = self._written
            self._written = None
            on_written(seconds)

    def wait(self) -> None:
        """Wait for the save in flight to end, then report it as `poll` does."""
        if self._thread is not None:
            self._thread.join()
        self.poll()

    def wait_quietly(self) -> Optional[BaseException]:
        """When the loop fails for another reason: wait for the save in flight (it is kept when it succeeds)
        and return its error instead of raising it, so the first failure is the one reported."""
        if self._thread is not None:
            self._thread.join()
        try:
            self.poll()
        except BaseException as error:
            return error
        return None
