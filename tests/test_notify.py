"""Notifications: the background notifier, the channels, the training events, and that no secret leaks.

Telegram, the webhook and the ntfy server cannot be reached from here: each test starts a stand-in on
127.0.0.1 (tests/standins.py) and points the channel at it through its environment variable.
"""

import json
import os
import signal
import time
from typing import get_args

import pytest
from conftest import run_cli
from standins import StandIn, TelegramStandIn

import gptlab.notify.notifier as notifier_module
import gptlab.train.loop as loop
from gptlab.config import EvaluationSettings
from gptlab.errors import UserError
from gptlab.experiments.compare import evaluate_and_save
from gptlab.notify.channels import channels_from_environment
from gptlab.notify.channels.ntfy import Ntfy
from gptlab.notify.channels.telegram import Telegram
from gptlab.notify.channels.webhook import Webhook
from gptlab.notify.message import Message
from gptlab.notify.notifier import Notifier
from gptlab.notify.training import send_test_loss
from gptlab.train.loop import TrainingStopped, train_run

TOKEN = "987654:planted-bot-token-5ecret"


class Recorder(StandIn):
    """Accepts any POST and keeps its body (the webhook and the ntfy server)."""

    def handle(self, handler, method, path, body):
        self.reply(handler, 200, {"id": "x"})


def test_send_never_waits_for_a_hanging_endpoint_and_close_is_bounded():
    with TelegramStandIn(TOKEN, mode="hang") as telegram:
        lines = []
        notifier = Notifier(
            [Telegram(TOKEN, "1", telegram.url)],
            log=lines.append,
            timeout=0.3,
            attempts=2,
            first_backoff=0.05,
            close_wait=1.0,
        )
        started = time.monotonic()
        for number in range(200):  # more than the queue holds
            notifier.send(Message("checkpoint", f"message {number}"))
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        assert notifier.close() is False
        assert time.monotonic() - started < 2.0
        assert notifier.delivered == []
        assert len([line for line in lines if "via telegram failed" in line]) == 1  # reported once, not per message
        assert any("dropping new ones" in line for line in lines) and any("gave up waiting" in line for line in lines)
        assert all(TOKEN not in line for line in lines)


def test_server_errors_are_retried_with_backoff_and_a_refusal_is_not():
    class FailingTwice(TelegramStandIn):
        def handle(self, handler, method, path, body):
            self.mode = 500 if len(self.requests) <= 2 else "ok"
            super().handle(handler, method, path, body)

    with FailingTwice(TOKEN) as telegram:
        lines = []
        notifier = Notifier([Telegram(TOKEN, "1", telegram.url)], log=lines.append, first_backoff=0.01)
        notifier.send(Message("started", "hello"))
        assert notifier.close() is True and lines == []
        assert len(telegram.requests) == 3 and telegram.texts() == ["hello"]
    with TelegramStandIn(TOKEN, mode=401) as telegram:
        lines = []
        notifier = Notifier([Telegram(TOKEN, "1", telegram.url)], log=lines.append, first_backoff=0.01)
        notifier.send(Message("started", "hello"))
        notifier.send(Message("finished", "bye"))
        notifier.close()
        assert len(telegram.requests) == 2  # one try per message: a bad token does not get better
        assert lines == [
            "Notifications via telegram failed (HTTP 401, 'started' message); further failures of this channel are not reported"
        ]


def test_webhook_and_ntfy_bodies():
    with Recorder() as server:
        lines = []
        notifier = Notifier(
            [Webhook(server.url + "/hook/s3cret"), Ntfy("my-topic", server.url, token="tk")], log=lines.append
        )
        notifier.send(Message("finished", "run finished", "Final train loss: 3.1"))
        assert notifier.close() is True and lines == []
        (_, hook_path, _, hook), (_, ntfy_path, ntfy_headers, ntfy) = server.requests
        assert hook_path == "/hook/s3cret" and hook == {
            "event": "finished",
            "title": "run finished",
            "text": "run finished\nFinal train loss: 3.1",
        }
        assert ntfy_path == "/" and ntfy == {
            "topic": "my-topic",
            "title": "run finished",
            "message": "Final train loss: 3.1",
            "tags": ["finished"],
        }
        assert ntfy_headers["Authorization"] == "Bearer tk"


