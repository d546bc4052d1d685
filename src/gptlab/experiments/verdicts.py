"""Verdicts: is each intervention's difference from the baseline more than seed noise?

The rules a careful researcher applies by hand, on top of the numbers in stats.py:

- A run whose test loss is not finite (diverged, or stopped by non-finite steps) never enters a statistic;
  an intervention with such a run gets that as its verdict, and leaves the family of tests.
- With fewer than two finite baseline seeds there is no noise estimate: no verdict, but how many seeds.
- When the baseline seeds gave (almost) the same loss, the seed did not reach the model: no verdict.
- Otherwise every intervention gets a test: paired t on per-seed differences when its seeds also exist in
  the baseline with the same data order, else Welch's t-test, or the single-run test for a single run. The
  p-values of all tested interventions are Holm-adjusted together, and the adjusted value decides.
- A test without spread has no noise estimate either: every paired difference the same says so and why, and
  leaves the family, instead of deciding on p = 0 (Welch needs spread on both sides, and a baseline without
  spread is the seed-blind case above).
- The words say the direction: "better, beyond noise", "worse, beyond noise" or "within noise"; every signed
  figure is positive when the intervention is better (lower loss, higher accuracy).

This module knows nothing of run directories or tables: compare.py turns runs into Arms and the verdicts
into rows.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from gptlab.experiments import stats

BETTER, WORSE, WITHIN, DIVERGED, NO_NOISE, CANNOT_JUDGE = (
    "better, beyond noise",
    "worse, beyond noise",
    "within noise",
    "diverged",
    "no noise estimate",
    "cannot judge",
)
NEAR_ZERO_SPREAD = 1e-6  # baseline SD / |mean| below this: the seeds did not change the result (float noise only)
SPREAD_RATIO_WARNING = 3.0  # the single-run test and Cohen's d assume equal spread; say so beyond this ratio
TEST_WORDS = {"welch": "Welch", "paired": "paired t", "single run": "single run"}


@dataclass(frozen=True)
class RunOutcome:
    """One run as a verdict sees it: its seed, its test loss and, when that loss is not usable, why."""

    seed: Any
    loss: float
    stopped: Optional[str] = None  # e.g. "diverged at step 37", "stopped: non-finite at step 12"

    @property
    def finite(self) -> bool:
        return self.stopped is None and math.isfinite(self.loss)


@dataclass(frozen=True)
class Arm:
    """The runs of one variant. `same_data_order`: its batches come in the baseline's order, so seeds can pair."""

    label: str
    runs: Sequence[RunOutcome]
    same_data_order: bool = True

    @property
    def finite_losses(self) -> list[float]:
        return [run.loss for run in self.runs if run.finite]

    @property
    def failed(self) -> list[RunOutcome]:
        return [run for run in self.runs if not run.finite]


@dataclass
class Verdict:
    label: str  # BETTER, WORSE, WITHIN, DIVERGED, NO_NOISE or CANNOT_JUDGE
    words: str  # what the table shows
    decided_by: Optional[str] = None  # "paired", "welch" or "single run"
    welch: Optional[stats.Difference] = None
    paired: Optional[stats.Difference] = None
    single_run: Optional[stats.Difference] = None
    p_holm: Optional[float] = None
    seeds_needed: Optional[int] = None  # per arm, to detect the observed improvement with 80% power (Holm-aware)
    detectable_effect: Optional[float] = None  # the smallest improvement these seeds find with 80% power (Holm-aware)

    @property
    def deciding(self) -> Optional[stats.Difference]:
        return {"paired": self.paired, "welch": self.welch, "single run": self.single_run}.get(self.decided_by or "")


@dataclass
class Judgement:
    verdicts: dict[str, Verdict]
    notes: list[str] = field(default_factory=list)
    family_size: int = 0  # interventions whose p-values were adjusted together
    seed_blind: bool = False  # the baseline's seeds all gave one loss: nothing was judged against noise
    paired: bool = False  # some intervention was judged by the paired t-test


def _failure_words(arm: Arm) -> str:
    failed = arm.failed
    first = failed[0].stopped or f"diverged (test loss {failed[0].loss})"
    return first if len(failed) == len(arm.runs) else f"{first} ({len(failed)} of {len(arm.runs)} seeds)"


