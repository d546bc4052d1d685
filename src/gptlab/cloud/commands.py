"""Click commands: `gptlab cloud watch`."""

from __future__ import annotations

import secrets
import signal
import sys
import threading
from typing import Optional

import click

from gptlab.click_types import FiniteFloatRange
from gptlab.errors import UserError
from gptlab.notify.channels import CHANNEL_NAMES, NOTIFY_HELP

EXIT_CODES = {"up": 0, "capacity": 0, "gave-up": 1, "lost-instance": 1}


@click.group()
def cloud() -> None:
    """Get a GPU machine when one is free: watch a provider's capacity, launch, report the address."""


@cloud.command()
@click.option(
    "--provider",
    "provider_name",
    type=click.Choice(["lambda"]),
    default="lambda",
    show_default=True,
    help="The cloud; its API key comes from the environment (LAMBDA_API_KEY).",
)
@click.option("--instance-type", required=True, help="The provider's name of the machine, e.g. gpu_8x_a100_80gb_sxm4.")
@click.option("--region", "regions", multiple=True, help="A region to accept (repeatable); default: any region.")
@click.option(
    "--launch",
    is_flag=True,
    help="Launch one instance when there is capacity (needs --ssh-key); without it, only tell.",
)
@click.option("--ssh-key", default=None, help="Name of an SSH key already added to the provider account.")
@click.option("--filesystem", default=None, help="A persistent filesystem to attach (it must be in the launch region).")
@click.option(
    "--interval",
    type=FiniteFloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds between polls.",
)
@click.option(
    "--max-hours",
    type=FiniteFloatRange(min=0, min_open=True),
    default=None,
    help="Give up after this many hours (exit 1).",
)
@click.option("--notify", "notify_names", multiple=True, type=click.Choice(CHANNEL_NAMES), help=NOTIFY_HELP)
@click.option(
    "--name",
    "instance_name",
    default=None,
    help="Name for the launched instance, how a launch whose answer was lost is found again (default: gptlab-<random>).",
)
def watch(
    provider_name: str,
    instance_type: str,
    regions: tuple[str, ...],
    launch: bool,
    ssh_key: Optional[str],
    filesystem: Optional[str],
    interval: float,
    max_hours: Optional[float],
    notify_names: tuple[str, ...],
    instance_name: Optional[str],
) -> None:
    """Poll the provider until INSTANCE-TYPE has capacity in an allowed region, then launch one (--launch) or only
    report it, print the instance id and IP once it is up, and stop.

    Secrets come from the environment only: LAMBDA_API_KEY, and for --notify TELEGRAM_BOT_TOKEN and
    TELEGRAM_CHAT_ID, GPTLAB_WEBHOOK_URL or NTFY_TOPIC. Exit codes: 0 launched and up (or, without --launch,
    capacity found); 1 gave up after --max-hours, or the instance died while booting; 2 bad input or a
    refused request; 130 / 143 stopped by Ctrl-C / SIGTERM.
    """
    from gptlab.cloud.lambda_cloud import LambdaCloud
    from gptlab.cloud.watch import Watcher, WatchPlan
    from gptlab.notify.channels import channels_from_environment
    from gptlab.notify.message import Message
    from gptlab.notify.notifier import Notifier

    if launch and not ssh_key:
        raise UserError("cloud watch: --launch needs --ssh-key NAME (a key already added to your provider account)")
    provider = {"lambda": LambdaCloud}[provider_name].from_environment()
    notifier = Notifier(channels_from_environment(notify_names, source="cloud watch --notify"), log=click.echo)
    plan = WatchPlan(
        instance_type,
        tuple(regions),
        launch,
        ssh_key,
        filesystem,
        interval,
        max_hours,
        instance_name or f"gptlab-{secrets.token_hex(4)}",
    )
    stop = threading.Event()
    stopped_by: list[str] = []
    if hasattr(provider, "cancel"):
        provider.cancel = stop  # a stop ends a request in flight too, not only the wait between polls

    def request_stop(signum: int, frame: object) -> None:
        stopped_by.append(signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = Watcher(provider, plan, notifier, echo=click.echo, stop=stop).run()
    except UserError as error:
        notifier.send(Message("failed", "gptlab cloud watch stopped on an error", error.lines[0]))
        notifier.close()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopped_by:
        click.echo(
            f"Stopped by {stopped_by[0]} after {result.polls} polls"
            + ("." if result.launches == 0 else "; see above for the launched instance.")
        )
    notifier.close()
    if stopped_by:
        sys.exit(128 + int(getattr(signal, stopped_by[0])))
    sys.exit(EXIT_CODES[result.outcome])
