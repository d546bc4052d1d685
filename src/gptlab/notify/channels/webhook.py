"""A webhook: a POST of {event, title, text} as JSON to an address that is itself the secret."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from gptlab.notify.http import request
from gptlab.notify.message import ChannelKind, Message, Variable


@dataclass(frozen=True)
class Webhook:
    url: str
    name: str = "webhook"

    def send(self, message: Message, timeout: float) -> None:
        request(
            "POST",
            self.url,
            timeout=timeout,
            json_body={"event": message.event, "title": message.title, "text": message.text},
        )

    def secrets(self) -> tuple[str, ...]:
        return (self.url,)


def _from_environment(env: Mapping[str, str]) -> Webhook:
    return Webhook(env["GPTLAB_WEBHOOK_URL"])


KIND = ChannelKind(
    "webhook",
    2,
    (Variable("GPTLAB_WEBHOOK_URL", True, "receives a POST of {event, title, text} as JSON", is_address=True),),
    _from_environment,
)