def _pairs(baseline: Arm, arm: Arm) -> Optional[tuple[list[float], list[float]]]:
    """(baseline losses, arm losses) matched by seed, when every seed of the arm is a finite baseline seed."""
    if not arm.same_data_order:
        return None
    by_seed: dict[Any, float] = {}
    for run in baseline.runs:
        if run.finite:
            by_seed[run.seed] = math.nan if run.seed in by_seed else run.loss  # a repeated seed cannot pair
    seeds = [run.seed for run in arm.runs]
    if (
        len(seeds) < 2
        or len(set(seeds)) < len(seeds)
        or any(not math.isfinite(by_seed.get(seed, math.nan)) for seed in seeds)
    ):
        return None
    return [by_seed[seed] for seed in seeds], [run.loss for run in arm.runs]


def _no_spread(values: Sequence[float], scale: float) -> bool:
    """The values agree to float noise (SD at most NEAR_ZERO_SPREAD of the scale of the results)."""
    return len(values) >= 2 and statistics.stdev(values) <= NEAR_ZERO_SPREAD * max(1.0, abs(scale))


def _tests(baseline: Arm, arm: Arm) -> Verdict:
    base, ours = baseline.finite_losses, arm.finite_losses
    scale = statistics.fmean(base)
    if len(ours) == 1:
        return Verdict(WITHIN, "", "single run", single_run=stats.single_run_difference(base, ours[0]))
    verdict = Verdict(WITHIN, "", "welch", welch=stats.welch_difference(base, ours))
    pairs = _pairs(baseline, arm)
    if pairs is not None:
        differences = [b - g for b, g in zip(*pairs)]
        if _no_spread(differences, scale):
            same = (
                "every seed gave exactly its baseline seed's result"
                if not any(differences)
                else f"every seed differs from its baseline seed by the same {differences[0]:+.4g}"
            )
            return Verdict(
                NO_NOISE,
                f"no noise estimate: {same}, so the paired t-test has no spread to judge it against",
                welch=verdict.welch,
            )
        verdict.paired = stats.paired_difference(*pairs)
        verdict.decided_by = "paired"
    return verdict  # Welch without spread on both sides cannot happen here: such a baseline is seed-blind


def seed_blind_words(reason: Optional[str]) -> str:
    return "no noise estimate: the seeds did not change the result" + (f" ({reason})" if reason else "")


