"""gptlab's own statistics against SciPy, the oracle, on random cases: t quantiles and intervals, Welch, paired and
single-run t-tests with their confidence intervals, Cohen's d, Holm's adjustment, noncentral-t power and seed planning."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats as scipy_stats

from gptlab.experiments import stats

CASES = 40


def _samples(generator: random.Random, n: int, sd: float = 0.02, mean: float = 3.5) -> list[float]:
    return [generator.gauss(mean, sd) for _ in range(n)]


def test_student_t_quantile_and_group_interval_match_scipy():
    generator = random.Random(11)
    for _ in range(200):
        p, df = generator.uniform(1e-5, 1 - 1e-5), generator.choice([1, 2, 3, 4.5, 7, 12.3, 30, 200])
        assert stats.student_t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-10, abs=1e-10)
    for _ in range(CASES):
        values = _samples(generator, generator.randint(2, 12))
        described = stats.describe(values)
        low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
        assert (described.ci_low, described.ci_high) == pytest.approx((low, high), rel=1e-12)


def test_welch_improvement_interval_and_p_match_scipy():
    generator = random.Random(12)
    for _ in range(CASES):
        baseline = _samples(generator, generator.randint(2, 10), generator.uniform(0.001, 0.05))
        group = _samples(
            generator, generator.randint(2, 10), generator.uniform(0.001, 0.05), 3.5 + generator.uniform(-0.05, 0.05)
        )
        ours = stats.welch_difference(baseline, group)
        oracle = scipy_stats.ttest_ind(baseline, group, equal_var=False)
        interval = oracle.confidence_interval(0.95)
        assert ours.improvement == pytest.approx(np.mean(baseline) - np.mean(group), rel=1e-12)
        assert (ours.t, ours.df, ours.p) == pytest.approx(
            (oracle.statistic, oracle.df, oracle.pvalue), rel=1e-9, abs=1e-12
        )
        assert (ours.ci_low, ours.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-9)


def test_paired_improvement_interval_and_p_match_scipy():
    generator = random.Random(13)
    for _ in range(CASES):
        n = generator.randint(2, 10)
        baseline = _samples(generator, n)
        group = [value - generator.gauss(0.003, 0.004) for value in baseline]  # the same seeds, shifted a little
        ours = stats.paired_difference(baseline, group)
        oracle = scipy_stats.ttest_rel(baseline, group)
        interval = oracle.confidence_interval(0.95)
        assert (ours.t, ours.df, ours.p) == pytest.approx(
            (oracle.statistic, oracle.df, oracle.pvalue), rel=1e-9, abs=1e-12
        )
        assert (ours.ci_low, ours.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-9)


def test_single_run_test_is_the_pooled_t_test_with_one_run_and_matches_scipy():
    generator = random.Random(14)
    for _ in range(CASES):
        baseline = _samples(generator, generator.randint(2, 10))
        run = 3.5 + generator.uniform(-0.1, 0.1)
        ours = stats.single_run_difference(baseline, run)
        oracle = scipy_stats.ttest_ind(baseline, [run], equal_var=True)  # one run: the pooled SD is the baseline's
        interval = oracle.confidence_interval(0.95)
        assert (ours.t, ours.df, ours.p) == pytest.approx(
            (oracle.statistic, oracle.df, oracle.pvalue), rel=1e-9, abs=1e-12
        )
        assert (ours.ci_low, ours.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-9)
        # outside the 95% prediction interval of one more baseline seed exactly when p < 0.05
        sd = np.std(baseline, ddof=1)
        outside = abs(run - np.mean(baseline)) > scipy_stats.t.ppf(0.975, len(baseline) - 1) * sd * math.sqrt(
            1 + 1 / len(baseline)
        )
        assert outside == (ours.p < 0.05)
        assert ours.cohens_d == pytest.approx((np.mean(baseline) - run) / sd, rel=1e-12)


def test_cohens_d_uses_the_pooled_sd_of_both_sides():
    generator = random.Random(15)
    for _ in range(CASES):
        baseline, group = (
            _samples(generator, generator.randint(2, 9)),
            _samples(generator, generator.randint(2, 9), mean=3.49),
        )
        n1, n2 = len(baseline), len(group)
        pooled = math.sqrt(((n1 - 1) * np.var(baseline, ddof=1) + (n2 - 1) * np.var(group, ddof=1)) / (n1 + n2 - 2))
        assert stats.welch_difference(baseline, group).cohens_d == pytest.approx(
            (np.mean(baseline) - np.mean(group)) / pooled, rel=1e-10
        )


def _holm_rejects(p_values: list[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure as published: reject the smallest p-values in order while p_(k) <= alpha / (m - k)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


def test_holm_adjusted_p_values_reject_exactly_what_the_step_down_procedure_rejects():
    generator = random.Random(16)
    for _ in range(300):
        p_values = [generator.random() ** generator.choice([1, 3, 6]) for _ in range(generator.randint(1, 12))]
        adjusted = stats.holm(p_values)
        assert all(a >= p for a, p in zip(adjusted, p_values)) and all(a <= 1 for a in adjusted)
        for alpha in (0.01, 0.05, 0.1, generator.random()):
            assert [a <= alpha for a in adjusted] == _holm_rejects(p_values, alpha)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def _scipy_power(effect_in_sds: float, n_baseline: int, n_group: int, alpha: float) -> float:
    df = n_baseline + n_group - 2
    noncentrality = effect_in_sds / math.sqrt(1 / n_baseline + 1 / n_group)
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    # the far tail written as sf with the opposite noncentrality: SciPy's cdf gives NaN for some deep-tail arguments
    return scipy_stats.nct.sf(critical, df, noncentrality) + scipy_stats.nct.sf(critical, df, -noncentrality)


def test_noncentral_t_cdf_and_power_match_scipy():
    generator = random.Random(17)
    for _ in range(CASES):
        df, noncentrality, t = (
            generator.choice([1, 2, 3, 5, 9, 17, 40, 120]),
            generator.uniform(-1, 6),
            generator.uniform(-3, 12),
        )
        assert stats.noncentral_t_cdf(t, df, noncentrality) == pytest.approx(
            scipy_stats.nct.cdf(t, df, noncentrality), abs=1e-9
        )
    for _ in range(CASES):
        n_baseline, n_group = generator.randint(2, 20), generator.choice([1, generator.randint(2, 20)])
        effect, alpha = generator.uniform(0.1, 4), generator.choice([0.05, 0.01, 0.005])
        assert stats.power(effect, 1.0, n_baseline, n_group, alpha) == pytest.approx(
            _scipy_power(effect, n_baseline, n_group, alpha), abs=1e-9
        )


def test_seeds_per_arm_is_the_fewest_seeds_reaching_the_power_and_holm_asks_for_more():
    # the issue's own case: a 2 SD effect has 66% power with 4 seeds per arm and needs 6 for 80%
    assert _scipy_power(2.0, 4, 4, 0.05) == pytest.approx(0.657, abs=0.001)
    assert stats.seeds_per_arm(2.0, 1.0) == 6
    generator = random.Random(18)
    for _ in range(15):
        effect, sd, interventions = (
            generator.uniform(0.002, 0.05),
            generator.uniform(0.005, 0.03),
            generator.randint(1, 10),
        )
        target = generator.choice([0.8, 0.9])
        needed = stats.seeds_per_arm(effect, sd, target, interventions)
        level = 0.05 / interventions
        assert _scipy_power(effect / sd, needed, needed, level) >= target
        assert needed == 2 or _scipy_power(effect / sd, needed - 1, needed - 1, level) < target
    assert stats.seeds_per_arm(0.01, 0.012, comparisons=5) > stats.seeds_per_arm(0.01, 0.012, comparisons=1)
    assert stats.seeds_per_arm(0.0, 0.01) is None and stats.seeds_per_arm(1e-6, 1.0) is None


def _scipy_paired_power(effect_in_sds: float, pairs: int, alpha: float) -> float:
    df, noncentrality = pairs - 1, effect_in_sds * math.sqrt(pairs)
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    return scipy_stats.nct.sf(critical, df, noncentrality) + scipy_stats.nct.sf(critical, df, -noncentrality)


def test_paired_seed_count_is_the_fewest_pairs_reaching_the_power_by_scipys_noncentral_t():
    generator = random.Random(26)
    for _ in range(12):
        effect, sd, interventions = (
            generator.uniform(0.002, 0.05),
            generator.uniform(0.002, 0.03),
            generator.randint(1, 10),
        )
        target, level = generator.choice([0.8, 0.9]), 0.05 / interventions
        assert stats.paired_power(effect, sd, 7, level) == pytest.approx(
            _scipy_paired_power(effect / sd, 7, level), abs=1e-9
        )
        needed = stats.seeds_paired(effect, sd, target, interventions)
        assert _scipy_paired_power(effect / sd, needed, level) >= target
        assert needed == 2 or _scipy_paired_power(effect / sd, needed - 1, level) < target
    # a smaller SD of differences than the seed SD (common random numbers) needs fewer seeds than two unpaired arms
    assert stats.seeds_paired(0.01, 0.004) < stats.seeds_per_arm(0.01, 0.01)
    assert stats.seeds_paired(0.0, 0.01) is None


def test_experiment_seeds_plans_the_paired_design_with_the_paired_sd():
    from gptlab.experiments.seeds import plan_seeds

    plan = plan_seeds(0.01, 0.01, paired_sd=0.004, interventions=3)
    assert plan["design"] == "paired" and plan["seeds_per_arm"] == stats.seeds_paired(0.01, 0.004, comparisons=3)
    assert plan["unpaired_seeds_per_arm"] == stats.seeds_per_arm(0.01, 0.01, comparisons=3)
    assert plan["summary"].startswith(f"{plan['seeds_per_arm']} seeds, each trained as the baseline and as each")
    assert f"unpaired, with seed SD 0.01: {plan['unpaired_seeds_per_arm']} seeds per arm" in plan["summary"]


def test_detectable_effect_is_the_effect_found_with_the_asked_power():
    for n_baseline, n_group, comparisons in ((5, 5, 1), (8, 1, 5), (3, 3, 4)):
        effect = stats.detectable_effect(0.012, n_baseline, n_group, comparisons=comparisons)
        assert _scipy_power(effect / 0.012, n_baseline, n_group, 0.05 / comparisons) == pytest.approx(0.8, abs=1e-5)
