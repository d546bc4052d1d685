"""Every network wait has a bound. Lambda Cloud and the Hub cannot be reached from here: each test talks to
stand-ins on 127.0.0.1 (tests/standins.py) that stall, trickle bytes or ask for an endless Retry-After."""

import os
import signal
import subprocess
import sys
import time

import pytest
from standins import LambdaStandIn, StandIn, Trickler

API_KEY = "secret_lambda_key_f00dfeed"
TYPE = "gpu_8x_a100_80gb_sxm4"


class EndlessRetryAfter(LambdaStandIn):
    def handle(self, handler, method, path, body):
        self.type_polls += 1
        self.reply(handler, 429, {"error": {"code": "global/too-many-requests"}}, {"Retry-After": "inf"})


class TricklingLambda(Trickler):
    @property
    def type_polls(self):
        return len(self.requests)


def _watch(api, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "gptlab", "cloud", "watch", "--instance-type", TYPE, "--interval", "0.05", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LAMBDA_API_KEY": API_KEY, "LAMBDA_API_BASE_URL": api.url},
    )


@pytest.mark.parametrize("server", [EndlessRetryAfter, TricklingLambda], ids=["retry-after-inf", "trickle"])
def test_max_hours_is_a_hard_deadline(server):
    with server(API_KEY) if server is EndlessRetryAfter else server(every=0.2) as api:
        started = time.monotonic()
        watch = _watch(api, "--max-hours", str(3 / 3600))
        stdout, stderr = watch.communicate(timeout=60)
        assert watch.returncode == 1 and "No capacity for gpu_8x_a100_80gb_sxm4 within" in stdout, stdout + stderr
        assert time.monotonic() - started < 20 and "Traceback" not in stderr
        assert API_KEY not in stdout + stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_ends_a_request_in_flight_within_seconds(signum):
    with Trickler(every=0.2) as api:
        watch = _watch(api)
        deadline = time.monotonic() + 60
        while not api.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the first request is now being trickled
        stopped = time.monotonic()
        watch.send_signal(signum)
        stdout, stderr = watch.communicate(timeout=60)
        assert time.monotonic() - stopped < 5, "a request of up to 30 s was waited out"
        assert watch.returncode == 128 + signum and "Traceback" not in stderr, stdout + stderr


def test_the_hub_client_gives_up_on_a_silent_endpoint(monkeypatch):
    """huggingface_hub waits without limit by default; a stand-in that accepts and never answers must fail
    within the read timeout (shortened here)."""
    import huggingface_hub.constants
    from huggingface_hub import HfApi

    import gptlab.hub as hub

    class Silent(StandIn):
        def handle(self, handler, method, path, body):
            self.hang()

    monkeypatch.setattr(hub, "HUB_READ_TIMEOUT", 1.0)
    # huggingface_hub reads HF_HUB_OFFLINE once, at its first import; test_export sets it for its own module, and
    # in a test process that imported the hub there first, every later request would stop as "offline"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with Silent() as server:
        hub.bound_hub_waits()
        started = time.monotonic()
        with pytest.raises(Exception) as raised:
            HfApi(endpoint=server.url, token="hf_planted").whoami()
        assert "timeout" in type(raised.value).__name__.lower() or "timed out" in str(raised.value).lower()
        assert time.monotonic() - started < 10
    monkeypatch.undo()
    hub.bound_hub_waits()  # the shared client again with the real timeouts


def test_hellaswag_download_has_a_deadline_against_a_trickle(tmp_path, monkeypatch):
    import gptlab.evaluate.hellaswag as hellaswag
    from gptlab.errors import UserError
    from gptlab.evaluate import downloads

    monkeypatch.setattr(downloads, "DOWNLOAD_DEADLINE", 1.0)

    class TrickleBody(StandIn):
        def handle(self, handler, method, path, body):
            handler.send_response(200)
            handler.send_header("Content-Length", "100000")
            handler.end_headers()
            while not self.release.wait(0.1):
                handler.wfile.write(b"{")
                handler.wfile.flush()

    with TrickleBody() as server:
        started = time.monotonic()
        with pytest.raises(UserError, match="cannot download"):
            hellaswag.download_validation_file(tmp_path / "h.jsonl", server.url + "/h.jsonl")
        assert time.monotonic() - started < 10 and not (tmp_path / "h.jsonl").exists()
