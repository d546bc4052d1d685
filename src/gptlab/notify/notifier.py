"""Sending notifications without ever holding up the caller.

Messages go into a bounded queue and a daemon thread delivers them, each request with a timeout and
each failure retried with exponential backoff and jitter. A channel that keeps failing is reported once,
in one line that names the channel and the kind of failure (never its address or token). `close` waits
a bounded time for the last messages: a run's final "finished" or "failed" should get out, but a
notifier that hangs must not keep the process alive.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from typing import Callable, Optional, Sequence

from gptlab.notify.http import HttpError
from gptlab.notify.message import Channel, Message, redact

REQUEST_TIMEOUT = 10.0  # seconds one delivery attempt may take
ATTEMPTS = 4  # per message and channel
FIRST_BACKOFF = 1.0  # seconds before the second attempt; doubled each time, times a jitter in [0.5, 1.5)
CLOSE_WAIT = 15.0  # seconds `close` waits for undelivered messages
QUEUE_SIZE = 64

_STOP = object()


def _worth_retrying(error: Exception) -> bool:
    """Timeouts, dropped connections, 429 and 5xx may pass; a 4xx (bad token, unknown chat) will not."""
    status = getattr(error, "status", None)
    return not isinstance(error, HttpError) or status is None or status in (408, 429) or status >= 500


class Notifier:
    """Delivers `Message`s to every channel from a background thread; `send` never blocks."""

    def __init__(
        self,
        channels: Sequence[Channel],
        log: Callable[[str], None] = print,
        *,
        timeout: Optional[float] = None,
        attempts: Optional[int] = None,
        first_backoff: Optional[float] = None,
        close_wait: Optional[float] = None,
    ):
        self.channels = list(channels)
        self._log = log
        # read at construction, not import, so a test can shorten them
        self.timeout = REQUEST_TIMEOUT if timeout is None else timeout
        self.attempts = ATTEMPTS if attempts is None else attempts
        self.first_backoff = FIRST_BACKOFF if first_backoff is None else first_backoff
        self.close_wait = CLOSE_WAIT if close_wait is None else close_wait
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: Optional[threading.Thread] = None
        self._reported: set[str] = set()  # channels (or problems) already reported once
        self._closing = threading.Event()
        self.delivered: list[tuple[str, str]] = []  # (channel, event), for tests and `notify test`
        self.failures: dict[str, str] = {}  # channel -> its last failure

    @property
    def enabled(self) -> bool:
        return bool(self.channels)

    def send(self, message: Message) -> None:
        if not self.channels or self._closing.is_set():
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="gptlab-notify", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self._report_once(
                "queue",
                f"Notifications: more than {QUEUE_SIZE} messages waiting; dropping new ones until the channels answer",
            )

    def close(self, wait: Optional[float] = None) -> bool:
        """Let queued messages go out for at most `wait` seconds; True when none was left undelivered."""
        if self._thread is None or self._closing.is_set():
            return not self.failures
        self._closing.set()
        try:
            self._queue.put(_STOP, timeout=0.1)
        except queue.Full:
            pass
        self._thread.join(timeout=self.close_wait if wait is None else wait)
        if self._thread.is_alive():
            self._report_once(
                "close",
                f"Notifications: gave up waiting {self.close_wait if wait is None else wait:g} s for a channel to answer; "
                "the last messages may not arrive",
            )
            return False
        return not self.failures

    def _work(self) -> None:
        while True:
            message = self._queue.get()
            if message is _STOP:
                return
            for channel in self.channels:
                self._deliver(channel, message)

    def _deliver(self, channel: Channel, message: Message) -> None:
        for attempt in range(self.attempts):
            try:
                channel.send(message, self.timeout)
                self.delivered.append((channel.name, message.event))
                self.failures.pop(channel.name, None)
                return
            except Exception as error:  # noqa: BLE001 - a notifier must never take the caller down
                what = str(error) if isinstance(error, HttpError) else type(error).__name__
                if not _worth_retrying(error) or attempt == self.attempts - 1:
                    break
                time.sleep(
                    self.first_backoff * 2**attempt * random.uniform(0.5, 1.5)
                )  # `close` bounds how long this may go on
        self.failures[channel.name] = redact(what, channel.secrets())
        self._report_once(
            channel.name,
            f"Notifications via {channel.name} failed ({self.failures[channel.name]}, '{message.event}' message); "
            "further failures of this channel are not reported",
        )

    def _report_once(self, key: str, line: str) -> None:
        if key in self._reported:
            return
        self._reported.add(key)
        try:
            self._log(line)
        except Exception:  # noqa: BLE001 - a closed log must not kill the thread either
            pass
