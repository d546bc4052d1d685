"""The `export`, `upload` and `import-hf` sub-commands: each parses its arguments, calls one function, prints its result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from gptlab.click_types import SEED
from gptlab.errors import UserError
from gptlab.rundir import DEFAULT_CHECKPOINT
from gptlab.words import counted

CHECKPOINT_HELP = "Which checkpoint: latest (the last one written), best, or a checkpoint folder name."


def _read_eval_result(path: Optional[Path]) -> Optional[dict]:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"--eval-result {path}: cannot read it ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise UserError(
            f"--eval-result {path}: not valid JSON ({error.msg} at line {error.lineno}); give the output of `gptlab eval RUN_DIR --json`"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("loss"), (int, float)) or "checkpoint" not in data:
        raise UserError(
            f"--eval-result {path}: has no loss and checkpoint; give the output of `gptlab eval RUN_DIR --json`"
        )
    return data


def _card_options(function):
    """Options shared by `export` and `upload`: what goes into the model card."""
    function = click.option(
        "--language",
        default="en",
        show_default=True,
        help="The card's language metadata (an ISO 639-1 code; GPT-2's tokenizer was made for English).",
    )(function)
    function = click.option(
        "--license",
        "license_id",
        default=None,
        metavar="ID",
        help="The card's license metadata, a Hub license id such as mit, apache-2.0 or cc-by-4.0 (default: none stated).",
    )(function)
    function = click.option(
        "--seed",
        type=SEED,
        default=123,
        show_default=True,
        help="Seed of the smoke-test sample shown in the model card.",
    )(function)
    function = click.option(
        "--evaluate",
        is_flag=True,
        help="Compute the test loss for the card now (the whole test split, as `gptlab eval` does).",
    )(function)
    function = click.option(
        "--eval-result",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="JSON printed by `gptlab eval --json` for this checkpoint; its loss goes into the model card "
        "(default: RUN_DIR/evaluation.json from `gptlab eval --save`, when it is of this checkpoint).",
    )(function)
    function = click.option("--checkpoint", default=DEFAULT_CHECKPOINT, show_default=True, help=CHECKPOINT_HELP)(
        function
    )
    return function


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@_card_options
@click.option("--overwrite", is_flag=True, help="Replace a previous export in OUT_DIR.")
def export(
    run_dir: Path,
    out_dir: Path,
    checkpoint: str,
    eval_result: Optional[Path],
    evaluate: bool,
    seed: int,
    overwrite: bool,
    license_id: Optional[str],
    language: str,
) -> None:
    """Write a run's checkpoint as a standard transformers GPT-2 model in OUT_DIR.

    OUT_DIR receives config.json, model.safetensors (GPT2LMHeadModel names), generation_config.json, the
    GPT-2 tokenizer files and a model card README.md, so `AutoModelForCausalLM.from_pretrained(OUT_DIR)`
    and `AutoTokenizer.from_pretrained(OUT_DIR)` load it without trust_remote_code. The folder is built
    beside OUT_DIR and renamed into place.
    """
    from gptlab.export.hf import export_run

    result = export_run(
        run_dir,
        out_dir,
        checkpoint,
        overwrite,
        _read_eval_result(eval_result),
        evaluate,
        seed,
        license=license_id,
        language=language,
    )
    click.echo(f"Wrote {result['out_dir']} (checkpoint {result['checkpoint']}): {', '.join(result['files'])}")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("repo_id")
@_card_options
@click.option(
    "--private", is_flag=True, help="Create the repository as private (an existing repository keeps its visibility)."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Export, print the model card and list the files and sizes that would be uploaded, and stop: "
    "no network, no token needed.",
)
def upload(
    run_dir: Path,
    repo_id: str,
    checkpoint: str,
    eval_result: Optional[Path],
    evaluate: bool,
    seed: int,
    private: bool,
    dry_run: bool,
    license_id: Optional[str],
    language: str,
) -> None:
    """Export a run's checkpoint and push it to the Hugging Face Hub model repository REPO_ID.

    The token is HF_TOKEN or your saved login (`hf auth login`); it is never printed or written. The
    export is made in a temporary folder that is removed afterwards, whether or not the upload succeeds.
    """
    from gptlab.export.upload import upload_run

    result = upload_run(
        run_dir,
        repo_id,
        private,
        checkpoint,
        dry_run,
        _read_eval_result(eval_result),
        evaluate,
        seed,
        echo=click.echo,
        license=license_id,
        language=language,
    )
    if dry_run:
        click.echo(f"Model card (README.md) that would be uploaded:\n{result['card'].rstrip()}\n")
        visibility = "private" if private else "a new repository gets the owner's default visibility"
        click.echo(
            f"Dry run: would upload to {result['repo_id']} at {result['endpoint']} ({visibility}), checkpoint {result['checkpoint']}:"
        )
        for name, size in result["files"].items():
            click.echo(f"  {name}  {size:,} bytes")
        click.echo(f"  total  {result['total_bytes']:,} bytes")
    else:
        click.echo(f"Uploaded to {result['url']}")


@click.command(name="import-hf")
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--dataset",
    required=True,
    help="train.json's dataset for the new run: a token dataset folder or a Hugging Face dataset id (what `gptlab eval` reads).",
)
@click.option(
    "--microbatch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="train.json's microbatch_size (the default eval batch size).",
)
def import_hf(model_dir: Path, run_dir: Path, dataset: str, microbatch_size: int) -> None:
    """Turn a local transformers GPT-2 model folder into a gptlab run directory.

    MODEL_DIR is what `save_pretrained` writes for a GPT2LMHeadModel (config.json and model.safetensors
    or pytorch_model.bin, sharded or not). RUN_DIR gets model.json, train.json and one weights-only
    checkpoint that `latest` and `best` point at, for `gptlab eval` and `gptlab generate`.
    """
    from gptlab.export.hf import import_hf_model

    result = import_hf_model(model_dir, run_dir, dataset, microbatch_size)
    model = result["model"]
    click.echo(
        f"Imported {result['model_dir']} into {result['run_dir']}: {result['parameters']:,} parameters, {counted(model['n_layers'], 'layer')}, "
        f"{model['emb_dim']} wide, context {model['context_length']}, tied head: {model['tie_weights']}, QKV bias: {model['qkv_bias']}"
    )
