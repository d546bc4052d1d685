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


# One seed range for every option and file: config.SEED_MAX, spelled here too since this ground-floor module
# imports nothing of gptlab (tests/test_seeds.py ties the two). Within it no two seeds alias in Python,
# NumPy or torch; outside it torch would wrap or fail deep inside.
SEED = click.IntRange(min=0, max=2**32 - 1)
POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
FRACTION = FiniteFloatRange(min=0.0, max=1.0, max_open=True)
