"""Parameter types shared by the commands: every numeric option is checked when it is parsed, so a bad
value is one usage line (exit 2) naming the option and the allowed range, before anything is read or run."""

from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """A float in a range that is also finite: click's FloatRange lets NaN through (every comparison with
    NaN is false), and an infinite temperature or time budget is never meant."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number.", param, ctx)
        return number


# torch.manual_seed accepts this range; a seed outside it would fail deep inside torch.
SEED = click.IntRange(min=0, max=2**63 - 1)
POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
FRACTION = FiniteFloatRange(min=0.0, max=1.0, max_open=True)
