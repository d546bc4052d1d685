"""Click commands: `gptlab experiment plan|run|report|seeds`, `gptlab compare` and `gptlab report`.

Each parses its arguments, calls one function, prints its result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

FORMAT_OPTION = click.option(
    "--format",
    "output_format",
    type=click.Choice(["terminal", "markdown", "csv", "json"]),
    default="terminal",
    show_default=True,
    help="How to print the table.",
)
COLUMNS_OPTION = click.option(
    "--columns",
    default=None,
    metavar="NAME,...",
    help="The table's columns, in this order, e.g. run,test_loss,ppl,improvement,verdict (csv: its field names); "
    "an unknown name lists the allowed ones. Default: every column (a narrow terminal leaves some out and says which).",
)
DATASETS_OPTION = click.option(
    "--datasets-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where Hugging Face datasets are looked for (as for `train`).",
)
CHARTS_OPTION = click.option(
    "--charts",
    "charts_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write loss-overlay.png and test-loss-difference.png into this folder.",
)
CHART_FORMAT_OPTION = click.option(
    "--chart-format",
    type=click.Choice(["png", "svg", "pdf"]),
    default="png",
    show_default=True,
    help="File format of the --charts files (svg and pdf for print and blogs).",
)
EXPERIMENT_FILE = click.argument("experiment_file", type=click.Path(dir_okay=False, path_type=Path))
SEEDS_OPTION = click.option(
    "--seeds",
    "seed_count",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Only the first N of the file's seeds: a quick look, which the whole study later extends "
    "(the runs already done are kept).",
)
BUDGET_OPTION = click.option(
    "--budget",
    type=click.Choice(["time", "cost", "tokens"]),
    default=None,
    help="Also compare every run at the cheapest run's training time, money or tokens (validation loss read from its "
    "curve), with the time and money each needed to reach the baseline's loss, projections and per-hour/per-dollar verdicts.",
)


def _parse_prices(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, float]:
    """Checked as the arguments are read, so a typo is reported before any run is loaded or evaluated."""
    from gptlab.experiments.budget import parse_prices

    return parse_prices(values)


PRICE_OPTION = click.option(
    "--cost-per-hour",
    "prices",
    multiple=True,
    callback=_parse_prices,
    metavar="RUN=PRICE",
    help="With --budget: dollars per hour of RUN (a run directory or group label), setting or correcting train.json's "
    "cost_per_hour; repeatable.",
)
MIXED_OPTION = click.option(
    "--allow-mixed-checkpoints",
    is_flag=True,
    help="Compare runs evaluated at different checkpoint steps or tokens trained (noted under the table).",
)


def _echo_err(line: str) -> None:
    click.echo(line, err=True)


def _column_list(columns: Optional[str]) -> Optional[list[str]]:
    """`--columns a, b,c` as names; None when the option is absent."""
    return None if columns is None else [name.strip() for name in columns.split(",") if name.strip()]


def _show(
    comparison,
    output_format: str,
    charts_dir: Optional[Path],
    html_path: Optional[Path] = None,
    title: Optional[str] = None,
    chart_format: str = "png",
    columns: Optional[str] = None,
    budget_kind: Optional[str] = None,
    prices: Optional[dict[str, float]] = None,
    budget=None,
) -> None:
    from gptlab.experiments.budget import budget_if_asked, render_comparison

    if budget is None:
        budget = budget_if_asked(comparison, budget_kind, prices)
    click.echo(render_comparison(comparison, budget, output_format, _column_list(columns)), nl=False)
    if charts_dir is not None:
        from gptlab.experiments.charts import draw_comparison_charts

        for path in draw_comparison_charts(comparison, charts_dir, chart_format):
            _echo_err(f"Wrote {path}")
        if budget is not None:
            from gptlab.experiments.budget import draw_budget_charts

            for path in draw_budget_charts(budget, charts_dir, chart_format):
                _echo_err(f"Wrote {path}")
    if html_path is not None:
        from gptlab.experiments.report import write_report

        _echo_err(f"Wrote {write_report(comparison, html_path, title, budget)}")


@click.group()
def experiment() -> None:
    """Plan, run and report an experiment: a baseline, interventions and their stacks, each over several seeds.

    The experiment file (JSON or TOML) is described in docs/experiments.md.
    """


@experiment.command()
@EXPERIMENT_FILE
@SEEDS_OPTION
def plan(experiment_file: Path, seed_count: Optional[int]) -> None:
    """Write one run directory per (variant, seed) with fully resolved model.json and train.json, and list them."""
    from gptlab.experiments.plan import format_plan, plan_runs, streams_words, write_plan
    from gptlab.experiments.spec import load_experiment
    from gptlab.experiments.winners import unchosen

    experiment = load_experiment(experiment_file).with_seeds(seed_count)
    planned = plan_runs(experiment)
    words = streams_words(experiment)
    write_plan(planned)
    for line in format_plan(planned):
        click.echo(line)
    for name in unchosen(experiment):
        click.echo(f"{name}: a stack of the winners, chosen and trained once the interventions have finished")
    click.echo(words)


@experiment.command()
@EXPERIMENT_FILE
@click.option(
    "--launcher",
    default=None,
    metavar="COMMAND",
    help='Train each run as `COMMAND -m gptlab train RUN_DIR`, e.g. --launcher "torchrun --nproc_per_node 8".',
)
@DATASETS_OPTION
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs trained at once, each in its own process with the cores shared among them (OMP_NUM_THREADS = "
    "cores / jobs unless set); each run's output then goes to its train.log only.",
)
@SEEDS_OPTION
def run(
    experiment_file: Path,
    launcher: Optional[str],
    datasets_dir: Optional[Path],
    no_progress: bool,
    jobs: int,
    seed_count: Optional[int],
) -> None:
    """Train and evaluate every planned run in turn: finished runs are skipped, interrupted ones resumed.

    Stop it at any time and start it again to carry on. A stack of winners ("stacks": {"NAME": "winners"}) is
    chosen once the interventions have finished, then trained.
    """
    from gptlab.experiments.runner import run_experiment
    from gptlab.experiments.spec import load_experiment

    run_experiment(
        load_experiment(experiment_file).with_seeds(seed_count),
        launcher,
        datasets_dir,
        show_progress=not no_progress,
        echo=click.echo,
        jobs=jobs,
    )


@experiment.command(name="report")
@EXPERIMENT_FILE
@FORMAT_OPTION
@COLUMNS_OPTION
@click.option(
    "-o",
    "--output",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write an HTML report here.",
)
@CHARTS_OPTION
@CHART_FORMAT_OPTION
@DATASETS_OPTION
@MIXED_OPTION
@BUDGET_OPTION
@PRICE_OPTION
@SEEDS_OPTION
def experiment_report(
    experiment_file: Path,
    output_format: str,
    columns: Optional[str],
    html_path: Optional[Path],
    charts_dir: Optional[Path],
    chart_format: str,
    datasets_dir: Optional[Path],
    allow_mixed_checkpoints: bool,
    budget: Optional[str],
    prices: dict[str, float],
    seed_count: Optional[int],
) -> None:
    """Print the comparison table of an experiment's finished runs (one row per variant), judged against seed noise."""
    from gptlab.experiments.runner import experiment_comparison
    from gptlab.experiments.spec import load_experiment
    from gptlab.experiments.tables import check_columns

    check_columns(_column_list(columns), output_format)
    loaded = load_experiment(experiment_file).with_seeds(seed_count)
    comparison = experiment_comparison(
        loaded,
        datasets_dir,
        echo=_echo_err,
        allow_mixed_checkpoints=allow_mixed_checkpoints,
        budget=budget is not None,
    )
    _show(
        comparison,
        output_format,
        charts_dir,
        html_path,
        f"Experiment {loaded.name}",
        chart_format,
        columns,
        budget,
        prices,
    )


