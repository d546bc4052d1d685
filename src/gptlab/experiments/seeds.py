"""`gptlab experiment seeds`: how many seeds per arm an experiment needs, before it is run.

The exact power of the two-sided two-sample t-test (noncentral t, equal seeds per arm, equal spread) at
5% divided by the number of interventions: under Holm's procedure that is the level an intervention must
reach when all the others change nothing, so the plan holds whatever the others do. The seed SD is given,
or measured: the baseline's seed SD in an experiment's finished runs.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Callable, Optional

from gptlab.errors import UserError
from gptlab.experiments import stats

POWER_TABLE_SEEDS = (3, 5, 8, 10, 15, 20, 30)


def paired_spread(comparison) -> Optional[tuple[float, int]]:
    """(pooled SD of per-seed paired differences, pairs) over the interventions whose seeds pair with the baseline's
    (same seeds, same data order); None when none has two or more pairs."""
    variances, pairs = [], 0
    for group in comparison.groups:
        if group is comparison.baseline or not group.arm(comparison.baseline).same_data_order:
            continue
        base = {run.seed: run.test_loss for run in comparison.baseline.runs if run.stopped is None}
        differences = [base[run.seed] - run.test_loss for run in group.runs if run.stopped is None and run.seed in base]
        if len(differences) >= 2:
            variances.append(stats.describe(differences).sd ** 2)
            pairs += len(differences)
    return (math.sqrt(statistics.fmean(variances)), pairs) if variances and any(variances) else None


def measured_spread(
    experiment_file: Path, datasets_dir: Optional[Path], echo: Callable[[str], Any]
) -> tuple[float, int, int, Optional[tuple[float, int]]]:
    """(baseline seed SD, finite baseline seeds, interventions, paired_spread) of an experiment's finished runs."""
    from gptlab.experiments.runner import experiment_comparison
    from gptlab.experiments.spec import load_experiment

    experiment = load_experiment(experiment_file)
    comparison = experiment_comparison(experiment, datasets_dir, echo=echo)
    losses = comparison.baseline.finite_losses
    if len(losses) < 2:
        raise UserError(
            f"{experiment_file}: the baseline has {len(losses)} finished seed(s) with a finite test loss; "
            "a seed SD needs two or more (give --sd instead)"
        )
    sd = stats.describe(losses).sd
    if sd <= 0:
        raise UserError(
            f"{experiment_file}: the baseline's {len(losses)} seeds gave the same test loss, so the seed changes nothing "
            "there and no seed count follows from it (give --sd instead)"
        )
    return sd, len(losses), len(experiment.variants) - 1, paired_spread(comparison)


def plan_seeds(
    effect: float,
    sd: Optional[float],
    target_power: float = stats.POWER,
    interventions: Optional[int] = None,
    experiment_file: Optional[Path] = None,
    datasets_dir: Optional[Path] = None,
    echo: Callable[[str], Any] = print,
    paired_sd: Optional[float] = None,
) -> dict[str, Any]:
    """The seeds per arm, the power at a few seed counts, and one line of words. With `paired_sd` (the SD of per-seed
    differences, intervention and baseline trained on the same seeds), or one measured in the experiment's finished
    runs, the plan is for the paired design the comparison then uses: the paired t-test's exact power."""
    source = "given"
    paired_source = "given"
    if sd is None and paired_sd is None:
        if experiment_file is None:
            raise UserError(
                "experiment seeds: give --sd (the seed-to-seed SD of the test loss), --paired-sd, or an experiment file "
                "to measure them from"
            )
        sd, measured_seeds, counted, paired = measured_spread(experiment_file, datasets_dir, echo)
        source = f"measured over {measured_seeds} baseline seeds of {experiment_file}"
        if paired is not None:
            paired_sd, pairs = paired
            paired_source = f"measured over {pairs} seed pairs of {experiment_file}"
        interventions = interventions or counted or 1
    interventions = interventions or 1
    if paired_sd is not None:
        return _plan_paired(effect, paired_sd, paired_source, target_power, interventions, sd)
    level = stats.family_alpha(interventions)
    needed = stats.seeds_per_arm(effect, sd, target_power, interventions)
    powers = {n: stats.power(effect, sd, n, n, level) for n in POWER_TABLE_SEEDS}
    holm = f", {interventions} interventions (Holm: alpha {level:.3g} for each)" if interventions > 1 else ""
    if needed is None:
        summary = f"More than {stats.MAX_SEEDS:,} seeds per arm would be needed"
    else:
        summary = f"{needed} seeds per arm (baseline and each intervention)"
    summary += (
        f" to find an improvement of {effect:g} with {target_power:.0%} power, two-sided t-test at 5%{holm}; "
        f"seed SD {sd:.4g} ({source}), an effect of {effect / sd:.2f} SD.\n"
        "Power with n seeds per arm: " + ", ".join(f"{n}: {p:.0%}" for n, p in powers.items())
    )
    return {
        "effect": effect,
        "sd": sd,
        "sd_source": source,
        "effect_in_sd": effect / sd,
        "power": target_power,
        "interventions": interventions,
        "alpha_per_intervention": level,
        "seeds_per_arm": needed,
        "power_by_seeds": {str(n): p for n, p in powers.items()},
        "summary": summary,
    }


def _plan_paired(
    effect: float, paired_sd: float, source: str, target_power: float, interventions: int, sd: Optional[float]
) -> dict[str, Any]:
    level = stats.family_alpha(interventions)
    needed = stats.seeds_paired(effect, paired_sd, target_power, interventions)
    powers = {n: stats.paired_power(effect, paired_sd, n, level) for n in POWER_TABLE_SEEDS}
    holm = f", {interventions} interventions (Holm: alpha {level:.3g} for each)" if interventions > 1 else ""
    if needed is None:
        summary = f"More than {stats.MAX_SEEDS:,} seeds would be needed"
    else:
        summary = f"{needed} seeds, each trained as the baseline and as each intervention (a paired design)"
    unpaired = stats.seeds_per_arm(effect, sd, target_power, interventions) if sd else None
    summary += (
        f" to find an improvement of {effect:g} with {target_power:.0%} power, paired t-test at 5%{holm}; "
        f"SD of per-seed differences {paired_sd:.4g} ({source}), an effect of {effect / paired_sd:.2f} SD"
        + (f"; unpaired, with seed SD {sd:.4g}: {unpaired} seeds per arm" if unpaired else "")
        + ".\nPower with n seeds: "
        + ", ".join(f"{n}: {p:.0%}" for n, p in powers.items())
    )
    return {
        "effect": effect,
        "design": "paired",
        "paired_sd": paired_sd,
        "paired_sd_source": source,
        "sd": sd,
        "effect_in_sd": effect / paired_sd,
        "power": target_power,
        "interventions": interventions,
        "alpha_per_intervention": level,
        "seeds_per_arm": needed,
        "unpaired_seeds_per_arm": unpaired,
        "power_by_seeds": {str(n): p for n, p in powers.items()},
        "summary": summary,
    }
