"""Lambda Cloud through its public REST API v1 (`/api/v1/...`, bearer API key).

Endpoints used: `GET instance-types` (price and `regions_with_capacity_available` per type),
`GET instances`, `GET instances/{id}`, `POST instance-operations/launch`. Answers are
`{"data": ...}` or `{"error": {"code", "message", "suggestion"}}`. Lambda allows about one request a
second and one launch every 12 seconds.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional

from gptlab.cloud.provider import Instance, Offer, ProviderError
from gptlab.errors import UserError
from gptlab.notify.http import HttpError, request
from gptlab.notify.message import redact

DEFAULT_BASE_URL = "https://cloud.lambda.ai"
REQUEST_TIMEOUT = 30.0
LAUNCH_TIMEOUT = 90.0  # a launch answers once the instance is allocated
GONE_STATUSES = {"terminated", "terminating", "preempted"}


@contextmanager
def _expected_shape(path: str) -> Iterator[None]:
    """An answer whose JSON is not of the documented shape is a failed request, as a 5xx is: the watch
    retries it and says so, never a traceback."""
    try:
        yield
    except (TypeError, KeyError, AttributeError, ValueError, IndexError):
        raise ProviderError(f"lambda {path}: an answer of an unexpected shape", retry=True) from None


class LambdaCloud:
    name = "lambda"

    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, cancel: Optional[threading.Event] = None):
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        # set by a stop request (SIGTERM, Ctrl-C): a read in flight is abandoned at once. Never a launch's,
        # whose answer says whether an instance is now billed.
        self.cancel = cancel
        # a time.monotonic() after which no read may go on (`cloud watch --max-hours`); None: no deadline
        self.deadline: Optional[float] = None

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "LambdaCloud":
        env = os.environ if environ is None else environ
        if not env.get("LAMBDA_API_KEY"):
            raise UserError(
                "cloud: LAMBDA_API_KEY is not set; create a key at https://cloud.lambda.ai/api-keys and export it "
                "(the key is read from the environment only)"
            )
        return cls(env["LAMBDA_API_KEY"], env.get("LAMBDA_API_BASE_URL") or DEFAULT_BASE_URL)

    # --- the provider interface -----------------------------------------------------------------
    def offer(self, instance_type: str) -> Offer:
        types = self._call("GET", "instance-types")
        if not isinstance(types, dict) or instance_type not in types:
            known = ", ".join(sorted(types)) if isinstance(types, dict) else "none"
            raise UserError(f"cloud: lambda has no instance type '{instance_type}'; its types are: {known}")
        with _expected_shape("instance-types"):
            entry = types[instance_type]
            about = entry.get("instance_type", {})
            cents = about.get("price_cents_per_hour")
            return Offer(
                instance_type,
                str(about.get("description", instance_type)),
                cents / 100 if isinstance(cents, (int, float)) else None,
                tuple(str(region["name"]) for region in entry.get("regions_with_capacity_available", [])),
            )

    def instances(self) -> list[Instance]:
        data = self._call("GET", "instances") or []
        with _expected_shape("instances"):
            return [self._instance(item) for item in data]

    def instance(self, instance_id: str) -> Instance:
        data = self._call("GET", f"instances/{instance_id}")
        with _expected_shape(f"instances/{instance_id}"):
            return self._instance(data)

    def launch(self, instance_type: str, region: str, ssh_key: str, filesystem: Optional[str], name: str) -> str:
        data = self._call(
            "POST",
            "instance-operations/launch",
            timeout=LAUNCH_TIMEOUT,
            body={
                "region_name": region,
                "instance_type_name": instance_type,
                "ssh_key_names": [ssh_key],
                "file_system_names": [filesystem] if filesystem else [],
                "quantity": 1,
                "name": name,
            },
        )
        try:
            return str(data["instance_ids"][0])
        except (TypeError, KeyError, IndexError):
            raise ProviderError(
                "lambda instance-operations/launch: an answer without an instance id", retry=True, no_response=True
            ) from None

    # --- plumbing -----------------------------------------------------------------------------
    @staticmethod
    def _instance(item: dict[str, Any]) -> Instance:
        status = item.get("status", "unknown")
        return Instance(
            id=item["id"],
            name=item.get("name"),
            instance_type=(item.get("instance_type") or {}).get("name", ""),
            region=(item.get("region") or {}).get("name", ""),
            status=status,
            ip=item.get("ip"),
            ready=status == "active" and bool(item.get("ip")),
            gone=status in GONE_STATUSES,
        )

    def _call(self, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT) -> Any:
        if method == "GET" and self.deadline is not None:
            timeout = max(0.1, min(timeout, self.deadline - time.monotonic()))
        try:
            response = request(
                method,
                f"{self.base_url}/api/v1/{path}",
                json_body=body,
                timeout=timeout,
                headers={"Authorization": f"Bearer {self._api_key}"},
                cancel=self.cancel if method == "GET" else None,
            )
        except HttpError as error:
            raise self._provider_error(path, error) from None
        if not isinstance(response.body, dict) or "data" not in response.body:
            raise ProviderError(f"lambda {path}: an answer without 'data'", retry=True)
        return response.body["data"]

    def _provider_error(self, path: str, error: HttpError) -> Exception:
        detail = error.body.get("error", {}) if isinstance(error.body, dict) else {}
        code = detail.get("code", "") if isinstance(detail, dict) else ""
        said = (
            " ".join(str(detail.get(key, "")) for key in ("message", "suggestion")).strip()
            if isinstance(detail, dict)
            else ""
        )
        line = redact(
            f"lambda {path}: {error}" + (f" {code}" if code else "") + (f": {said}" if said else ""), [self._api_key]
        )
        status = error.status
        if status in (401, 403):
            return UserError(f"{line} (check LAMBDA_API_KEY)")
        if status is None or status in (408, 429) or status >= 500:
            return ProviderError(
                line, retry=True, no_response=status is None, retry_after=error.retry_after, status=status
            )
        if "insufficient-capacity" in code:
            return ProviderError(line, retry=True, no_capacity=True, status=status)
        return UserError(line)  # a parameter the provider refuses (an unknown ssh key, say) will not pass by waiting
