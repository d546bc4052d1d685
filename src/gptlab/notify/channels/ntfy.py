"""ntfy: publish to a topic on ntfy.sh or a server of one's own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from gptlab.notify.http import request
from gptlab.notify.message import ChannelKind, Message, Variable


@dataclass(frozen=True)
class Ntfy:
    topic: str
    base_url: str = "https://ntfy.sh"
    token: Optional[str] = None
    name: str = "ntfy"

    def send(self, message: Message, timeout: float) -> None:
        # ntfy's JSON publishing (POST to the server root) carries a UTF-8 title, which a header could not
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request(
            "POST",
            self.base_url.rstrip("/") + "/",
            timeout=timeout,
            headers=headers,
            json_body={
                "topic": self.topic,
                "title": message.title,
                "message": message.body or message.title,
                "tags": [message.event],
            },
        )

    def secrets(self) -> tuple[str, ...]:
        return tuple(value for value in (self.topic, self.token) if value)


def _from_environment(env: Mapping[str, str]) -> Ntfy:
    return Ntfy(env["NTFY_TOPIC"], env.get("NTFY_BASE_URL") or Ntfy.base_url, env.get("NTFY_TOKEN") or None)


KIND = ChannelKind(
    "ntfy",
    3,
    (
        Variable("NTFY_TOPIC", True, "the topic to publish to"),
        Variable("NTFY_BASE_URL", False, "default https://ntfy.sh", is_address=True),
        Variable("NTFY_TOKEN", False, "an access token, for a protected topic"),
    ),
    _from_environment,
)
