"""The capacity watcher: poll a provider until the wanted instance type is free, then launch one (or only tell).

Meant to be left running for days. Each poll prints one quiet line; each change of state one clear line
(and a notification). Errors and rate limits are waited out with exponential backoff and jitter, honouring
the provider's Retry-After. A launch whose answer was lost may still have happened, so before any launch
the account's running instances are searched for this watcher's instance name, and after a lost answer
no new launch is tried for three polling intervals while that search goes on: at most one launch.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from gptlab.cloud.provider import Instance, Provider, ProviderError
from gptlab.notify.message import Message
from gptlab.notify.notifier import Notifier

MAX_BACKOFF = 900.0  # seconds: the longest wait after repeated errors (unless the interval is longer)
BOOT_POLL = 15.0  # seconds between status checks of a booting instance (at most the interval)
LOST_LAUNCH_INTERVALS = 3  # polling intervals a lost launch is searched for before another launch may be tried


@dataclass(frozen=True)
class WatchPlan:
    instance_type: str
    regions: tuple[str, ...] = ()  # empty: any region
    launch: bool = False
    ssh_key: Optional[str] = None
    filesystem: Optional[str] = None
    interval: float = 60.0
    max_hours: Optional[float] = None
    name: str = "gptlab-watch"  # the launched instance's name, how a lost launch is found again


@dataclass
class WatchResult:
    outcome: str  # "up", "capacity", "gave-up", "stopped", "lost-instance"
    polls: int
    instance: Optional[Instance] = None
    region: Optional[str] = None
    launches: int = 0


@dataclass
class Watcher:
    provider: Provider
    plan: WatchPlan
    notifier: Notifier
    echo: Callable[[str], None] = print
    stop: threading.Event = field(default_factory=threading.Event)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic

    def run(self) -> WatchResult:
        plan = self.plan
        started = self.clock()
        deadline = started + plan.max_hours * 3600 if plan.max_hours is not None else None
        result = WatchResult("stopped", polls=0)
        launched_id: Optional[str] = None
        lost_launch_at: Optional[float] = None
        errors_in_a_row = 0
        if hasattr(self.provider, "deadline"):  # reads end at --max-hours too, however slowly a server answers
            self.provider.deadline = deadline
        self._state(
            f"Watching {self.provider.name} for {plan.instance_type} in {', '.join(plan.regions) or 'any region'} every {plan.interval:g} s"
            + (f", for at most {plan.max_hours:g} h" if plan.max_hours is not None else "")
            + (
                f"; will launch one named {plan.name} with ssh key {plan.ssh_key}"
                if plan.launch
                else "; will only notify"
            )
        )
        while not self.stop.is_set():
            if launched_id is not None and hasattr(self.provider, "deadline"):
                self.provider.deadline = None  # --max-hours ends the watching, not the wait for a launched instance
            if deadline is not None and self.clock() >= deadline and launched_id is None:
                result.outcome = "gave-up"
                self._state(
                    f"No capacity for {plan.instance_type} within {plan.max_hours:g} h ({result.polls} polls); stopped",
                    "gave-up",
                )
                return result
            wait = plan.interval
            try:
                if launched_id is not None:
                    instance = self.provider.instance(launched_id)
                    if instance.ready:
                        result.outcome, result.instance = "up", instance
                        self._state(
                            f"Instance {instance.id} ({instance.instance_type}, {instance.region}) is up at {instance.ip}: "
                            f"ssh ubuntu@{instance.ip}",
                            "up",
                        )
                        return result
                    if instance.gone:
                        result.outcome, result.instance = "lost-instance", instance
                        self._state(f"Instance {instance.id} is {instance.status} before it came up; stopped", "failed")
                        return result
                    self._quiet(f"instance {instance.id}: {instance.status}")
                    wait = min(plan.interval, BOOT_POLL)
                elif lost_launch_at is not None:
                    mine = self._own_instance()
                    if mine is not None:
                        launched_id, result.region = mine.id, mine.region
                        self._state(
                            f"Found instance {mine.id} ({mine.status}) from the launch whose answer was lost; waiting for it to boot",
                            "launched",
                        )
                        continue
                    if self.clock() - lost_launch_at < LOST_LAUNCH_INTERVALS * plan.interval:
                        self._quiet(f"no instance named {plan.name} yet; looking again before any new launch")
                    else:
                        lost_launch_at = None
                        self._state(
                            f"No instance named {plan.name} appeared: the lost launch did not happen; watching again"
                        )
                        continue
                else:
                    offer = self.provider.offer(plan.instance_type)
                    result.polls += 1
                    regions = [
                        region for region in offer.regions_with_capacity if not plan.regions or region in plan.regions
                    ]
                    if not regions:
                        elsewhere = (
                            f" (free elsewhere: {', '.join(offer.regions_with_capacity)})"
                            if offer.regions_with_capacity
                            else ""
                        )
                        self._quiet(f"poll {result.polls}: no capacity{elsewhere}")
                    else:
                        region = regions[0]
                        price = (
                            f"${offer.price_per_hour:.2f}/h" if offer.price_per_hour is not None else "price unknown"
                        )
                        result.region = region
                        if not plan.launch:
                            result.outcome = "capacity"
                            self._state(
                                f"Capacity: {plan.instance_type} ({offer.description}) in {', '.join(regions)} at {price}",
                                "capacity",
                            )
                            return result
                        mine = self._own_instance()  # a launch of ours the provider carried out but never confirmed
                        if mine is not None:
                            launched_id, result.region = mine.id, mine.region
                            self._state(
                                f"Instance {mine.id} named {plan.name} is already {mine.status}; not launching another",
                                "launched",
                            )
                            continue
                        self._state(
                            f"Capacity: {plan.instance_type} ({offer.description}) in {region} at {price}; launching one"
                        )
                        try:
                            result.launches += 1
                            launched_id = self.provider.launch(
                                plan.instance_type, region, plan.ssh_key or "", plan.filesystem, plan.name
                            )
                        except ProviderError as error:
                            if (
                                error.no_response or (error.status or 0) >= 500
                            ):  # it may have been carried out all the same
                                lost_launch_at = self.clock()
                                self._state(
                                    f"The launch got no clear answer ({error}); looking for instance {plan.name} before trying again"
                                )
                                continue
                            if error.no_capacity:
                                self._state(f"Capacity went before the launch ({error}); watching again")
                            else:
                                raise
                        else:
                            self._state(
                                f"Launched instance {launched_id} ({plan.instance_type}, {region}, {price}); waiting for it to boot "
                                "(it is billed from now on)",
                                "launched",
                            )
                            wait = min(plan.interval, BOOT_POLL)
                errors_in_a_row = 0
            except ProviderError as error:
                errors_in_a_row += 1
                wait = self._backoff(errors_in_a_row, error.retry_after)
                self._quiet(f"{error}; trying again in {wait:.1f} s")
            if deadline is not None and launched_id is None:
                wait = min(wait, max(0.0, deadline - self.clock()))  # no wait (a Retry-After included) runs past it
            self.stop.wait(wait)
        if launched_id is not None:
            self._state(
                f"Stopped while instance {launched_id} was booting: it is running and billed; "
                "terminate it in the provider's dashboard if it is not wanted",
                "stopped",
            )
            result.outcome = "stopped"
        return result

    def _own_instance(self) -> Optional[Instance]:
        return next((item for item in self.provider.instances() if item.name == self.plan.name and not item.gone), None)

    def _backoff(self, errors_in_a_row: int, retry_after: Optional[float]) -> float:
        """Doubling from the interval, capped, times a jitter in [0.5, 1.5) so many watchers do not retry in step."""
        ceiling = max(self.plan.interval, MAX_BACKOFF)
        delay = min(ceiling, self.plan.interval * 2 ** (errors_in_a_row - 1)) * self.rng.uniform(0.5, 1.5)
        return max(delay, retry_after or 0.0)

    def _state(self, line: str, event: Optional[str] = None) -> None:
        self.echo(f"{_now()} {line}")
        if event is not None:
            self.notifier.send(Message(event, f"gptlab cloud watch: {line}"))

    def _quiet(self, line: str) -> None:
        self.echo(f"{_now()}   {line}")


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
