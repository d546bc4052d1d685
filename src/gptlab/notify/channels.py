"""Where messages go: Telegram, a webhook, an ntfy topic. Each is configured from environment variables
only, since every one of them holds a secret (a bot token, a webhook address, a topic anyone could read)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional, Protocol, Sequence

from gptlab.errors import UserError
from gptlab.notify.http import HttpError, request

CHANNEL_NAMES = ("telegram", "webhook", "ntfy")
TELEGRAM_TEXT_LIMIT = 4096  # characters Telegram accepts in one message


@dataclass(frozen=True)
class Message:
    """One notification: `event` is a short machine name (started, checkpoint, finished, failed, stopped, capacity, ...)."""

    event: str
    title: str
    body: str = ""

    @property
    def text(self) -> str:
        return f"{self.title}\n{self.body}".rstrip()


class Channel(Protocol):
    name: str

    def send(self, message: Message, timeout: float) -> None:
        """Deliver one message or raise HttpError."""

    def secrets(self) -> tuple[str, ...]:
        """Values that must never be printed or written: removed from any error line about this channel."""


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


# What each channel reads from the environment: (variable, required, what it is)
ENVIRONMENT: dict[str, list[tuple[str, bool, str]]] = {
    "telegram": [
        ("TELEGRAM_BOT_TOKEN", True, "the bot's token from @BotFather"),
        ("TELEGRAM_CHAT_ID", True, "the chat the bot writes to"),
        ("TELEGRAM_API_BASE_URL", False, "default https://api.telegram.org"),
    ],
    "webhook": [("GPTLAB_WEBHOOK_URL", True, "receives a POST of {event, title, text} as JSON")],
    "ntfy": [
        ("NTFY_TOPIC", True, "the topic to publish to"),
        ("NTFY_BASE_URL", False, "default https://ntfy.sh"),
        ("NTFY_TOKEN", False, "an access token, for a protected topic"),
    ],
}


def channels_from_environment(
    names: Sequence[str], environ: Optional[Mapping[str, str]] = None, source: str = "notify"
) -> list[Channel]:
    """The named channels, configured from the environment; one UserError lists every missing variable."""
    env = os.environ if environ is None else environ
    problems, channels = [], []
    for name in dict.fromkeys(names):
        if name not in ENVIRONMENT:
            problems.append(f"{source}: '{name}' is not a notification channel; use one of {', '.join(CHANNEL_NAMES)}")
            continue
        missing = [variable for variable, required, _ in ENVIRONMENT[name] if required and not env.get(variable)]
        if missing:
            problems.append(
                f"{source}: {name} needs {' and '.join(missing)} set in the environment (secrets are read from there only)"
            )
            continue
        not_web = [
            variable
            for variable in ("GPTLAB_WEBHOOK_URL", "TELEGRAM_API_BASE_URL", "NTFY_BASE_URL")
            if variable in {v for v, _, _ in ENVIRONMENT[name]}
            and env.get(variable)
            and not env[variable].startswith(("http://", "https://"))
        ]
        if not_web:
            problems.append(
                f"{source}: {' and '.join(not_web)} must start with https:// or http:// (the value is not shown: it may hold a secret)"
            )
            continue
        if name == "telegram":
            channels.append(
                Telegram(
                    env["TELEGRAM_BOT_TOKEN"],
                    env["TELEGRAM_CHAT_ID"],
                    env.get("TELEGRAM_API_BASE_URL") or Telegram.base_url,
                )
            )
        elif name == "webhook":
            channels.append(Webhook(env["GPTLAB_WEBHOOK_URL"]))
        else:
            channels.append(
                Ntfy(env["NTFY_TOPIC"], env.get("NTFY_BASE_URL") or Ntfy.base_url, env.get("NTFY_TOKEN") or None)
            )
    if problems:
        raise UserError(*problems)
    return channels


def configured_channel_names(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Channels whose required variables are all set: what `gptlab notify test` uses when none is named."""
    env = os.environ if environ is None else environ
    return [
        name for name, variables in ENVIRONMENT.items() if all(env.get(v) for v, required, _ in variables if required)
    ]


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
