"""What a notification is (`Message`), what every channel can do (`Channel`), and how a channel module
describes its kind to the registry (`ChannelKind`, gptlab.notify.channels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence


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
class Variable:
    """An environment variable a channel reads: every channel holds a secret, so none is read from a file."""

    name: str
    required: bool
    what: str
    is_address: bool = False  # must start with https:// or http://


@dataclass(frozen=True)
class ChannelKind:
    """A channel as the registry knows it: each module of gptlab/notify/channels/ defines one, as `KIND`."""

    name: str  # what train.json's notify.channels and --notify say
    position: int  # where it stands in help texts and error lines (telegram 1, webhook 2, ntfy 3, ...)
    variables: tuple[Variable, ...]
    build: Callable[[Mapping[str, str]], Channel]  # from an environment holding every required variable

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(variable.name for variable in self.variables if variable.required)


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
