"""No credential leaves for another host, and a message counts as sent only on the endpoint's own "yes".

Telegram, ntfy, a webhook and Lambda Cloud cannot be reached from here: every request goes to stand-ins
on 127.0.0.1 (tests/standins.py). A redirect points at a second stand-in on another port, which is another
origin (host:port) to an HTTP client; that second server must never see a request, let alone a token.
"""

import time

import pytest
from standins import Recorder, Redirector, StandIn, Trickler

from gptlab.cloud.lambda_cloud import LambdaCloud
from gptlab.cloud.provider import ProviderError
from gptlab.errors import UserError
from gptlab.notify.channels.ntfy import Ntfy
from gptlab.notify.channels.telegram import Telegram
from gptlab.notify.channels.webhook import Webhook
from gptlab.notify.http import MAX_RETRY_AFTER, HttpError, request
from gptlab.notify.message import Message
from gptlab.notify.notifier import Notifier

TOKEN = "987654:planted-bot-token-5ecret"
NTFY_TOKEN = "tk_planted_ntfy_token"
API_KEY = "secret_lambda_key_f00dfeed"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_no_channel_follows_a_redirect_to_another_host(status):
    with Recorder() as elsewhere, Redirector(elsewhere.url, status) as endpoint:
        lines = []
        notifier = Notifier(
            [
                Telegram(TOKEN, "1", endpoint.url),
                Webhook(endpoint.url + "/hook/s3cret"),
                Ntfy("my-topic", endpoint.url, token=NTFY_TOKEN),
            ],
            log=lines.append,
            first_backoff=0.01,
        )
        notifier.send(Message("finished", "run finished"))
        assert notifier.close() is False
        assert elsewhere.requests == []  # not the token, not the topic, not the webhook's secret path
        assert len(endpoint.requests) == 3  # one try each: a redirect will not get better by retrying
        assert notifier.delivered == [] and set(notifier.failures) == {"telegram", "webhook", "ntfy"}
        port = elsewhere.url.rsplit(":", 1)[1]
        for line in lines:
            assert f"HTTP {status}: redirected to 127.0.0.1:{port}; not followed" in line
            assert TOKEN not in line and NTFY_TOKEN not in line and "s3cret" not in line


def test_the_cloud_client_does_not_follow_a_redirect_with_its_key():
    with Recorder() as elsewhere, Redirector(elsewhere.url, 302) as endpoint:
        with pytest.raises(UserError, match=r"lambda instance-types: HTTP 302: redirected to 127\.0\.0\.1:\d+"):
            LambdaCloud(API_KEY, endpoint.url).offer("gpu_1x_a10")
        assert elsewhere.requests == []


def test_telegram_counts_as_sent_only_on_ok_true():
    class SaysNo(StandIn):
        def handle(self, handler, method, path, body):
            self.reply(handler, 200, {"ok": False, "description": "a proxy's page"})

    with SaysNo() as endpoint:
        lines = []
        notifier = Notifier([Telegram(TOKEN, "1", endpoint.url)], log=lines.append, first_backoff=0.01)
        notifier.send(Message("finished", "done"))
        assert notifier.close() is False and notifier.delivered == []
        assert "without the Bot API's ok: true" in lines[0] and TOKEN not in lines[0]


def test_a_trickling_server_cannot_hold_a_request_past_its_deadline():
    with Trickler(every=0.1) as server:
        started = time.monotonic()
        with pytest.raises(HttpError, match="no complete answer within 1 s"):
            request("GET", server.url, timeout=1.0)
        assert time.monotonic() - started < 3  # each byte came well within a socket timeout


@pytest.mark.parametrize(
    ("header", "expected"),
    [("inf", MAX_RETRY_AFTER), ("1e300", MAX_RETRY_AFTER), ("nan", None), ("soon", None), ("-5", 0.0), ("2", 2.0)],
)
def test_retry_after_is_capped_and_garbage_is_ignored(header, expected):
    class Busy(StandIn):
        def handle(self, handler, method, path, body):
            self.reply(handler, 429, {"error": {"code": "global/too-many-requests"}}, {"Retry-After": header})

    with Busy() as server:
        with pytest.raises(ProviderError) as raised:
            LambdaCloud(API_KEY, server.url).instances()
        assert raised.value.retry and raised.value.retry_after == expected


def test_import_reads_nothing_outside_the_model_folder(tmp_path):
    from safetensors.torch import save_file

    from gptlab.export.hf import read_hf_weights

    outside = tmp_path / "outside"
    outside.mkdir()
    save_file({"wte.weight": __import__("torch").zeros(2, 2)}, str(outside / "x.safetensors"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "link.safetensors").symlink_to(outside / "x.safetensors")
    for name, refusal in [
        ("../outside/x.safetensors", "no '..', no absolute path"),
        (str(outside / "x.safetensors"), "no '..', no absolute path"),
        ("link.safetensors", "is a link to outside"),
    ]:
        (model / "model.safetensors.index.json").write_text(f'{{"weight_map": {{"wte.weight": "{name}"}}}}')
        with pytest.raises(UserError, match=refusal):
            read_hf_weights(model)


def test_a_pickle_bin_is_refused_without_advising_weights_only_false(tmp_path):
    import torch

    from gptlab.export.hf import read_hf_weights

    torch.save(
        {"wte.weight": torch.zeros(2), "extra": Recorder}, tmp_path / "pytorch_model.bin"
    )  # a class: not a tensor
    with pytest.raises(UserError) as raised:
        read_hf_weights(tmp_path)
    (line,) = raised.value.lines
    assert "does not load them" in line and "weights_only" not in line