@experiment.command()
@click.argument("experiment_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--effect",
    type=click.FloatRange(min=0, min_open=True),
    required=True,
    help="The smallest test-loss improvement worth finding (nats).",
)
@click.option(
    "--sd",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="The seed-to-seed SD of the test loss; default: the baseline's, measured in EXPERIMENT_FILE's finished runs.",
)
@click.option(
    "--paired-sd",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="The SD of per-seed differences (intervention and baseline trained on the same seeds): plans the paired "
    "design; default: measured in EXPERIMENT_FILE's finished runs where seeds pair.",
)
@click.option(
    "--power",
    "target_power",
    type=click.FloatRange(0.5, 1, max_open=True),
    default=0.8,
    show_default=True,
    help="The chance of finding an improvement of that size.",
)
@click.option(
    "--interventions",
    type=click.IntRange(min=1),
    default=None,
    help="Interventions judged against one baseline (Holm); default 1, or EXPERIMENT_FILE's count.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@DATASETS_OPTION
def seeds(
    experiment_file: Optional[Path],
    effect: float,
    sd: Optional[float],
    paired_sd: Optional[float],
    target_power: float,
    interventions: Optional[int],
    as_json: bool,
    datasets_dir: Optional[Path],
) -> None:
    """How many seeds per arm find an improvement of --effect with --power: the exact power of the two-sided t-test
    (noncentral t), at 5% divided by the number of interventions (Holm's first step)."""
    from gptlab.experiments.seeds import plan_seeds
    from gptlab.files import strict_json

    plan = plan_seeds(
        effect, sd, target_power, interventions, experiment_file, datasets_dir, echo=_echo_err, paired_sd=paired_sd
    )
    click.echo(strict_json(plan, indent=2) if as_json else plan["summary"])


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--baseline",
    "baseline_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The baseline run (its seed group is the baseline); default: the group named baseline, else the first run's.",
)
@FORMAT_OPTION
@COLUMNS_OPTION
@CHARTS_OPTION
@CHART_FORMAT_OPTION
@DATASETS_OPTION
@MIXED_OPTION
@BUDGET_OPTION
@PRICE_OPTION
def compare(
    run_dirs: tuple[Path, ...],
    baseline_dir: Optional[Path],
    output_format: str,
    columns: Optional[str],
    charts_dir: Optional[Path],
    chart_format: str,
    datasets_dir: Optional[Path],
    allow_mixed_checkpoints: bool,
    budget: Optional[str],
    prices: dict[str, float],
) -> None:
    """Table of runs by test loss: improvement over the baseline with its interval, beyond or within seed noise, time, tokens/s, cost.

    Runs that differ only by seed form one row. Runs without evaluation.json are evaluated first, as the
    baseline was; runs evaluated on different test tokens or checkpoints are refused.
    """
    from gptlab.experiments.budget import compare_with_budget
    from gptlab.experiments.tables import check_columns

    check_columns(_column_list(columns), output_format)
    comparison, at_budget = compare_with_budget(
        list(run_dirs), baseline_dir, datasets_dir, _echo_err, allow_mixed_checkpoints, budget, prices
    )
    _show(comparison, output_format, charts_dir, chart_format=chart_format, columns=columns, budget=at_budget)


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="Where to write the HTML page.",
)
@click.option(
    "--baseline",
    "baseline_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="As for `compare`.",
)
@click.option("--title", default="gptlab comparison", show_default=True, help="Heading of the page.")
@DATASETS_OPTION
@BUDGET_OPTION
@PRICE_OPTION
def report(
    run_dirs: tuple[Path, ...],
    html_path: Path,
    baseline_dir: Optional[Path],
    title: str,
    datasets_dir: Optional[Path],
    budget: Optional[str],
    prices: dict[str, float],
) -> None:
    """One self-contained HTML page: the comparison table, loss overlay, difference-from-baseline chart, and each run's charts
    (with --budget, also the runs at equal time, money or tokens, and validation loss against hours and dollars)."""
    from gptlab.experiments.budget import compare_with_budget
    from gptlab.experiments.report import write_report

    comparison, at_budget = compare_with_budget(
        list(run_dirs), baseline_dir, datasets_dir, _echo_err, kind=budget, prices=prices
    )
    click.echo(f"Wrote {write_report(comparison, html_path, title, at_budget)}")