def test_channels_come_from_the_environment_and_missing_variables_are_named():
    with pytest.raises(UserError) as raised:
        channels_from_environment(["telegram", "ntfy", "pager"], environ={"TELEGRAM_BOT_TOKEN": TOKEN})
    assert raised.value.lines == [
        "notify: telegram needs TELEGRAM_CHAT_ID set in the environment (secrets are read from there only)",
        "notify: ntfy needs NTFY_TOPIC set in the environment (secrets are read from there only)",
        "notify: 'pager' is not a notification channel; use one of telegram, webhook, ntfy",
    ]
    with pytest.raises(UserError, match="GPTLAB_WEBHOOK_URL must start with https:// or http://") as raised:
        channels_from_environment(["webhook"], environ={"GPTLAB_WEBHOOK_URL": "hooks.example.com/T0/s3cret"})
    assert "s3cret" not in str(raised.value)
    (telegram,) = channels_from_environment(
        ["telegram"], environ={"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": "7"}
    )
    assert (telegram.token, telegram.chat_id, telegram.base_url) == (TOKEN, "7", "https://api.telegram.org")


def test_the_channels_are_the_modules_of_the_channel_folder():
    """A channel is its module (with a KIND) and its test: the registry, train.json's validation and the
    --notify choices all read the folder."""
    import pkgutil

    import gptlab.notify.channels as registry
    from gptlab.config import NotifySettings

    assert registry.CHANNEL_NAMES == ("telegram", "webhook", "ntfy")
    assert sorted(registry.CHANNEL_NAMES) == sorted(module.name for module in pkgutil.iter_modules(registry.__path__))
    assert get_args(get_args(NotifySettings.model_fields["channels"].annotation)[0]) == registry.CHANNEL_NAMES
    assert all(f"{name} (" in registry.NOTIFY_HELP for name in registry.CHANNEL_NAMES)


def test_notify_test_command_reports_each_channel():
    with TelegramStandIn(TOKEN) as telegram:
        env = {
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_CHAT_ID": "42",
            "TELEGRAM_API_BASE_URL": telegram.url,
            "GPTLAB_WEBHOOK_URL": "",
            "NTFY_TOPIC": "",
        }
        result = run_cli("notify", "test", env=env)
        assert result.returncode == 0 and result.stdout == "telegram: sent\n"
        assert telegram.messages[0]["chat_id"] == "42" and "gptlab notify test" in telegram.messages[0]["text"]
        telegram.mode = 403
        result = run_cli("notify", "test", "--notify", "telegram", env=env)
        assert result.returncode == 1 and result.stdout == "telegram: not sent (HTTP 403)\n"
        assert TOKEN not in result.stdout + result.stderr
    result = run_cli("notify", "test", env={"TELEGRAM_BOT_TOKEN": "", "GPTLAB_WEBHOOK_URL": "", "NTFY_TOPIC": ""})
    assert result.returncode == 2 and "no channel is configured" in result.stderr


# --- training events ------------------------------------------------------------------------------


@pytest.fixture
def telegram(monkeypatch):
    with TelegramStandIn(TOKEN) as server:
        monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
        monkeypatch.setenv("TELEGRAM_CHAT_ID", "42")
        monkeypatch.setenv("TELEGRAM_API_BASE_URL", server.url)
        yield server


def assert_no_secret_anywhere(run_dir, *outputs):
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for output in outputs:
        assert TOKEN not in output


NOTIFY = {
    "notify": {"channels": ["telegram"], "every_checkpoints": 2},
    "checkpoint_interval": 3,
    "cost_per_hour": 32.77,
}


@pytest.mark.slow
def test_a_run_reports_start_checkpoints_and_finish_and_no_secret_is_written(make_run, telegram, capfd):
    run = make_run(train=NOTIFY)
    train_run(run, show_progress=False)
    texts = telegram.texts()
    events = [text.splitlines()[0] for text in texts]
    assert len(texts) == 4, events  # checkpoints after steps 0, 3, 6, 9 and 11: the 2nd and 4th are sent
    assert events[0].startswith(f"gptlab {run} on ") and events[0].endswith(" started")
    assert (
        "12 steps to go of 12 (128 tokens each)" in texts[0]
        and "Estimate from the first " in texts[0]
        and "for the whole run at $32.77/h" in texts[0]
    )
    assert events[1].endswith("at step 4/12 (33%)") and events[2].endswith("at step 10/12 (83%)")
    assert all(part in texts[1] for part in ("train loss ", "val loss ", "tokens/s", "so far"))
    assert events[3].endswith(" finished") and "Tokens seen: 1,536" in texts[3] and "Final validation loss" in texts[3]
    assert json.loads((run / "resolved_config.json").read_text())["train"]["notify"] == NOTIFY["notify"]
    # the experiment runner's word after it evaluates: the test loss
    evaluation = evaluate_and_save(run, EvaluationSettings(batches=2, split="test"))
    send_test_loss(run, evaluation)
    assert telegram.texts()[-1].splitlines()[0].endswith(f"test loss {evaluation['loss']:.4f}")
    out, err = capfd.readouterr()
    assert_no_secret_anywhere(run, out, err)


