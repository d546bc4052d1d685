"""The `gptlab` command: sub-commands only. Each parses its arguments, calls one function, prints its result."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import click

from gptlab import __version__
from gptlab.click_types import FRACTION, NON_NEGATIVE, POSITIVE, SEED, FiniteFloatRange
from gptlab.config import EVAL_PRECISIONS
from gptlab.errors import UserError
from gptlab.rundir import DEFAULT_CHECKPOINT, MODEL_FILE, TRAIN_FILE

CHECKPOINT_HELP = "Which checkpoint: latest (the last one written), best, or a checkpoint folder name."


def _print_json(data) -> None:
    from gptlab.files import strict_json

    click.echo(strict_json(data, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gptlab")
def cli() -> None:
    """Pre-train GPT-2-style base models from scratch and measure which training changes pay off.

    A run is a directory holding model.json and train.json (the same files the ddp-base-model-from-scratch harness's ddp_train.py reads).
    Typical path: prepare -> train -> eval -> generate. `gptlab demo` does all four on the embedded corpus.
    """


@cli.command()
@click.argument("source")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--validation-fraction",
    type=FRACTION,
    default=0.05,
    show_default=True,
    help="Share of documents (or tokens) for the validation split.",
)
@click.option(
    "--test-fraction",
    type=FRACTION,
    default=0.05,
    show_default=True,
    help="Share of documents (or tokens) for the test split.",
)
@click.option(
    "--split-by",
    type=click.Choice(["auto", "documents", "tokens"]),
    default="auto",
    show_default=True,
    help="documents: a seeded draw per document; tokens: contiguous token ranges (train first), as the book splits "
    "its one story; auto: documents when each split would get at least 20 of them, else tokens.",
)
@click.option(
    "--split-rule",
    default=None,
    metavar="rows:P",
    help="First P% of rows train, the rest validation, no test "
    "(`datasets`' train[:P%] / train[P%:]); rows:99 is the users' FineWeb split.",
)
@click.option("--seed", type=SEED, default=1234, show_default=True, help="Seed of the per-document split draw.")
@click.option(
    "--text-field", default="text", show_default=True, help="Field (.jsonl) or column (.parquet, hf:) holding the text."
)
@click.option(
    "--glob", default=None, help="In a folder SOURCE, read only the files matching this pattern (e.g. '**/*.md')."
)
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of .txt/.jsonl files.")
@click.option("--name", "hf_name", default=None, help="hf: sources: the dataset configuration, e.g. sample-10BT.")
@click.option("--split", "hf_split", default="train", show_default=True, help="hf: sources: the split to read.")
@click.option("--revision", "hf_revision", default=None, help="hf: sources: branch, tag or commit.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Tokenising processes (default: every core); the output is the same for any number.",
)
@click.option(
    "--max-tokens", type=click.IntRange(min=1), default=None, help="Stop once the train split holds this many tokens."
)
@click.option(
    "--context-length",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Smallest context you will train with: every split must hold one window of it plus a target token.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace a token dataset (or an interrupted prepare) already in OUT_DIR."
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def prepare(
    source: str,
    out_dir: Path,
    validation_fraction: float,
    test_fraction: float,
    split_by: str,
    split_rule: Optional[str],
    seed: int,
    text_field: str,
    glob: Optional[str],
    encoding: str,
    hf_name: Optional[str],
    hf_split: str,
    hf_revision: Optional[str],
    workers: Optional[int],
    max_tokens: Optional[int],
    context_length: int,
    overwrite: bool,
    no_progress: bool,
) -> None:
    """Tokenise SOURCE into a token dataset in OUT_DIR.

    SOURCE is a .txt file (documents separated by <|endoftext|>), a folder (every text file, or the
    parquet shards of a Hugging Face download), a .jsonl or .parquet file, `hf:OWNER/NAME` (a Hugging
    Face dataset, streamed; needs `pip install 'gptlab[hf]'`), or `brown` (the embedded Brown Corpus).
    OUT_DIR receives train/validation/test.safetensors (uint16 GPT-2 tokens, each document followed by
    <|endoftext|>) and meta.json. An interrupted prepare resumes when run again with the same options.
    """
    from gptlab.data.prepare import SplitFractions, prepare_dataset
    from gptlab.data.sources import SourceOptions

    options = SourceOptions(text_field, encoding, glob, hf_name, hf_split, hf_revision)
    meta = prepare_dataset(
        source,
        out_dir,
        SplitFractions(validation_fraction, test_fraction),
        seed,
        text_field,
        overwrite,
        show_progress=not no_progress,
        split_by=split_by,
        split_rule=split_rule,
        workers=workers,
        max_tokens=max_tokens,
        context_length=context_length,
        source_options=options,
    )
    by_tokens = meta["split_rule"]["by"] == "tokens"
    counts = ", ".join(
        f"{name} {meta['tokens'][name]:,} tokens" + ("" if by_tokens else f" / {meta['documents'][name]:,} docs")
        for name in meta["tokens"]
    )
    how = (
        f"{sum(meta['documents'].values()):,} document(s) cut into contiguous token ranges"
        if by_tokens
        else f"split by {meta['split_rule']['by']}"
    )
    skipped = meta["source"].get("skipped_files")
    click.echo(
        f"Wrote {out_dir}: {counts} ({how})" + (f"; skipped {skipped} file(s) that are not text" if skipped else "")
    )


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--preset",
    required=True,
    type=click.Choice(["gpt2-small", "gpt2-small-tied", "gpt2-medium", "gpt2-large", "gpt2-xl", "demo"]),
    help="GPT-2 sizes with the book's values and the ddp-base-model-from-scratch baseline's train.json; "
    "demo: the small model of `gptlab demo`.",
)
@click.option(
    "--dataset", default=None, help="train.json's dataset (default: gpjt/fineweb-gpt2-tokens; demo: data/brown)."
)
def init(run_dir: Path, preset: str, dataset: Optional[str]) -> None:
    """Start a run: write RUN_DIR/model.json and train.json from a preset. Never overwrites either file."""
    from gptlab.presets import init_run

    result = init_run(run_dir, preset, dataset)
    click.echo(
        f"Wrote {run_dir / MODEL_FILE} and {run_dir / TRAIN_FILE} ({preset}, {result['parameters']:,} parameters). "
        f"Next: gptlab train {run_dir} --dry-run"
    )


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--datasets-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where Hugging Face datasets are looked for and downloaded (default: $GPTLAB_DATASETS_DIR or ./datasets).",
)
@click.option(
    "--resume", default=None, metavar="CHECKPOINT", help="Continue from a checkpoint: latest, best, or a folder name."
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config key for this run (repeatable), e.g. --set learning_rate=0.001; "
    "precision=... replaces the users' use_amp, lr_schedule=... their schedule_learning_rate.",
)
@click.option(
    "--no-progress",
    is_flag=True,
    help="No progress bar: log lines on the console instead (metrics.jsonl is still written).",
)
@click.option(
    "--log-to",
    "log_to",
    multiple=True,
    type=click.Choice(["tensorboard", "wandb"]),
    help="Also send the metrics to this tracker (repeatable); replaces train.json's loggers for this run.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate the files and the dataset and print the plan (steps, tokens, checkpoints, "
    "FLOPs, memory per GPU, which cards fit, time and cost); write nothing. See docs/planning.md.",
)
@click.option(
    "--world-size",
    type=int,
    default=1,
    show_default=True,
    help="With --dry-run: GPUs the run will use (torchrun's nproc_per_node x nodes).",
)
@click.option(
    "--bench",
    "bench_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="With --dry-run: a `gptlab bench --json` result whose measured tokens/s (and MFU) the time estimate uses.",
)
@click.option(
    "--mfu",
    type=float,
    default=None,
    help="With --dry-run: model FLOPs utilisation assumed on every card (default 0.35, or the --bench file's).",
)
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
def train(
    run_dir: Path,
    datasets_dir: Optional[Path],
    resume: Optional[str],
    assignments: tuple[str, ...],
    no_progress: bool,
    log_to: tuple[str, ...],
    dry_run: bool,
    world_size: int,
    bench_file: Optional[Path],
    mfu: Optional[float],
    as_json: bool,
) -> None:
    """Train the run in RUN_DIR from its model.json and train.json.

    Writes metrics.jsonl (one record per step), checkpoints/ (with `latest` and `best` links),
    train.log and summary.json into RUN_DIR. Works under torchrun for several processes.
    """
    from gptlab.config import merge_overrides, parse_assignments

    overrides = parse_assignments(assignments)
    if not dry_run:
        planning_only = [
            name
            for name, given in (
                ("--world-size", world_size != 1),
                ("--bench", bench_file),
                ("--mfu", mfu),
                ("--json", as_json),
            )
            if given
        ]
        if planning_only:
            raise UserError(f"{', '.join(planning_only)}: only with --dry-run")
        from gptlab.train.loop import train_run

        if log_to:
            overrides = merge_overrides(overrides, {"model": {}, "train": {"loggers": list(dict.fromkeys(log_to))}})
        train_run(run_dir, datasets_dir, overrides, resume, show_progress=not no_progress)
        return
    if resume is not None:
        raise UserError("--resume: not with --dry-run, which plans a run from its first step")
    from gptlab.bench.plan import format_plan, plan_run

    plan = plan_run(
        run_dir, world_size=world_size, datasets_dir=datasets_dir, overrides=overrides, bench_file=bench_file, mfu=mfu
    )
    _print_json(plan) if as_json else click.echo("\n".join(format_plan(plan)))


class _EvalCommand(click.Command):
    """`gptlab eval`, whose --task choices and each task's own flags come from the task registry
    (gptlab.evaluate.tasks). They are added the first time this command parses its arguments or prints its
    help, because the registry imports the task modules, and with them torch: every other command, and
    `gptlab --help`, start without it (about 2 s per process on a CPU machine)."""

    _registry_read = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._registry_read:
            self._registry_read = True
            task, flags = _task_parameters()
            before = next(index for index, param in enumerate(self.params) if param.name == "no_progress")
            self.params[before:before] = [task]
            self.params.extend(flags)
        return super().get_params(ctx)


def _task_parameters() -> tuple[click.Option, list[click.Option]]:
    """--task, and each task's own flags declared once; a flag several tasks take says what it means to each."""
    from gptlab.evaluate.tasks import all_options, get_task, tasks

    known = tasks()
    task = click.Option(
        ["--task"],
        type=click.Choice(list(known)),
        default="loss",
        show_default=True,
        help="; ".join(f"{entry.name}: {entry.summary}" for entry in known.values()),
    )

    def task_help(owner: str, name: str) -> str:
        options = get_task(owner).options
        return next((arguments.get("help", "") for option, _, arguments in options if option == name), "")

    flags = []
    for name, declarations, arguments, owners in all_options():
        helps = [f"{owner}: {text}" for owner in owners if (text := task_help(owner, name))]
        extra = {
            **arguments,
            "help": "; ".join(helps) if len(owners) > 1 else f"{owners[0]}: {arguments.get('help', '')}",
        }
        flags.append(
            click.Option([*declarations, name], default=None, **{k: v for k, v in extra.items() if k != "default"})
        )
    return task, flags


@cli.command(name="eval", cls=_EvalCommand)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--checkpoint", default=DEFAULT_CHECKPOINT, show_default=True, help=CHECKPOINT_HELP)
@click.option(
    "--precision",
    type=click.Choice(EVAL_PRECISIONS),
    default="fp32",
    show_default=True,
    help="Numerics of the forward pass.",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option(
    "--save",
    is_flag=True,
    help="Also write the result to RUN_DIR/evaluation.json (one entry per task), where `gptlab compare` reads it.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def evaluate(
    run_dir: Path, checkpoint: str, precision: str, as_json: bool, save: bool, task: str, no_progress: bool, **options
) -> None:
    """Evaluate a run's checkpoint with one task (default: the loss on the test split, the same tokens every time).

    The users' published "test set loss" is `--split validation --start-token 50000000 --batches 3200
    --batch-size 6 --precision fp16`. `--task hellaswag` scores HellaSwag instead: acc_norm picks the ending
    with the lowest mean loss per token (about 0.29 for the original GPT-2 small), acc the lowest summed loss.
    `--task ift` fine-tunes a copy on an instruction set and reports the IFT test loss (see `gptlab judge`).
    """
    from gptlab.evaluate.tasks import get_task, run_task

    result = run_task(
        task, run_dir, checkpoint=checkpoint, precision=precision, save=save, show_progress=not no_progress, **options
    )
    _print_json(result) if as_json else click.echo(get_task(task).describe(result))
    if save:
        _say_saved(run_dir, as_json)


def _say_saved(run_dir: Path, as_json: bool) -> None:
    """Name the file `--save` wrote; with --json on stderr, so the output stays one JSON document."""
    from gptlab.rundir import EVALUATION

    click.echo(f"Saved to {run_dir / EVALUATION}", err=as_json)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--prompt", default="Every effort moves you", show_default=True, help="Text to continue.")
@click.option(
    "--max-new-tokens",
    "--tokens",
    "new_tokens",
    type=NON_NEGATIVE,
    default=20,
    show_default=True,
    help="New tokens to generate (--tokens is the older name).",
)
@click.option(
    "--temperature",
    type=FiniteFloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Softmax temperature; 0 is greedy decoding.",
)
@click.option(
    "--top-k", type=POSITIVE, default=25, show_default=True, help="Sample only among the k most likely tokens."
)
@click.option("--seed", type=SEED, default=None, help="Seed for a reproducible sample.")
@click.option("--checkpoint", default=DEFAULT_CHECKPOINT, show_default=True, help=CHECKPOINT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def generate(
    run_dir: Path,
    prompt: str,
    new_tokens: int,
    temperature: float,
    top_k: int,
    seed: Optional[int],
    checkpoint: str,
    as_json: bool,
) -> None:
    """Continue a prompt with a run's model: the smoke test (top-k, then temperature, then a draw)."""
    from gptlab.evaluate.sample import generate_from_run

    result = generate_from_run(run_dir, prompt, new_tokens, temperature, top_k, seed, checkpoint)
    _print_json(result) if as_json else click.echo(result["text"])


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--judge-model", default="gpt-4o-mini", show_default=True, help="The judge's model name on the server.")
@click.option(
    "--judge-api",
    type=click.Choice(["responses", "chat"]),
    default="responses",
    show_default=True,
    help="responses: the Responses API; chat: Chat Completions, for servers that speak only that.",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds one request may take before it counts as a failed try.",
)
@click.option(
    "--retries",
    type=NON_NEGATIVE,
    default=2,
    show_default=True,
    help="Further tries for an item whose answer is not the JSON asked for (or timed out); then it counts as failed.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the per-item shuffle of the models.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def judge(
    sources: tuple[str, ...],
    judge_model: str,
    judge_api: str,
    timeout: float,
    retries: int,
    seed: int,
    as_json: bool,
    no_progress: bool,
) -> None:
    """An LLM judge scores the ift responses of two or more models (runs or responses files) item by item.

    The server is OPENAI_BASE_URL (default OpenAI's) with the key OPENAI_API_KEY; a local Ollama, vLLM or
    llama.cpp server works. Writes NAME.judged.json beside each responses file, and a run's mean into its
    evaluation.json, where compare, the report and the model card read it.
    """
    from gptlab.experiments.judge import format_table, judge_sources

    summary = judge_sources(list(sources), judge_model, judge_api, timeout, retries, seed, not no_progress)
    _print_json(summary) if as_json else click.echo("\n".join(format_table(summary)))


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Folder for the prepared corpus and the run.",
)
@click.option(
    "--seconds",
    type=FiniteFloatRange(min=0.0, min_open=True),
    default=180.0,
    show_default=True,
    help="Training time budget; the token count is planned from measured speed.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Train exactly this many steps instead of planning from --seconds.",
)
@click.option("--seed", type=SEED, default=42, show_default=True, help="random_seed of the run.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def demo(out_dir: Path, seconds: float, steps: Optional[int], seed: int, no_progress: bool) -> None:
    """Prepare the embedded Brown Corpus, train a small GPT for a few minutes, then print the summary,
    the test loss beside the unigram baseline, and a sample from "Every effort moves you"."""
    from gptlab.demo import run_demo

    run_demo(out_dir, seconds, seed, show_progress=not no_progress, steps=steps)


# --- sub-commands defined beside the code they drive ------------------------------------------------
# (each module exposes click commands; registering them here keeps `gptlab --help` complete)
from gptlab.export.commands import export, import_hf, upload  # noqa: E402

cli.add_command(export)
cli.add_command(upload)
cli.add_command(import_hf)

from gptlab.experiments.commands import compare, experiment, report  # noqa: E402

cli.add_command(experiment)
cli.add_command(compare)
cli.add_command(report)

from gptlab.bench_command import bench  # noqa: E402
from gptlab.data.commands import data  # noqa: E402

cli.add_command(data)

cli.add_command(bench)

from gptlab.cloud.commands import cloud  # noqa: E402
from gptlab.notify.commands import notify  # noqa: E402

cli.add_command(notify)
cli.add_command(cloud)


def main() -> None:
    try:
        cli.main(prog_name="gptlab", standalone_mode=False)
    except UserError as error:
        # Under torchrun every rank meets the same problem; one copy of the message is enough.
        if os.environ.get("RANK", "0") == "0":
            for line in error.lines:
                click.echo(f"error: {line}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as error:  # a full device or read-only folder met by a write with no handling of its own
        from gptlab.files import is_out_of_space, is_read_only, out_of_space_error, read_only_error

        if is_read_only(error):
            click.echo(f"error: {read_only_error(error).lines[0]}", err=True)
            sys.exit(2)
        if not is_out_of_space(error):
            raise
        what = getattr(error, "filename", None) or "a file"
        click.echo(f"error: {out_of_space_error(what, None, cleaned=False).lines[0]}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
