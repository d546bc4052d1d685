"""`gptlab cloud watch` against a local stand-in of Lambda Cloud's API v1 and of Telegram's Bot API.

The real services cannot be reached from here: every request goes to servers this test starts on
127.0.0.1 (tests/standins.py), reached through LAMBDA_API_BASE_URL and TELEGRAM_API_BASE_URL.
"""

import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli
from standins import LambdaStandIn, TelegramStandIn

API_KEY = "secret_lambda_key_f00dfeed"
BOT_TOKEN = "123456:planted-telegram-token-c0ffee"
TYPE = "gpu_8x_a100_80gb_sxm4"


def watch(lambda_api, *args, telegram=None, timeout=60):
    env = {"LAMBDA_API_KEY": API_KEY, "LAMBDA_API_BASE_URL": lambda_api.url}
    if telegram is not None:
        env.update(TELEGRAM_BOT_TOKEN=BOT_TOKEN, TELEGRAM_CHAT_ID="42", TELEGRAM_API_BASE_URL=telegram.url)
    result = run_cli("cloud", "watch", "--instance-type", TYPE, "--interval", "0.05", *args, env=env, timeout=timeout)
    assert API_KEY not in result.stdout + result.stderr and BOT_TOKEN not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_launches_once_when_capacity_appears_through_rate_limits_and_server_errors():
    with LambdaStandIn(API_KEY, capacity_after=5, boot_polls=2) as api, TelegramStandIn(BOT_TOKEN) as telegram:
        api.type_faults = {2: 429, 3: 500, 4: 429}
        result = watch(
            api, "--launch", "--ssh-key", "laptop", "--filesystem", "shared", "--notify", "telegram", telegram=telegram
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(api.launches) == 1
        launch = api.launches[0]
        assert (
            launch["instance_type_name"],
            launch["region_name"],
            launch["ssh_key_names"],
            launch["file_system_names"],
            launch["quantity"],
        ) == (TYPE, "us-east-1", ["laptop"], ["shared"], 1)
        out = result.stdout
        assert "HTTP 429" in out and "HTTP 500" in out  # each fault is one quiet line, then waited out
        assert "in us-east-1 at $14.32/h; launching one" in out  # the price before the launch
        assert "Instance i-0001" in out and "is up at 198.51.100.7" in out
        assert api.type_polls == 5  # no poll after the launch; the booting instance is read by id
        texts = telegram.texts()
        assert any("Launched instance i-0001" in text for text in texts) and any(
            "198.51.100.7" in text for text in texts
        )


@pytest.mark.parametrize("lost_answer", [None, 502], ids=["dropped-connection", "gateway-error"])
def test_a_launch_whose_answer_is_lost_is_found_again_not_repeated(lost_answer):
    with LambdaStandIn(API_KEY, capacity_after=2) as api:
        api.lose_launch_answers, api.lost_launch_status = 1, lost_answer
        result = watch(api, "--launch", "--ssh-key", "laptop", "--name", "nightly-a100")
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(api.launches) == 1 and api.launches[0]["name"] == "nightly-a100"
        assert "The launch got no clear answer" in result.stdout
        assert "Found instance i-0001" in result.stdout and "is up at 198.51.100.7" in result.stdout


def test_a_lost_launch_is_looked_for_a_while_before_launching_again():
    with LambdaStandIn(API_KEY, capacity_after=1) as api:
        api.lose_launch_answers, api.listing_lag = 1, 2  # the new instance shows in the third listing only
        result = watch(api, "--launch", "--ssh-key", "laptop", "--name", "nightly-a100", "--interval", "0.5")
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(api.launches) == 1 and result.stdout.count("no instance named nightly-a100 yet") == 2
        assert "Found instance i-0001" in result.stdout and "is up at 198.51.100.7" in result.stdout


def test_an_instance_already_running_under_the_watchers_name_is_not_launched_again():
    with LambdaStandIn(API_KEY, capacity_after=1) as api:
        api.instances["i-0077"] = {"name": "nightly-a100", "region": "us-east-1", "type": TYPE}
        result = watch(api, "--launch", "--ssh-key", "laptop", "--name", "nightly-a100")
        assert result.returncode == 0 and api.launches == []
        assert "Instance i-0077 named nightly-a100 is already booting; not launching another" in result.stdout


def test_without_launch_it_only_reports_capacity_in_an_allowed_region():
    with LambdaStandIn(API_KEY, capacity_after=1, capacity_region="us-south-1") as api:
        result = watch(api, "--region", "us-east-1", "--max-hours", str(0.4 / 3600))
        assert result.returncode == 1 and api.launches == []  # free only elsewhere: not taken, gave up
        assert "no capacity (free elsewhere: us-south-1)" in result.stdout and "within" in result.stdout
    with LambdaStandIn(API_KEY, capacity_after=3) as api:
        result = watch(api)
        assert result.returncode == 0 and api.launches == [] and api.type_polls == 3
        assert f"Capacity: {TYPE} (8x A100 (80 GB SXM4)) in us-east-1 at $14.32/h" in result.stdout


def test_gives_up_after_max_hours():
    with LambdaStandIn(API_KEY, capacity_after=10**9) as api:
        started = time.monotonic()
        result = watch(api, "--launch", "--ssh-key", "k", "--max-hours", str(1 / 3600))
        assert result.returncode == 1 and "No capacity for gpu_8x_a100_80gb_sxm4 within" in result.stdout
        assert 1 <= time.monotonic() - started < 30 and api.type_polls > 5 and api.launches == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_sigterm_and_ctrl_c(signum):
    with LambdaStandIn(API_KEY, capacity_after=10**9) as api:
        process = subprocess.Popen(
            [sys.executable, "-m", "gptlab", "cloud", "watch", "--instance-type", TYPE, "--interval", "0.05"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**__import__("os").environ, "LAMBDA_API_KEY": API_KEY, "LAMBDA_API_BASE_URL": api.url},
        )
        deadline = time.monotonic() + 30
        while api.type_polls < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 128 + signum, stdout + stderr
        assert f"Stopped by {signal.Signals(signum).name} after" in stdout and "Traceback" not in stderr


def test_bad_input_is_one_line_and_exit_2():
    with LambdaStandIn("another key") as api:
        result = watch(api, "--launch", "--ssh-key", "k")
        assert (
            result.returncode == 2
            and "HTTP 401 global/invalid-api-key" in result.stderr
            and "check LAMBDA_API_KEY" in result.stderr
        )
    with LambdaStandIn(API_KEY) as api:
        result = run_cli(
            "cloud",
            "watch",
            "--instance-type",
            "gpu_9x_imaginary",
            env={"LAMBDA_API_KEY": API_KEY, "LAMBDA_API_BASE_URL": api.url},
        )
        assert (
            result.returncode == 2
            and "no instance type 'gpu_9x_imaginary'; its types are: gpu_1x_a10, gpu_8x_a100_80gb_sxm4" in result.stderr
        )
    result = run_cli("cloud", "watch", "--instance-type", TYPE, "--launch", env={"LAMBDA_API_KEY": API_KEY})
    assert result.returncode == 2 and "--launch needs --ssh-key" in result.stderr
    result = run_cli("cloud", "watch", "--instance-type", TYPE, env={"LAMBDA_API_KEY": ""})
    assert result.returncode == 2 and "LAMBDA_API_KEY is not set" in result.stderr


class WrongShapeStandIn(LambdaStandIn):
    """Answers instance-types with `data` of the wrong shape (a type mapped to a list), as a proxy or a
    changed API might."""

    def handle(self, handler, method, path, body) -> None:
        if path == "/api/v1/instance-types":
            with self.lock:
                self.type_polls += 1
            return self.reply(handler, 200, {"data": {TYPE: ["not", "an", "object"]}})
        super().handle(handler, method, path, body)


def test_an_answer_of_the_wrong_shape_is_a_failed_poll_not_a_traceback():
    with WrongShapeStandIn(API_KEY) as api:
        result = watch(api, "--max-hours", str(1 / 3600))
        assert result.returncode == 1 and "lambda instance-types: an answer of an unexpected shape" in result.stdout
        assert api.type_polls > 1  # waited out and polled again, as a 5xx is


class InfiniteRetryAfterStandIn(LambdaStandIn):
    """Rate-limits every poll with `Retry-After: inf`, which float() reads but no wait can honour."""

    def handle(self, handler, method, path, body) -> None:
        if path == "/api/v1/instance-types":
            with self.lock:
                self.type_polls += 1
            return self.reply(handler, 429, {"error": {"code": "global/too-many-requests"}}, {"Retry-After": "inf"})
        super().handle(handler, method, path, body)


def test_retry_after_inf_is_capped_and_max_hours_still_ends_it():
    # `inf` waits MAX_RETRY_AFTER (300 s, tests/test_credentials.py), which --max-hours of one second cuts short
    with InfiniteRetryAfterStandIn(API_KEY) as api:
        started = time.monotonic()
        result = watch(api, "--max-hours", str(1 / 3600))
        assert result.returncode == 1 and "HTTP 429" in result.stdout, result.stdout + result.stderr
        assert time.monotonic() - started < 30 and api.type_polls >= 1
