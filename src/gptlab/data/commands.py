"""`gptlab data ...`: commands about prepared token datasets."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gptlab.errors import UserError


@click.group()
def data() -> None:
    """Look into prepared token datasets."""


@data.command(name="inspect")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--documents",
    "show_documents",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="How many of train's first documents to print.",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def inspect(directory: Path, show_documents: int, as_json: bool) -> None:
    """Tokens and documents per split, the first documents decoded, and checks: every id below the
    vocabulary size, every split ending with <|endoftext|>. Exits with 2 when a check fails."""
    from gptlab.data.inspect import inspect_dataset

    report = inspect_dataset(directory, show_documents)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        rule = report["split_rule"] or {}
        click.echo(f"{directory} (split by {rule.get('by', 'documents')}, vocabulary {report['vocab_size']:,})")
        for name, split in report["splits"].items():
            click.echo(
                f"  {name:<10} {split['tokens']:>15,} tokens  {split['documents']:>12,} documents  max id {split['max_id']:,}"
                f"  {'ends with <|endoftext|>' if split['ends_with_end_of_text'] else 'ends mid-document'}"
            )
        for index, text in enumerate(report["first_documents"]):
            click.echo(f"--- train document {index} ---\n{text}")
        click.echo("checks: " + ("all passed" if not report["problems"] else f"{len(report['problems'])} failed"))
    if report["problems"]:
        raise UserError(*report["problems"])