def judge_interventions(
    baseline: Arm,
    arms: Sequence[Arm],
    seed_blind_reason: Optional[str] = None,
    noise_sd_hint: Optional[float] = None,
    advise: bool = True,
    quantity: str = "test loss",
) -> Judgement:
    """A verdict for each arm against `baseline`. `seed_blind_reason` names why the seed may change nothing here
    (shown when the baseline seeds agree); `noise_sd_hint` (a seed SD seen in other groups) sizes the advice
    when the baseline has too few seeds to judge. `advise`: also the seeds needed and the detectable effect
    of each tested arm (exact power: tens of milliseconds each). `quantity` names what the values are, for the notes."""
    judgement = Judgement({})
    base = baseline.finite_losses
    if baseline.failed:
        judgement.notes.append(
            f"{baseline.label}: {len(baseline.failed)} of {len(baseline.runs)} seeds did not give a finite {quantity} "
            f"({_failure_words(Arm(baseline.label, baseline.failed))}); they are left out of every statistic."
        )
    base_sd = statistics.stdev(base) if len(base) >= 2 else None
    seed_blind = base_sd is not None and base_sd <= NEAR_ZERO_SPREAD * max(1.0, abs(statistics.fmean(base)))
    testable = [arm for arm in arms if not arm.failed]
    comparisons = len(testable)
    tested: dict[str, Verdict] = {}
    for arm in arms:
        if arm.failed:
            judgement.verdicts[arm.label] = Verdict(DIVERGED, _failure_words(arm))
        elif len(base) < 2:
            improvement = (statistics.fmean(base) - statistics.fmean(arm.finite_losses)) if base else None
            sd = statistics.stdev(arm.finite_losses) if len(arm.finite_losses) >= 2 else noise_sd_hint
            needed = stats.seeds_per_arm(improvement, sd, comparisons=comparisons) if improvement and sd else None
            needed = max(stats.MIN_SEEDS, needed) if needed else stats.MIN_SEEDS
            finite = " with a finite loss" if baseline.failed else ""
            words = f"noise cannot be judged: {len(base)} baseline seed{'s' if len(base) != 1 else ''}{finite}; {needed} seeds needed"
            judgement.verdicts[arm.label] = Verdict(CANNOT_JUDGE, words, seeds_needed=needed)
        elif seed_blind:
            judgement.verdicts[arm.label] = Verdict(NO_NOISE, seed_blind_words(seed_blind_reason))
        else:
            verdict = judgement.verdicts[arm.label] = _tests(baseline, arm)
            if verdict.label != NO_NOISE:
                tested[arm.label] = verdict
    labels = list(tested)
    for label, adjusted in zip(labels, stats.holm([tested[label].deciding.p for label in labels])):
        verdict = tested[label]
        verdict.p_holm = adjusted
        better = verdict.deciding.improvement > 0
        verdict.label = (BETTER if better else WORSE) if adjusted < stats.ALPHA else WITHIN
        if advise:
            arm = next(a for a in arms if a.label == label)
            verdict.seeds_needed = stats.seeds_per_arm(verdict.deciding.improvement, base_sd, comparisons=len(labels))
            verdict.detectable_effect = stats.detectable_effect(
                base_sd, len(base), len(arm.finite_losses), comparisons=len(labels)
            )
        verdict.words = _tested_words(verdict, len(labels))
    judgement.family_size, judgement.seed_blind = len(labels), seed_blind
    judgement.paired = any(verdict.decided_by == "paired" for verdict in tested.values())
    if tested:
        judgement.notes += _spread_warnings(baseline, [a for a in arms if a.label in tested])
    if seed_blind:
        judgement.notes.append(
            f"{baseline.label}: its {len(base)} seeds gave the same {quantity} (SD {base_sd:.2g}): "
            f"{seed_blind_words(seed_blind_reason)}, so no difference can be judged against seed noise."
        )
    return judgement


def _tested_words(verdict: Verdict, family: int) -> str:
    deciding = verdict.deciding
    adjusted = f"Holm p={stats.format_p(verdict.p_holm)}" if family > 1 else f"p={stats.format_p(verdict.p_holm)}"
    words = f"{verdict.label} ({TEST_WORDS[verdict.decided_by]}, {adjusted}"
    if verdict.decided_by == "single run":
        words += f", {deciding.cohens_d:+.1f} SD"  # the run's improvement on the baseline mean, in baseline SDs
    if verdict.decided_by == "paired" and verdict.welch is not None:
        words += f"; Welch p={stats.format_p(verdict.welch.p)}"
    return words + ")"


def _spread_warnings(baseline: Arm, arms: Sequence[Arm]) -> list[str]:
    base = baseline.finite_losses
    base_sd = statistics.stdev(base)
    single_runs = [arm.label for arm in arms if len(arm.finite_losses) == 1]
    warnings = []
    for arm in arms:
        if len(arm.finite_losses) < 2:
            continue
        sd = statistics.stdev(arm.finite_losses)
        if min(sd, base_sd) > 0:
            ratio = max(sd, base_sd) / min(sd, base_sd)
            times = f"{ratio:.1f}x" if sd >= base_sd else f"1/{ratio:.1f} of"
            spread = f"its seed SD ({sd:.2g}) is {times} the baseline's ({base_sd:.2g})"
        else:  # the baseline's SD is not 0 here (that is the seed-blind case)
            ratio, spread = math.inf, f"its seeds gave one result (SD 0), the baseline's spread (SD {base_sd:.2g})"
        if ratio > SPREAD_RATIO_WARNING:
            warnings.append(
                f"{arm.label}: {spread}. Welch's test allows "
                "unequal spreads, but Cohen's d and the seeds-needed figures assume equal ones"
                + (f", and so does the single-run test of {', '.join(single_runs)}" if single_runs else "")
                + "."
            )
    return warnings
