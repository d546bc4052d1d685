"""One HTTP request with a deadline, for the notifier and the cloud providers (standard library only).

Errors name the status or the network failure but never the address: a Telegram address holds the bot
token, and an error line may be printed or logged.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional


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
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date; the caller's own backoff applies
    # `inf` and `nan` parse as floats but are no wait at all: the caller's own backoff applies
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def request(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    data: Optional[bytes] = None,
    headers: Optional[dict[str, str]] = None,
    timeout: float = 10.0,
) -> Response:
    """Send one request; a 2xx response is returned, anything else raises HttpError."""
    headers = {"User-Agent": "gptlab", "Accept": "application/json", **(headers or {})}
    if json_body is not None:
        data = json.dumps(json_body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return Response(response.status, _parse(response.read()))
    except urllib.error.HTTPError as error:
        body = _parse(error.read() or b"")
        raise HttpError(
            f"HTTP {error.code}", error.code, body, _retry_after(error.headers.get("Retry-After"))
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
