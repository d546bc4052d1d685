"""Telegram: a bot writes to one chat through the Bot API's sendMessage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from gptlab.notify.http import HttpError, request
from gptlab.notify.message import ChannelKind, Message, Variable

TELEGRAM_TEXT_LIMIT = 4096  # characters Telegram accepts in one message


@dataclass(frozen=True)
class Telegram:
    token: str
    chat_id: str
    base_url: str = "https://api.telegram.org"
    name: str = "telegram"

    def send(self, message: Message, timeout: float) -> None:
        # the Bot API's sendMessage: the token is part of the address, the chat and text are the body
        response = request(
            "POST",
            f"{self.base_url.rstrip('/')}/bot{self.token}/sendMessage",
            timeout=timeout,
            json_body={
                "chat_id": self.chat_id,
                "text": message.text[:TELEGRAM_TEXT_LIMIT],
                "disable_web_page_preview": True,
            },
        )
        # the Bot API answers {"ok": true, ...} for a message it took; anything else (a proxy's 200 page,
        # an empty body) is not a delivery
        if not (isinstance(response.body, dict) and response.body.get("ok") is True):
            raise HttpError(f"HTTP {response.status} without the Bot API's ok: true", response.status)

    def secrets(self) -> tuple[str, ...]:
        return (self.token,)


def _from_environment(env: Mapping[str, str]) -> Telegram:
    return Telegram(
        env["TELEGRAM_BOT_TOKEN"], env["TELEGRAM_CHAT_ID"], env.get("TELEGRAM_API_BASE_URL") or Telegram.base_url
    )


KIND = ChannelKind(
    "telegram",
    1,
    (
        Variable("TELEGRAM_BOT_TOKEN", True, "the bot's token from @BotFather"),
        Variable("TELEGRAM_CHAT_ID", True, "the chat the bot writes to"),
        Variable("TELEGRAM_API_BASE_URL", False, "default https://api.telegram.org", is_address=True),
    ),
    _from_environment,
)
