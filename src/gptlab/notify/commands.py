"""Click commands: `gptlab notify test`."""

from __future__ import annotations

import socket
import sys

import click

from gptlab.errors import UserError
from gptlab.notify.channels import CHANNEL_NAMES, NOTIFY_HELP


@click.group()
def notify() -> None:
    """Notifications about runs and machines: Telegram, a webhook or an ntfy topic, secrets from the environment.

    A run sends them when train.json has, for example, "notify": {"channels": ["telegram"], "every_checkpoints": 5}.
    """


@notify.command(name="test")
@click.option(
    "--notify",
    "names",
    multiple=True,
    type=click.Choice(CHANNEL_NAMES),
    help=NOTIFY_HELP + " Default: every configured channel.",
)
def send_test(names: tuple[str, ...]) -> None:
    """Send one test message through each channel and say whether it arrived (exit 1 if one did not)."""
    from gptlab.notify.channels import channels_from_environment, configured_channel_names
    from gptlab.notify.message import Message
    from gptlab.notify.notifier import Notifier

    names = names or tuple(configured_channel_names())
    if not names:
        raise UserError(
            "notify test: no channel is configured; set TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID, GPTLAB_WEBHOOK_URL, "
            "or NTFY_TOPIC in the environment, or name one with --notify"
        )
    notifier = Notifier(channels_from_environment(names, source="notify test"), log=lambda line: None, attempts=2)
    notifier.send(
        Message("test", f"gptlab notify test from {socket.gethostname()}", "If you read this, gptlab can reach you.")
    )
    notifier.close()
    for channel in notifier.channels:
        failure = notifier.failures.get(channel.name)
        sent = (channel.name, "test") in notifier.delivered
        click.echo(f"{channel.name}: " + ("sent" if sent else f"not sent ({failure or 'no answer in time'})"))
    if len(notifier.delivered) < len(notifier.channels):
        sys.exit(1)
