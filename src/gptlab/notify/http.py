"""One HTTP request with a deadline, for the notifier and the cloud providers (standard library only).

Errors name the status or the network failure but never the address: a Telegram address holds the bot
token, and an error line may be printed or logged.

Redirects are never followed: every request here carries a credential (a bearer header, a token in the
path, a secret webhook address), urllib would forward its headers to whatever host a redirect names, and
a POST that follows a 301/302 turns into an empty GET whose 200 would pass for a delivery. A 3xx is a
failure that names only the host it pointed to.

The timeout is a deadline for the whole exchange, not per socket read: a server that trickles one byte
every few seconds would otherwise hold the caller forever.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

MAX_RETRY_AFTER = 300.0  # seconds: a longer (or infinite) Retry-After is treated as this
READ_CHUNK = 65536
CANCEL_CHECK = 0.2  # seconds between looks at a request's `cancel` event


class HttpError(Exception):
    """A request that did not succeed: `status` is the HTTP status, or None when no response came back."""

    def __init__(self, what: str, status: Optional[int] = None, body: Any = None, retry_after: Optional[float] = None):
        super().__init__(what)
        self.status = status
        self.body = body
        self.retry_after = retry_after

    @property
    def no_response(self) -> bool:
        """The request may or may not have reached the server (timeout, dropped connection)."""
        return self.status is None


@dataclass
class Response:
    status: int
    body: Any  # parsed JSON, or the text when the body is not JSON


def _parse(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return text


def _retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait, capped at MAX_RETRY_AFTER; None for an HTTP date, garbage or NaN (the caller's own
    backoff applies). `inf` and huge values are capped: no server may park a caller indefinitely."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None  # urllib then raises the 3xx as an HTTPError, handled below


_OPENER = urllib.request.build_opener(_NoRedirects())


def _host(url: str) -> str:
    """host[:port] of a URL, without user info or path (either may hold a secret)."""
    try:
        parts = urllib.parse.urlsplit(url)
        return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "an unnamed host"
    except ValueError:
        return "an unreadable address"


def request(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    data: Optional[bytes] = None,
    headers: Optional[dict[str, str]] = None,
    timeout: float = 10.0,
    cancel: Optional[threading.Event] = None,
) -> Response:
    """Send one request; a 2xx response is returned, anything else (a redirect included) raises HttpError.
    The whole exchange, connecting and reading included, ends within `timeout` seconds, or as soon as
    `cancel` is set."""
    headers = {"User-Agent": "gptlab", "Accept": "application/json", **(headers or {})}
    if json_body is not None:
        data = json.dumps(json_body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    # The exchange runs on a daemon thread the caller waits for with a deadline: a socket timeout bounds
    # each read, not the sum of them, and name resolution has no timeout at all. A thread still waiting at
    # the deadline is abandoned; its own reads stop at the socket timeout or the deadline check below.
    outcome: dict[str, Any] = {}
    deadline = time.monotonic() + timeout

    def exchange() -> None:
        try:
            outcome["response"] = _exchange(req, timeout, deadline)
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=exchange, name="gptlab-http", daemon=True)
    worker.start()
    # waited for in short slices, so that `cancel` (set by a SIGTERM or Ctrl-C handler) ends the wait at once
    while worker.is_alive() and time.monotonic() < deadline and not (cancel is not None and cancel.is_set()):
        worker.join(min(CANCEL_CHECK, max(0.0, deadline - time.monotonic())))
    if cancel is not None and cancel.is_set() and not outcome:
        raise HttpError("cancelled")
    if worker.is_alive() or not outcome:
        raise HttpError(f"no complete answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["response"]


def _exchange(req: urllib.request.Request, timeout: float, deadline: float) -> Response:
    try:
        with _OPENER.open(req, timeout=timeout) as response:
            chunks = []
            while True:
                if time.monotonic() > deadline:
                    raise HttpError(f"no complete answer within {timeout:g} s")
                chunk = response.read1(READ_CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
            return Response(response.status, _parse(b"".join(chunks)))
    except urllib.error.HTTPError as error:
        if 300 <= error.code < 400:
            where = _host(urllib.parse.urljoin(req.full_url, error.headers.get("Location") or ""))
            raise HttpError(
                f"HTTP {error.code}: redirected to {where}; not followed (the request carries credentials)",
                error.code,
            ) from None
        try:
            raw = error.read() or b""
        except (OSError, http.client.HTTPException):
            raw = b""
        raise HttpError(
            f"HTTP {error.code}", error.code, _parse(raw), _retry_after(error.headers.get("Retry-After"))
        ) from None
    except (socket.timeout, TimeoutError):
        raise HttpError(f"no response within {timeout:g} s") from None
    except urllib.error.URLError as error:
        reason = error.reason  # a string reason may quote the address: never shown
        what = (
            "timed out"
            if isinstance(reason, (socket.timeout, TimeoutError))
            else type(reason).__name__
            if isinstance(reason, BaseException)
            else "bad address"
        )
        raise HttpError(f"connection failed ({what})") from None
    except (OSError, http.client.HTTPException) as error:  # a connection dropped mid-response
        raise HttpError(f"connection failed ({type(error).__name__})") from None
