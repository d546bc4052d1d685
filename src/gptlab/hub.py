"""Bounded waits for every request huggingface_hub makes (upload, dataset download, dataset info).

huggingface_hub's own HTTP client waits without limit (`timeout=None`) for API calls: an endpoint that
accepts the connection and never answers held `gptlab upload` silent for as long as one cared to wait.
Its documented hook for the client (`set_client_factory` from 1.0 on, `configure_http_backend` before)
gets a client with connect and read timeouts here. A read timeout bounds each wait for the next bytes,
so a stalled server fails in HUB_READ_TIMEOUT seconds while a slow, working upload goes on.
"""

from __future__ import annotations

from typing import Any

HUB_CONNECT_TIMEOUT = 10.0  # seconds to open a connection
HUB_READ_TIMEOUT = 120.0  # seconds without a byte, in either direction; the Hub may think a while after a large file


def bound_hub_waits() -> None:
    """Install the timeouts in huggingface_hub's shared client (idempotent; the client is made again on next use)."""
    from huggingface_hub import utils

    if hasattr(utils, "set_client_factory"):  # huggingface_hub >= 1.0: an httpx-style client
        from huggingface_hub.utils import _http

        def bounded_client() -> Any:
            client = _http.default_client_factory()
            client.timeout = type(client.timeout)(
                connect=HUB_CONNECT_TIMEOUT, read=HUB_READ_TIMEOUT, write=HUB_READ_TIMEOUT, pool=HUB_CONNECT_TIMEOUT
            )
            return client

        utils.set_client_factory(bounded_client)
    elif hasattr(utils, "configure_http_backend"):  # older: a requests.Session per thread
        import requests

        class BoundedSession(requests.Session):
            def request(self, *args: Any, **kwargs: Any) -> Any:
                if kwargs.get("timeout") is None:
                    kwargs["timeout"] = (HUB_CONNECT_TIMEOUT, HUB_READ_TIMEOUT)
                return super().request(*args, **kwargs)

        utils.configure_http_backend(BoundedSession)
