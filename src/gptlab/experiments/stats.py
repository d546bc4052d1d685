"""Seed-noise statistics in plain Python: the numbers behind a verdict, and nothing about runs or tables.

Student's t distribution comes from the regularized incomplete beta function; the noncentral t (for
power) from one quadrature over the chi distribution. On top of them: a group's mean, SD and 95% interval;
the three tests that compare an intervention with the baseline, each giving the improvement (baseline
minus intervention, positive is better) with its 95% interval, Cohen's d and a two-sided p-value:

- Welch's t-test, when both sides have several seeds (unequal variances allowed);
- the paired t-test on per-seed differences, when the same seeds (and data order) exist on both sides;
- the single-run test: one run against n baseline seeds, t = improvement / (sd * sqrt(1 + 1/n)) with
  n - 1 degrees of freedom, the test behind the 95% prediction interval of one more baseline seed (it
  assumes the run has the baseline's spread);

Holm's step-down adjustment for several interventions judged against one baseline; and the exact power
of the two-sample t-test, from which the seeds per arm and the smallest detectable effect follow.

SciPy is used only by the tests, as the oracle every function here is checked against.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

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


def _student_t_density(t: float, df: float) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p: Newton's method on the CDF, kept inside a bracket that bisection shrinks
    whenever a Newton step would leave it (the CDF is monotone, so the bracket always holds the answer)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, high * 2
    t = (low + high) / 2
    for _ in range(200):
        error = student_t_cdf(t, df) - p
        if error == 0:
            return t
        if error < 0:
            low = t
        else:
            high = t
        step = error / _student_t_density(t, df)
        proposal = t - step
        t = proposal if low <= proposal <= high else (low + high) / 2
        if abs(step) <= 1e-14 * max(1.0, t) or high - low <= 1e-13 * high:
            break
    return t


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
class Difference:
    """An intervention against the baseline: improvement = baseline mean - intervention mean (positive is better)."""

    test: str  # "welch", "paired" or "single run"
    improvement: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float
    cohens_d: Optional[float]  # improvement / the pooled seed SD of both sides; None when that SD is 0


def _two_sided_p(t: float, df: float) -> float:
    return 2 * (1 - student_t_cdf(abs(t), df))


def _difference(test: str, improvement: float, standard_error: float, df: float, pooled_sd: float) -> Difference:
    """The interval and p-value of `improvement` from its standard error and degrees of freedom."""
    half_width = student_t_quantile(1 - ALPHA / 2, df) * standard_error
    if standard_error == 0:  # exactly repeatable: any difference is certain, none is none
        t, p = (0.0, 1.0) if improvement == 0 else (math.copysign(math.inf, improvement), 0.0)
    else:
        t = improvement / standard_error
        p = _two_sided_p(t, df)
    return Difference(
        test,
        improvement,
        improvement - half_width,
        improvement + half_width,
        t,
        df,
        p,
        improvement / pooled_sd if pooled_sd > 0 else None,
    )


def pooled_sd(baseline: Sequence[float], group: Sequence[float]) -> float:
    """sqrt(((n1 - 1) s1^2 + (n2 - 1) s2^2) / (n1 + n2 - 2)); a single run adds no degree of freedom."""
    squares = sum((x - statistics.fmean(side)) ** 2 for side in (baseline, group) for x in side)
    return math.sqrt(squares / (len(baseline) + len(group) - 2))


def welch_difference(baseline: Sequence[float], group: Sequence[float]) -> Difference:
    """Welch's t-test of equal means (two-sided, unequal variances); two or more values on each side."""
    base, ours = describe(baseline), describe(group)
    if base.sd is None or ours.sd is None:
        raise ValueError("Welch's t-test needs at least two values on each side")
    va, vb = base.sd**2 / base.n, ours.sd**2 / ours.n
    df = (va + vb) ** 2 / (va**2 / (base.n - 1) + vb**2 / (ours.n - 1)) if va + vb > 0 else float(base.n + ours.n - 2)
    return _difference("welch", base.mean - ours.mean, math.sqrt(va + vb), df, pooled_sd(baseline, group))


def paired_difference(baseline: Sequence[float], group: Sequence[float]) -> Difference:
    """The paired t-test on per-seed differences baseline[i] - group[i]; two or more pairs."""
    if len(baseline) != len(group) or len(baseline) < 2:
        raise ValueError("the paired t-test needs two or more pairs")
    differences = describe([b - g for b, g in zip(baseline, group)])
    return _difference(
        "paired",
        differences.mean,
        differences.sd / math.sqrt(differences.n),
        differences.n - 1,
        pooled_sd(baseline, group),
    )


def single_run_difference(baseline: Sequence[float], value: float) -> Difference:
    """One run against two or more baseline seeds, assuming the run has the baseline's spread."""
    base = describe(baseline)
    if base.sd is None:
        raise ValueError("the single-run test needs at least two baseline values")
    return _difference("single run", base.mean - value, base.sd * math.sqrt(1 + 1 / base.n), base.n - 1, base.sd)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (the family-wise error stays at the level of each comparison)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


# --- power ---------------------------------------------------------------------------------------------

_QUADRATURE_INTERVALS = 2000  # Simpson's rule: the integrand is smooth; error far below 1e-9 for df >= 1
_SQRT2 = math.sqrt(2)


