"""Where messages go: one module per channel in this folder (Telegram, a webhook, an ntfy topic), each
defining its `KIND`; this registry finds them, so adding a channel is its module and its test. Each is
configured from environment variables only, since every one of them holds a secret (a bot token, a webhook
address, a topic anyone could read)."""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Mapping, Optional, Sequence

from gptlab.errors import UserError
from gptlab.notify.message import Channel, ChannelKind


def _discover() -> dict[str, ChannelKind]:
    kinds = [importlib.import_module(f"{__name__}.{module.name}").KIND for module in pkgutil.iter_modules(__path__)]
    return {kind.name: kind for kind in sorted(kinds, key=lambda kind: kind.position)}


CHANNELS = _discover()
CHANNEL_NAMES = tuple(CHANNELS)


def _or_list(items: Sequence[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


# The --notify help of `gptlab notify test` and `gptlab cloud watch`.
NOTIFY_HELP = (
    "Channel to send to (repeatable): "
    + _or_list([f"{kind.name} ({', '.join(kind.required)})" for kind in CHANNELS.values()])
    + "; secrets are read from those environment variables only."
)


def channels_from_environment(
    names: Sequence[str], environ: Optional[Mapping[str, str]] = None, source: str = "notify"
) -> list[Channel]:
    """The named channels, configured from the environment; one UserError lists every missing variable."""
    env = os.environ if environ is None else environ
    problems, channels = [], []
    for name in dict.fromkeys(names):
        kind = CHANNELS.get(name)
        if kind is None:
            problems.append(f"{source}: '{name}' is not a notification channel; use one of {', '.join(CHANNEL_NAMES)}")
            continue
        missing = [variable for variable in kind.required if not env.get(variable)]
        if missing:
            problems.append(
                f"{source}: {name} needs {' and '.join(missing)} set in the environment (secrets are read from there only)"
            )
            continue
        not_web = [
            variable.name
            for variable in kind.variables
            if variable.is_address
            and env.get(variable.name)
            and not env[variable.name].startswith(("http://", "https://"))
        ]
        if not_web:
            problems.append(
                f"{source}: {' and '.join(not_web)} must start with https:// or http:// (the value is not shown: it may hold a secret)"
            )
            continue
        channels.append(kind.build(env))
    if problems:
        raise UserError(*problems)
    return channels


def configured_channel_names(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Channels whose required variables are all set: what `gptlab notify test` uses when none is named."""
    env = os.environ if environ is None else environ
    return [name for name, kind in CHANNELS.items() if all(env.get(variable) for variable in kind.required)]
