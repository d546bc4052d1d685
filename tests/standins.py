"""Local stand-ins for the services gptlab talks to but a test cannot reach: Telegram's Bot API and Lambda
Cloud's API v1. Each is a real HTTP server on 127.0.0.1 (a free port), started and stopped by the test,
serving only the few endpoints gptlab uses, with the faults the tests need switched on by attributes."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional


class StandIn:
    """A threaded HTTP server; subclasses answer in `handle(handler, method, path, body)`."""

    def __init__(self) -> None:
        outer = self
        self.release = threading.Event()  # set at stop: frees handlers told to hang
        self.requests: list[tuple[str, str, dict, Any]] = []  # (method, path, headers, parsed body)
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode()
                with outer.lock:
                    outer.requests.append((method, self.path, dict(self.headers), body))
                outer.handle(self, method, self.path, body)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "StandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def handle(self, handler: BaseHTTPRequestHandler, method: str, path: str, body: Any) -> None:
        raise NotImplementedError

    @staticmethod
    def reply(handler: BaseHTTPRequestHandler, status: int, data: Any, headers: Optional[dict] = None) -> None:
        payload = json.dumps(data).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(payload)

    def hang(self) -> None:
        self.release.wait(600)


class TelegramStandIn(StandIn):
    """POST /bot<token>/sendMessage. `mode`: 'ok', 'hang' (never answers) or an HTTP status to fail with."""

    def __init__(self, token: str, mode: Any = "ok") -> None:
        super().__init__()
        self.token = token
        self.mode = mode
        self.messages: list[dict] = []

    def handle(self, handler, method, path, body) -> None:
        if self.mode == "hang":
            return self.hang()
        if isinstance(self.mode, int):
            return self.reply(
                handler, self.mode, {"ok": False, "error_code": self.mode, "description": "stand-in failure"}
            )
        if method != "POST" or path != f"/bot{self.token}/sendMessage":
            return self.reply(handler, 404, {"ok": False, "error_code": 404, "description": "Not Found"})
        with self.lock:
            self.messages.append(body)
        self.reply(handler, 200, {"ok": True, "result": {"message_id": len(self.messages), "text": body["text"]}})

    def texts(self) -> list[str]:
        with self.lock:
            return [message["text"] for message in self.messages]


class LambdaStandIn(StandIn):
    """Lambda Cloud API v1: instance-types, instances, instances/{id}, instance-operations/launch.

    The instance type gets capacity in `capacity_region` from poll number `capacity_after` on. Faults:
    `type_faults` maps a poll number to an HTTP status (429 comes with Retry-After: 0); `lose_launch_answers`
    launches that are carried out but whose connection is then dropped without an answer (or answered with
    `lost_launch_status`, a 5xx from a gateway, say); an instance
    is 'booting' for `boot_polls` status reads, then 'active' with an IP.
    """

    def __init__(
        self,
        api_key: str,
        instance_type: str = "gpu_8x_a100_80gb_sxm4",
        capacity_after: int = 1,
        capacity_region: str = "us-east-1",
        price_cents: int = 1432,
        boot_polls: int = 1,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.instance_type = instance_type
        self.capacity_after = capacity_after
        self.capacity_region = capacity_region
        self.price_cents = price_cents
        self.boot_polls = boot_polls
        self.type_faults: dict[int, int] = {}
        self.lose_launch_answers = 0
        self.lost_launch_status: Optional[int] = None  # None: the connection is dropped; else this status is answered
        self.listing_lag = 0  # instance listings that do not show a new instance yet
        self.type_polls = 0
        self.launches: list[dict] = []
        self.instances: dict[str, dict] = {}
        self.status_reads: dict[str, int] = {}

    def handle(self, handler, method, path, body) -> None:
        if handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self.reply(
                handler,
                401,
                {"error": {"code": "global/invalid-api-key", "message": "API key was invalid, expired, or deleted."}},
            )
        if method == "GET" and path == "/api/v1/instance-types":
            with self.lock:
                self.type_polls += 1
                poll = self.type_polls
            if poll in self.type_faults:
                status = self.type_faults[poll]
                code = "global/too-many-requests" if status == 429 else "global/internal-error"
                return self.reply(
                    handler,
                    status,
                    {"error": {"code": code, "message": "stand-in fault"}},
                    {"Retry-After": "0"} if status == 429 else None,
                )
            regions = (
                [{"name": self.capacity_region, "description": "Virginia, USA"}] if poll >= self.capacity_after else []
            )
            return self.reply(
                handler,
                200,
                {
                    "data": {
                        self.instance_type: {
                            "instance_type": {
                                "name": self.instance_type,
                                "description": "8x A100 (80 GB SXM4)",
                                "price_cents_per_hour": self.price_cents,
                                "specs": {"gpus": 8},
                            },
                            "regions_with_capacity_available": regions,
                        },
                        "gpu_1x_a10": {
                            "instance_type": {
                                "name": "gpu_1x_a10",
                                "description": "1x A10 (24 GB PCIe)",
                                "price_cents_per_hour": 75,
                            },
                            "regions_with_capacity_available": [
                                {"name": "us-west-1", "description": "California, USA"}
                            ],
                        },
                    }
                },
            )
        if method == "GET" and path == "/api/v1/instances":
            with self.lock:
                lagging = bool(self.launches) and self.listing_lag > 0
                self.listing_lag -= int(lagging)
                return self.reply(handler, 200, {"data": [] if lagging else [self._view(i) for i in self.instances]})
        if method == "GET" and path.startswith("/api/v1/instances/"):
            instance_id = path.rsplit("/", 1)[1]
            if instance_id not in self.instances:
                return self.reply(
                    handler,
                    404,
                    {
                        "error": {
                            "code": "global/object-does-not-exist",
                            "message": "Specified instance does not exist.",
                        }
                    },
                )
            with self.lock:
                self.status_reads[instance_id] = self.status_reads.get(instance_id, 0) + 1
                return self.reply(handler, 200, {"data": self._view(instance_id)})
        if method == "POST" and path == "/api/v1/instance-operations/launch":
            if body.get("region_name") != self.capacity_region or self.type_polls < self.capacity_after:
                return self.reply(
                    handler,
                    400,
                    {
                        "error": {
                            "code": "instance-operations/launch/insufficient-capacity",
                            "message": "Not enough capacity",
                        }
                    },
                )
            with self.lock:
                instance_id = f"i-{len(self.launches) + 1:04d}"
                self.launches.append(body)
                self.instances[instance_id] = {
                    "name": body.get("name"),
                    "region": body["region_name"],
                    "type": body["instance_type_name"],
                }
                lose = self.lose_launch_answers > 0
                self.lose_launch_answers -= int(lose)
            if lose and self.lost_launch_status is not None:
                return self.reply(
                    handler,
                    self.lost_launch_status,
                    {"error": {"code": "global/internal-error", "message": "stand-in fault"}},
                )
            if lose:
                handler.close_connection = True  # carried out, but the answer never arrives
                return None
            return self.reply(handler, 200, {"data": {"instance_ids": [instance_id]}})
        return self.reply(handler, 404, {"error": {"code": "global/object-does-not-exist", "message": path}})

    def _view(self, instance_id: str) -> dict:
        record = self.instances[instance_id]
        up = self.status_reads.get(instance_id, 0) > self.boot_polls
        return {
            "id": instance_id,
            "name": record["name"],
            "status": "active" if up else "booting",
            "ip": "198.51.100.7" if up else None,
            "region": {"name": record["region"], "description": "Virginia, USA"},
            "instance_type": {
                "name": record["type"],
                "description": "8x A100 (80 GB SXM4)",
                "price_cents_per_hour": self.price_cents,
            },
        }


class Recorder(StandIn):
    """Accepts any request with a 200 and keeps it (a webhook, an ntfy server, a redirect's target)."""

    def handle(self, handler, method, path, body) -> None:
        self.reply(handler, 200, {"id": "x"})


class Redirector(StandIn):
    """Answers every request with `status` and a Location on another origin (`target`, a different port of
    127.0.0.1 is a different host:port to an HTTP client): the credentials must never reach `target`."""

    def __init__(self, target: str, status: int = 307) -> None:
        super().__init__()
        self.target = target.rstrip("/")
        self.status = status

    def handle(self, handler, method, path, body) -> None:
        handler.send_response(self.status)
        handler.send_header("Location", self.target + path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


class Trickler(StandIn):
    """Sends a 200 status line, then one header byte every `every` seconds, never finishing: a per-read
    socket timeout never fires against it, only a deadline for the whole answer does."""

    def __init__(self, every: float = 0.2) -> None:
        super().__init__()
        self.every = every

    def handle(self, handler, method, path, body) -> None:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        handler.wfile.flush()
        while not self.release.wait(self.every):
            try:
                handler.wfile.write(b"X")
                handler.wfile.flush()
            except OSError:
                return


# --- processes: what a test that kills a parent looks at (Linux /proc) --------------------------------------


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(child) for child in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def is_running(pid: int) -> bool:
    """False once the process has ended, a zombie included (only its parent has not collected it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status