def noncentral_t_cdf(t: float, df: float, noncentrality: float) -> float:
    """P(T <= t) for T = (Z + noncentrality) / sqrt(V / df), Z standard normal, V chi-square with df degrees.

    Integrated over s = sqrt(V / df): P = E[Phi(t s - noncentrality)], with s's density
    2 (df/2)^(df/2) / Gamma(df/2) s^(df-1) exp(-df s^2 / 2), by Simpson's rule over where that density lives."""
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    reach = 10.5 / math.sqrt(df)  # the density is below e^-50 of its peak outside 1 ± reach
    low, high = max(0.0, 1 - reach), 1 + reach
    log_front = math.log(2) + df / 2 * math.log(df / 2) - math.lgamma(df / 2)
    step = (high - low) / _QUADRATURE_INTERVALS
    total = 0.0
    for i in range(_QUADRATURE_INTERVALS + 1):
        s = low + i * step
        if s > 0:
            density = math.exp(log_front + (df - 1) * math.log(s) - df * s * s / 2)
        else:  # s^(df-1) at 0: 1 for df = 1, else 0
            density = math.exp(log_front) if df == 1 else 0.0
        weight = 1 if i in (0, _QUADRATURE_INTERVALS) else (4 if i % 2 else 2)
        total += weight * density * 0.5 * math.erfc(-(t * s - noncentrality) / _SQRT2)
    return min(1.0, max(0.0, total * step / 3))


def power(effect: float, sd: float, n_baseline: int, n_group: int, alpha: float = ALPHA) -> float:
    """The chance that a two-sided level-`alpha` t-test on n_baseline and n_group seeds (pooled SD, equal spread)
    finds a true difference `effect` when the seed SD is `sd`. With n_group = 1 this is the single-run test."""
    df = n_baseline + n_group - 2
    noncentrality = abs(effect) / (sd * math.sqrt(1 / n_baseline + 1 / n_group))
    critical = student_t_quantile(1 - alpha / 2, df)
    return 1 - noncentral_t_cdf(critical, df, noncentrality) + noncentral_t_cdf(-critical, df, noncentrality)


def family_alpha(comparisons: int, alpha: float = ALPHA) -> float:
    """The level a planned comparison must reach when `comparisons` interventions share a baseline under Holm:
    Holm's first step, alpha / K, is the one a real effect must pass when every other intervention does nothing."""
    return alpha / max(1, comparisons)


MAX_SEEDS = 100_000


def seeds_per_arm(
    effect: float, sd: float, target_power: float = POWER, comparisons: int = 1, alpha: float = ALPHA
) -> Optional[int]:
    """The fewest seeds per arm (baseline and intervention alike) for the exact power of the two-sided t-test to
    reach `target_power`; None when even MAX_SEEDS would not (or the effect is 0)."""
    if sd <= 0:
        raise ValueError(f"sd must be positive, got {sd}")
    if effect == 0:
        return None
    level = family_alpha(comparisons, alpha)
    return _fewest(lambda n: power(effect, sd, n, n, level), target_power, 1)


def _fewest(power_with: Callable[[int], float], target_power: float, start: int) -> Optional[int]:
    """The smallest n > start with power_with(n) >= target_power (power grows with n); None beyond MAX_SEEDS."""
    if power_with(MAX_SEEDS) < target_power:
        return None
    low, high = start, start + 1  # power(low) < target <= power(high)
    while power_with(high) < target_power:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if power_with(middle) < target_power:
            low = middle
        else:
            high = middle
    return high


def paired_power(effect: float, sd_difference: float, pairs: int, alpha: float = ALPHA) -> float:
    """The chance that the two-sided level-`alpha` paired t-test on `pairs` seeds (each trained with and without the
    intervention) finds a true difference `effect` when per-seed differences have SD `sd_difference`."""
    df = pairs - 1
    noncentrality = abs(effect) / (sd_difference / math.sqrt(pairs))
    critical = student_t_quantile(1 - alpha / 2, df)
    return 1 - noncentral_t_cdf(critical, df, noncentrality) + noncentral_t_cdf(-critical, df, noncentrality)


def seeds_paired(
    effect: float, sd_difference: float, target_power: float = POWER, comparisons: int = 1, alpha: float = ALPHA
) -> Optional[int]:
    """The fewest seeds, each trained as baseline and as intervention (a paired design), for the paired t-test's exact
    power to reach `target_power` (Holm-aware as seeds_per_arm); None when even MAX_SEEDS would not."""
    if sd_difference <= 0:
        raise ValueError(f"sd_difference must be positive, got {sd_difference}")
    if effect == 0:
        return None
    level = family_alpha(comparisons, alpha)
    return _fewest(lambda n: paired_power(effect, sd_difference, n, level), target_power, 1)


def detectable_effect(
    sd: float, n_baseline: int, n_group: int, target_power: float = POWER, comparisons: int = 1, alpha: float = ALPHA
) -> float:
    """The smallest true difference (in the units of `sd`) found with `target_power` by the test on these seeds."""
    return sd * _detectable_in_sds(n_baseline, n_group, target_power, family_alpha(comparisons, alpha))


@functools.lru_cache(maxsize=256)
def _detectable_in_sds(n_baseline: int, n_group: int, target_power: float, level: float) -> float:
    low, high = 0.0, 1.0
    while power(high, 1.0, n_baseline, n_group, level) < target_power:
        low, high = high, high * 2
    while high - low > 1e-6 * high:  # power is smooth in the effect: six digits are plenty for advice
        middle = (low + high) / 2
        if power(middle, 1.0, n_baseline, n_group, level) < target_power:
            low = middle
        else:
            high = middle
    return high


def format_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
