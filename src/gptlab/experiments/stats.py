"""Seed-noise statistics without SciPy: Student's t distribution from the regularized incomplete beta function.

A group is the runs that differ only by seed. It is described by its mean, standard deviation, range and
a 95% confidence interval of the mean (Student t). A group is judged against the baseline group with
Welch's t-test (two-sided, unequal variances) when both have several seeds; a single run is judged by
its distance from the baseline mean in baseline standard deviations, beyond noise when it falls outside
the 95% prediction interval of one more baseline seed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8  # for "how many seeds would be needed": the usual 80% chance of detecting a real difference
MIN_SEEDS = 3  # two seeds give a standard deviation with one degree of freedom: t(0.975, 1) = 12.7, useless


def _continued_fraction(a: float, b: float, x: float) -> float:
    """1 + d1/(1 + d2/(1 + ...)) of the incomplete beta function, by the modified Lentz method."""
    tiny, eps = 1e-300, 1e-15
    f, c, d = 1.0, 1.0, 0.0
    for j in range(1, 10_000):
        m = j // 2
        if j % 2:  # odd terms
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(c * d - 1.0) < eps:
            return f
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    # The continued fraction converges fast only below the mean of the beta distribution; use symmetry above it.
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularized_incomplete_beta(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    return math.exp(log_front) / a / _continued_fraction(a, b, x)


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (possibly fractional) degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection (the CDF is monotone; 200 halvings are far below float noise)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, high * 2
    for _ in range(200):
        middle = (low + high) / 2
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * high:
            break
    return (low + high) / 2


@dataclass(frozen=True)
class GroupStats:
    """One group's values: sd and the confidence interval need two or more."""

    n: int
    mean: float
    sd: Optional[float]
    minimum: float
    maximum: float
    ci_low: Optional[float]
    ci_high: Optional[float]


def describe(values: Sequence[float]) -> GroupStats:
    if not values:
        raise ValueError("a group needs at least one value")
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return GroupStats(n, mean, None, values[0], values[0], None, None)
    sd = statistics.stdev(values)
    half_width = student_t_quantile(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n)
    return GroupStats(n, mean, sd, min(values), max(values), mean - half_width, mean + half_width)


@dataclass(frozen=True)
class WelchResult:
    t: float
    df: float
    p: float


def welch_test(first: Sequence[float], second: Sequence[float]) -> WelchResult:
    """Two-sided Welch's t-test of equal means; each side needs two or more values."""
    a, b = describe(first), describe(second)
    if a.sd is None or b.sd is None:
        raise ValueError("Welch's t-test needs at least two values on each side")
    va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
    difference = a.mean - b.mean
    if va + vb == 0:  # both groups are exactly repeatable: any difference is real, none is none
        return WelchResult(0.0 if difference == 0 else math.copysign(math.inf, difference), float(a.n + b.n - 2), 1.0 if difference == 0 else 0.0)
    t = difference / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    return WelchResult(t, df, 2 * (1 - student_t_cdf(abs(t), df)))


@dataclass(frozen=True)
class Verdict:
    """Whether a group's difference from the baseline is more than seed noise, and by which test."""

    label: str  # "beyond noise", "within noise" or "cannot judge"
    test: str  # the test and its statistic, in words
    p: Optional[float] = None
    sd_distance: Optional[float] = None
    seeds_needed: Optional[int] = None


def seeds_needed(difference: float, noise_sd: Optional[float]) -> int:
    """Seeds per side for a two-sided 5% test to detect `difference` with 80% power, given a seed-noise SD."""
    if noise_sd is None or noise_sd == 0 or difference == 0:
        return MIN_SEEDS
    normal = statistics.NormalDist()
    z = normal.inv_cdf(1 - ALPHA / 2) + normal.inv_cdf(POWER)
    return max(MIN_SEEDS, math.ceil(2 * (z * noise_sd / abs(difference)) ** 2))


def judge(baseline: Sequence[float], group: Sequence[float], noise_sd_hint: Optional[float] = None) -> Verdict:
    """Compare a group's values with the baseline's. `noise_sd_hint` (a seed SD seen elsewhere) only sizes
    the advice when the baseline has a single seed."""
    base = describe(baseline)
    ours = describe(group)
    if base.n < 2:
        needed = seeds_needed(ours.mean - base.mean, ours.sd if ours.sd is not None else noise_sd_hint)
        return Verdict("cannot judge", f"noise cannot be judged: 1 baseline seed; {needed} seeds needed", seeds_needed=needed)
    if ours.n >= 2:
        result = welch_test(group, baseline)
        label = "beyond noise" if result.p < ALPHA else "within noise"
        return Verdict(label, f"Welch's t-test: t = {result.t:.2f}, df = {result.df:.1f}, p = {format_p(result.p)}", p=result.p)
    return _single_run_verdict(base, ours.mean)


def _single_run_verdict(base: GroupStats, value: float) -> Verdict:
    difference = value - base.mean
    # One more baseline seed falls within mean ± t * sd * sqrt(1 + 1/n) 95% of the time.
    allowed = student_t_quantile(1 - ALPHA / 2, base.n - 1) * math.sqrt(1 + 1 / base.n)
    distance = difference / base.sd if base.sd else (0.0 if difference == 0 else math.copysign(math.inf, difference))
    label = "beyond noise" if abs(distance) > allowed else "within noise"
    return Verdict(label, f"single run: {distance:+.1f} baseline SDs (noise: within ±{allowed:.1f})", sd_distance=distance)


def format_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