@pytest.mark.slow
def test_a_failure_sends_the_error_and_the_last_log_lines(make_run, telegram, monkeypatch, capfd):
    real = loop.forward_backward

    def breaks_at_step_5(run, step):
        if step == 5:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")
        return real(run, step)

    monkeypatch.setattr(loop, "forward_backward", breaks_at_step_5)
    run = make_run(train=NOTIFY)
    with pytest.raises(RuntimeError):
        train_run(run, show_progress=False)
    failed = telegram.texts()[-1]
    assert failed.splitlines()[0].endswith(" failed")
    assert (
        "RuntimeError: CUDA error: an illegal memory access was encountered" in failed and "more detail" not in failed
    )
    assert "Last lines of train.log:" in failed and "Estimate from the first " in failed
    assert_no_secret_anywhere(run, *capfd.readouterr())


@pytest.mark.slow
def test_too_many_non_finite_steps_and_a_sigterm_are_reported(make_run, telegram, monkeypatch):
    run = make_run("diverging", train={**NOTIFY, "learning_rate": 1e30, "max_consecutive_skipped_steps": 3})
    with pytest.raises(TrainingStopped):
        train_run(run, show_progress=False)
    stopped = telegram.texts()[-1]
    assert (
        stopped.splitlines()[0].endswith("stopped: too many non-finite steps")
        and "3 steps in a row had non-finite gradients" in stopped
    )

    real = loop.forward_backward

    def preempted_at_step_4(run, step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # what a cloud's preemption sends
        return real(run, step)

    monkeypatch.setattr(loop, "forward_backward", preempted_at_step_4)
    run = make_run("preempted", train=NOTIFY)
    result = train_run(run, show_progress=False)
    assert result["interrupted"]
    stopped = telegram.texts()[-1]
    assert stopped.splitlines()[0].endswith(f"stopped by SIGTERM after step {result['stopped_after_step']}")
    assert f"Resume with: gptlab train {run} --resume latest" in stopped


@pytest.mark.slow
def test_a_hanging_notifier_does_not_hold_training_up(make_run, monkeypatch):
    monkeypatch.setattr(notifier_module, "REQUEST_TIMEOUT", 60.0)  # each message would block a minute if sent in line
    monkeypatch.setattr(notifier_module, "CLOSE_WAIT", 1.0)
    with TelegramStandIn(TOKEN, mode="hang") as hanging:
        monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
        monkeypatch.setenv("TELEGRAM_CHAT_ID", "42")
        monkeypatch.setenv("TELEGRAM_API_BASE_URL", hanging.url)
        run = make_run(
            train={
                **NOTIFY,
                "min_train_tokens": 4 * 32 * 6,
                "checkpoint_interval": 1,
                "notify": {"channels": ["telegram"], "every_checkpoints": 1},
            }
        )
        started = time.monotonic()
        summary = train_run(run, show_progress=False)
        assert (
            time.monotonic() - started < 40
        )  # the seven messages (started, 5 checkpoints, finished) in line would take 420 s
        assert summary["steps"] == 6 and len(hanging.requests) >= 1
    log = (run / "train.log").read_text()
    assert log.count("Notifications: gave up waiting 1 s") == 1


def test_missing_secrets_stop_the_run_before_it_trains(make_run, monkeypatch):
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    run = make_run(train={"notify": {"channels": ["telegram"]}})
    with pytest.raises(UserError, match="notify: telegram needs TELEGRAM_BOT_TOKEN"):
        train_run(run, show_progress=False)
    assert not (run / "checkpoints").exists()
    result = run_cli(
        "train", str(make_run("typo", train={"notify": {"channels": ["telegram"], "every": 2}})), "--no-progress"
    )
    assert (
        result.returncode == 2
        and "notify.every: unknown key; allowed keys are: channels, every_checkpoints" in result.stderr
        and "Traceback" not in result.stderr
    )
