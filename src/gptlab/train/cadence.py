"""On which steps the loop checkpoints and validates: the one rule, read by the loop as it runs and by the
dry-run plan (`gptlab train --dry-run`) to count them beforehand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Cadence:
    total_steps: int
    checkpoint_interval: Optional[int]  # train.json's; None: only the last step
    validation_interval: Optional[int]  # None: validate at every checkpoint

    @property
    def last_step(self) -> int:
        return self.total_steps - 1

    def checkpoint_by_interval(self, step: int) -> bool:
        """Steps 0, interval, 2 x interval, ..., as the users' harness checkpoints (step % interval == 0)."""
        return self.checkpoint_interval is not None and step % self.checkpoint_interval == 0

    def validation_by_interval(self, step: int) -> bool:
        return self.validation_interval is not None and step % self.validation_interval == 0

    def checkpoint_due(self, step: int, stop: bool = False) -> bool:
        """By the interval, at the last step, and when a signal asks the run to stop."""
        return step == self.last_step or stop or self.checkpoint_by_interval(step)

    def validation_due(self, step: int, checkpoint_due: bool) -> bool:
        """By its own interval and at the last step; without an interval, at every checkpoint."""
        return (
            self.validation_by_interval(step)
            or step == self.last_step
            or (self.validation_interval is None and checkpoint_due)
        )

    def _candidates(self) -> set[int]:
        """Every step either rule can fall on, so counting looks at these and not at every step."""
        steps = {self.last_step}
        for interval in (self.checkpoint_interval, self.validation_interval):
            if interval is not None:
                steps.update(range(0, self.total_steps, interval))
        return steps

    def checkpoints(self) -> int:
        """How many checkpoints a run that is not stopped writes."""
        return sum(self.checkpoint_due(step) for step in self._candidates())

    def validations(self) -> int:
        """How many validations it computes (when it has a validation split)."""
        return sum(self.validation_due(step, self.checkpoint_due(step)) for step in self._candidates())
