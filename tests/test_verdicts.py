"""The verdict rules on constructed losses: each case of issue 11 (diverged runs, zero spread, one seed, many
interventions, paired seeds, unequal spreads, single runs in the Holm family) gives the right verdict."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy import stats as scipy_stats

from gptlab.experiments import stats
from gptlab.experiments.verdicts import (
    BETTER,
    CANNOT_JUDGE,
    DIVERGED,
    NO_NOISE,
    WITHIN,
    WORSE,
    Arm,
    RunOutcome,
    judge_interventions,
)

BASE = [3.512, 3.498, 3.521, 3.505, 3.490]


def arm(label: str, losses, seeds=None, stopped=None, same_data_order: bool = True) -> Arm:
    seeds = list(seeds) if seeds is not None else list(range(1, len(losses) + 1))
    stopped = stopped or [None] * len(losses)
    return Arm(label, [RunOutcome(seed, loss, why) for seed, loss, why in zip(seeds, losses, stopped)], same_data_order)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_single_non_finite_run_is_a_verdict_of_its_own_and_leaves_the_family(bad):
    judgement = judge_interventions(
        arm("baseline", BASE), [arm("boom", [bad], stopped=["diverged at step 37"]), arm("good", [3.40])]
    )
    assert judgement.verdicts["boom"].label == DIVERGED and judgement.verdicts["boom"].words == "diverged at step 37"
    assert judgement.verdicts["boom"].p_holm is None and judgement.family_size == 1
    # the finite single run is judged alone, with the same p as without the diverged one
    assert judgement.verdicts["good"].p_holm == pytest.approx(stats.single_run_difference(BASE, 3.40).p)


def test_one_nan_among_several_seeds_never_crashes_and_never_enters_a_statistic():
    group = arm("mixed", [3.40, math.nan, 3.41], stopped=[None, "diverged at step 12", None])
    judgement = judge_interventions(arm("baseline", BASE), [group])
    assert judgement.verdicts["mixed"].label == DIVERGED
    assert judgement.verdicts["mixed"].words == "diverged at step 12 (1 of 3 seeds)"

    # a NaN baseline seed is left out, named in a note, and the rest decide exactly as without it
    with_nan = arm("baseline", BASE + [math.nan], stopped=[None] * 5 + ["stopped: non-finite from step 3"])
    judged = judge_interventions(with_nan, [arm("other", [3.40, 3.39, 3.42], seeds=[7, 8, 9])])
    clean = judge_interventions(arm("baseline", BASE), [arm("other", [3.40, 3.39, 3.42], seeds=[7, 8, 9])])
    assert judged.verdicts["other"].p_holm == pytest.approx(clean.verdicts["other"].p_holm)
    assert judged.verdicts["other"].welch.improvement == pytest.approx(clean.verdicts["other"].welch.improvement)
    assert any(
        "1 of 6 seeds did not give a finite test loss (stopped: non-finite from step 3)" in note
        for note in judged.notes
    )


def test_zero_and_near_zero_baseline_spread_gives_no_noise_estimate_with_the_reason():
    reason = "the seed changes neither initialisation (init_from is set) nor dropout (drop_rate is 0) here"
    for spread in (0.0, 1e-9):
        baseline = arm("baseline", [3.5, 3.5 + spread, 3.5 - spread])
        judgement = judge_interventions(baseline, [arm("tiny", [3.4999] * 3), arm("single", [3.49])], reason)
        for label in ("tiny", "single"):
            verdict = judgement.verdicts[label]
            assert verdict.label == NO_NOISE and verdict.p_holm is None
            assert verdict.words == f"no noise estimate: the seeds did not change the result ({reason})"
        assert any("gave the same test loss" in note for note in judgement.notes)


def test_one_baseline_seed_cannot_judge_and_sizes_the_advice_by_exact_power():
    judgement = judge_interventions(arm("baseline", [3.5]), [arm("lr", [3.40, 3.43, 3.41])])
    verdict = judgement.verdicts["lr"]
    sd = scipy_stats.tstd([3.40, 3.43, 3.41])
    assert verdict.label == CANNOT_JUDGE and verdict.words.startswith("noise cannot be judged: 1 baseline seed;")
    assert verdict.seeds_needed == max(stats.MIN_SEEDS, stats.seeds_per_arm(3.5 - 3.4133333333333336, sd))
    assert f"{verdict.seeds_needed} seeds needed" in verdict.words


def _null_experiment(generator: random.Random, baseline_seeds: int, intervention_seeds: int, interventions: int = 10):
    baseline = arm("baseline", [generator.gauss(3.5, 0.012) for _ in range(baseline_seeds)])
    # other seeds than the baseline's, so that no pairing applies: Welch (or the single-run test) decides
    others = [
        arm(
            f"noop{i}",
            [generator.gauss(3.5, 0.012) for _ in range(intervention_seeds)],
            seeds=range(100 + 10 * i, 100 + 10 * i + intervention_seeds),
        )
        for i in range(interventions)
    ]
    return judge_interventions(baseline, others, advise=False)


@pytest.mark.parametrize("baseline_seeds, intervention_seeds", [(5, 5), (8, 1)])
def test_ten_interventions_that_do_nothing_are_rarely_called_beyond_noise(baseline_seeds, intervention_seeds):
    """Without a correction about 26% (5 seeds each) or 30% (8 baseline seeds, single runs) of such experiments
    call at least one intervention beyond noise; Holm keeps it at 5%."""
    generator = random.Random(20)
    experiments = 300
    any_beyond = raw_any = 0
    for _ in range(experiments):
        judgement = _null_experiment(generator, baseline_seeds, intervention_seeds)
        any_beyond += any(v.label in (BETTER, WORSE) for v in judgement.verdicts.values())
        raw_any += any(v.deciding.p < 0.05 for v in judgement.verdicts.values())
    assert any_beyond / experiments < 0.09  # 5% expected; 0.09 is over 3 standard errors above it
    assert raw_any / experiments > 0.18  # the uncorrected rate this guards against


def test_holm_family_holds_single_runs_and_several_seeded_groups_together():
    baseline = arm("baseline", BASE)
    groups = [
        arm("big", [3.30, 3.31, 3.29], seeds=[7, 8, 9]),
        arm("single", [3.45]),
        arm("noop", [3.50, 3.51, 3.505], seeds=[7, 8, 9]),
    ]
    judgement = judge_interventions(baseline, groups)
    raw = [
        stats.welch_difference(BASE, [3.30, 3.31, 3.29]).p,
        stats.single_run_difference(BASE, 3.45).p,
        stats.welch_difference(BASE, [3.50, 3.51, 3.505]).p,
    ]
    assert [judgement.verdicts[g.label].p_holm for g in groups] == pytest.approx(stats.holm(raw))
    assert judgement.family_size == 3
    single = judgement.verdicts["single"]
    assert single.decided_by == "single run" and "SD" in single.words and "Holm p=" in single.words
    assert single.label == (BETTER if stats.holm(raw)[1] < 0.05 else WITHIN)
    assert judgement.verdicts["big"].label == BETTER and judgement.verdicts["noop"].label == WITHIN
    assert judgement.verdicts["big"].detectable_effect == pytest.approx(
        stats.detectable_effect(scipy_stats.tstd(BASE), 5, 3, comparisons=3)
    )


def test_paired_seeds_decide_when_the_data_order_is_the_same_and_welch_is_shown_beside():
    generator = random.Random(21)
    baseline = [generator.gauss(3.5, 0.02) for _ in range(5)]
    shifted = [value - 0.004 + generator.gauss(0, 0.0005) for value in baseline]  # the same seeds, 0.004 better each
    paired = judge_interventions(arm("baseline", baseline), [arm("tweak", shifted)]).verdicts["tweak"]
    assert paired.decided_by == "paired" and paired.label == BETTER
    assert paired.paired.p == pytest.approx(scipy_stats.ttest_rel(baseline, shifted).pvalue)
    assert (
        paired.welch.p > 0.05
        and "paired t" in paired.words
        and f"Welch p={stats.format_p(paired.welch.p)}" in paired.words
    )

    other_order = judge_interventions(
        arm("baseline", baseline), [arm("tweak", shifted, same_data_order=False)]
    ).verdicts["tweak"]
    assert other_order.decided_by == "welch" and other_order.paired is None and other_order.label == WITHIN
    other_seeds = judge_interventions(
        arm("baseline", baseline), [arm("tweak", shifted, seeds=[1, 2, 3, 4, 99])]
    ).verdicts["tweak"]
    assert other_seeds.decided_by == "welch"


def test_unequal_spreads_are_warned_about():
    wide = [3.40, 3.50, 3.30, 3.45]  # SD about 0.085, against the baseline's 0.012
    judgement = judge_interventions(
        arm("baseline", BASE), [arm("wide", wide, seeds=[7, 8, 9, 10]), arm("single", [3.45])]
    )
    ratio = scipy_stats.tstd(wide) / scipy_stats.tstd(BASE)
    warning = next(note for note in judgement.notes if note.startswith("wide:"))
    assert f"{ratio:.1f}x the baseline's" in warning and "single-run test of single" in warning
    close = judge_interventions(arm("baseline", BASE), [arm("close", [3.50, 3.51, 3.49], seeds=[7, 8, 9])])
    assert not any("x the baseline's" in note for note in close.notes)


def test_the_verdict_says_the_direction_and_every_signed_figure_is_positive_when_better():
    judgement = judge_interventions(
        arm("baseline", BASE),
        [arm("good", [3.30, 3.31, 3.29], seeds=[7, 8, 9]), arm("bad", [3.70, 3.71, 3.69], seeds=[7, 8, 9])],
    )
    good, bad = judgement.verdicts["good"], judgement.verdicts["bad"]
    assert good.label == BETTER and good.words.startswith("better, beyond noise (Welch")
    assert bad.label == WORSE and bad.words.startswith("worse, beyond noise (Welch")
    assert good.deciding.improvement > 0 and good.deciding.cohens_d > 0
    assert bad.deciding.improvement < 0 and bad.deciding.cohens_d < 0
    # a single run 0.2 nats better: a positive number of baseline SDs, as SciPy's mean and SD give it
    single = judge_interventions(arm("baseline", BASE), [arm("one", [3.30])]).verdicts["one"]
    sds = (scipy_stats.tmean(BASE) - 3.30) / scipy_stats.tstd(BASE)
    assert single.label == BETTER and f", +{sds:.1f} SD)" in single.words
    worse = judge_interventions(arm("baseline", BASE), [arm("one", [3.70])]).verdicts["one"]
    assert (
        worse.label == WORSE
        and f", {-(3.70 - scipy_stats.tmean(BASE)) / scipy_stats.tstd(BASE):+.1f} SD)" in worse.words
    )


@pytest.mark.parametrize("step", [0.01, 0.03])
def test_paired_differences_without_spread_give_no_noise_estimate_not_p_zero(step):
    """HellaSwag's case: one more item right out of 100 on every seed (error rates differ by exactly 0.01,
    up to float rounding)."""
    base = [0.74, 0.71, 0.73]
    ours = [b - step for b in base]
    judgement = judge_interventions(arm("baseline", base), [arm("same", ours), arm("noisy", [0.70, 0.72, 0.69])])
    verdict = judgement.verdicts["same"]
    assert verdict.label == NO_NOISE and verdict.p_holm is None and verdict.deciding is None
    assert "every seed differs from its baseline seed by the same" in verdict.words
    assert "paired t-test has no spread" in verdict.words
    assert judgement.family_size == 1  # only "noisy" was tested, unadjusted by the untestable one
    assert judgement.verdicts["noisy"].p_holm == pytest.approx(scipy_stats.ttest_rel(base, [0.70, 0.72, 0.69]).pvalue)


def test_a_spread_warning_reads_right_when_the_intervention_has_no_spread_or_less_than_the_baseline():
    base = [3.50, 3.40, 3.60, 3.45]
    judgement = judge_interventions(
        arm("baseline", base),
        [arm("flat", [3.2, 3.2, 3.2], seeds=[7, 8, 9]), arm("calm", [3.3, 3.31, 3.32], seeds=[7, 8, 9])],
    )
    flat = next(note for note in judgement.notes if note.startswith("flat:"))
    assert "inf" not in flat and "its seeds gave one result (SD 0)" in flat
    calm = next(note for note in judgement.notes if note.startswith("calm:"))
    ratio = scipy_stats.tstd(base) / scipy_stats.tstd([3.3, 3.31, 3.32])
    assert f"is 1/{ratio:.1f} of the baseline's" in calm


def test_notes_name_the_quantity_judged():
    judgement = judge_interventions(
        arm("baseline", [0.5, 0.5, 0.5]), [arm("x", [0.4, 0.4, 0.4])], quantity="HellaSwag accuracy"
    )
    assert any("gave the same HellaSwag accuracy" in note for note in judgement.notes)
    assert not any("test loss" in note for note in judgement.notes)


@pytest.mark.parametrize("seeds", [2, 3])
def test_ten_hellaswag_interventions_that_do_nothing_on_100_items_are_rarely_called_beyond_noise(seeds):
    """HellaSwag on 100 items: accuracies come in steps of 0.01, so paired differences without spread are common
    (3.5% of 2-seed experiments were once decided on p = 0). Each seed's model has its own skill; every arm of that
    seed scores the 100 items anew (Binomial). Nothing differs between arms, so any verdict but within noise or no
    noise estimate is a false positive: Holm keeps those at 5% of experiments."""
    generator = np.random.default_rng(26)
    experiments, arms = 600, 11
    skill = generator.normal(0.30, 0.02, size=(experiments, 1, seeds))
    error_rates = 1 - generator.binomial(100, np.broadcast_to(skill, (experiments, arms, seeds))) / 100
    false = no_noise = 0
    for rates in error_rates:
        judgement = judge_interventions(
            arm("baseline", rates[0]), [arm(f"noop{i}", rates[i]) for i in range(1, arms)], advise=False
        )
        false += any(v.label in (BETTER, WORSE) for v in judgement.verdicts.values())
        no_noise += any(v.label == NO_NOISE for v in judgement.verdicts.values())
    assert false / experiments <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / experiments)
    assert no_noise > 0  # the case exists in these experiments, and none of them was decided on p = 0
