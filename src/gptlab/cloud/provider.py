"""What the capacity watcher needs from a GPU cloud: is the type free, what is running, launch one, how is it.

A provider is any object with these four methods; Lambda's (`gptlab.cloud.lambda_cloud`) is the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol


@dataclass(frozen=True)
class Offer:
    """One instance type as the provider sells it now."""

    instance_type: str
    description: str
    price_per_hour: Optional[float]  # US dollars, from the provider's own answer
    regions_with_capacity: tuple[str, ...]


@dataclass(frozen=True)
class Instance:
    id: str
    name: Optional[str]
    instance_type: str
    region: str
    status: str  # the provider's word for it
    ip: Optional[str]
    ready: bool  # up and reachable
    gone: bool  # terminated, terminating or preempted: it will never become ready


class ProviderError(Exception):
    """A provider call that failed.

    `retry`: a later try may succeed (rate limit, server error, no response); `no_response`: the request may
    have been carried out although no answer came back (what makes a launch ambiguous); `retry_after`: the
    wait the provider asked for, in seconds.
    """

    def __init__(
        self,
        line: str,
        *,
        retry: bool,
        no_response: bool = False,
        retry_after: Optional[float] = None,
        no_capacity: bool = False,
        status: Optional[int] = None,
    ):
        super().__init__(line)
        self.retry = retry
        self.no_response = no_response
        self.retry_after = retry_after
        self.no_capacity = no_capacity
        self.status = status


class Provider(Protocol):
    name: str

    def offer(self, instance_type: str) -> Offer:
        """Price and the regions where `instance_type` can be launched now; UserError for an unknown type."""

    def instances(self) -> list[Instance]:
        """Every instance of the account that is not terminated."""

    def instance(self, instance_id: str) -> Instance: ...

    def launch(self, instance_type: str, region: str, ssh_key: str, filesystem: Optional[str], name: str) -> str:
        """Launch one instance and return its id."""
