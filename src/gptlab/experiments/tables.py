"""Rendering a comparison: the table's columns and cells, and the terminal, Markdown, CSV and JSON writers.

compare.py judges (groups, statistics, verdicts: a Comparison with one row per group); this module only draws it.
The terminal table is drawn by `terminal_table`, which the budget table (budget.py) draws with too.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import sys
import textwrap
from typing import Any, Optional, Sequence

from gptlab.errors import UserError
from gptlab.experiments import hellaswag_column, ift_column, stats
from gptlab.experiments.compare import SLICE_KEYS, Comparison
from gptlab.files import strict_json
from gptlab.words import format_perplexity

FORMATS = ("terminal", "markdown", "csv", "json")


def _number(value: Optional[float], digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_duration(seconds: Optional[float]) -> str:
    """h:mm:ss, so hours read directly."""
    if seconds is None:
        return "-"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def format_cost(dollars: Optional[float]) -> str:
    """Cents for real runs; three significant digits for the fractions of a cent of a small experiment."""
    if dollars is None:
        return "-"
    return f"${dollars:,.2f}" if dollars >= 1 else f"${dollars:.3g}"


def _p_cell(value: Optional[float]) -> str:
    return "-" if value is None else stats.format_p(value)


TABLE_COLUMNS = (
    "run",
    "seeds",
    "test loss",
    "ppl",
    "sd",
    "min-max",
    "improvement",
    "improvement 95% CI",
    "d",
    "p",
    "p (Holm)",
    "verdict",
    "hellaswag",
    "ift",
    "time",
    "tokens/s",
    "tokens",
    "cost",
    "skipped",
    "changes",
)
VERDICT_COLUMN = TABLE_COLUMNS.index("verdict")


def table_cells(row: dict[str, Any]) -> list[str]:
    """One row as the strings every text format shows, in TABLE_COLUMNS order."""
    seeds = (
        str(row["seeds"]) if row["finite_seeds"] == row["seeds"] else f"{row['finite_seeds']} of {row['seeds']} finite"
    )
    spread = f"{row['min']:.4f}-{row['max']:.4f}" if row["finite_seeds"] > 1 else "-"
    interval = f"{row['improvement_ci'][0]:+.4f} to {row['improvement_ci'][1]:+.4f}" if row["improvement_ci"] else "-"
    improvement = _number(row["improvement"], signed=True)
    if row.get("matched_improvement") is not None:
        improvement += f" (matched seeds {row['matched_improvement']:+.4f})"
        interval += " (matched seeds)"
    return [
        row["run"],
        seeds,
        _number(row["test_loss"]),
        format_perplexity(row["ppl"]),
        _number(row["sd"]),
        spread,
        improvement,
        interval,
        _number(row["cohens_d"], 2, signed=True),
        _p_cell(row["p_value"]),
        _p_cell(row["p_holm"]),
        row["verdict"],
        hellaswag_column.cell(row),
        ift_column.cell(row),
        format_duration(row["training_seconds"]),
        f"{row['tokens_per_second']:,.0f}" if row["tokens_per_second"] is not None else "-",
        f"{row['tokens_seen']:,.0f}" if row["tokens_seen"] is not None else "-",
        format_cost(row["cost"]),
        str(row["skipped_steps"]),
        row["changes"],
    ]


# When the terminal is too narrow for every column even with long cells wrapped, these are left out first, in this
# order (and a note says so); the others always stay. Columns chosen with --columns are never left out.
NARROW_TERMINAL_DROPS = (
    "tokens",
    "skipped",
    "cost",
    "tokens/s",
    "time",
    "min-max",
    "sd",
    "d",
    "p",
    "seeds",
    "improvement 95% CI",
    "p (Holm)",
)
# `changes` can hold a long value (a path, a list); it folds within this share of the width rather than crowd the numbers.
CHANGES_WIDTH_SHARE = 4
TEXT_FORMATS = ("terminal", "markdown", "csv")


def column_name(header: str) -> str:
    """A table column's name for --columns: its header in lower case, other characters as "_" ("p (Holm)" -> p_holm)."""
    return re.sub(r"[^a-z0-9]+", "_", header.lower()).strip("_")


def column_names(output_format: str) -> tuple[str, ...]:
    """The names --columns accepts: the CSV field names for csv, the table's column names for terminal and markdown."""
    return CSV_FIELDS if output_format == "csv" else tuple(column_name(header) for header in TABLE_COLUMNS)


def _chosen_columns(columns: Optional[Sequence[str]], output_format: str) -> list[int]:
    """Indices into column_names(output_format) of the columns asked for, in the order asked; every one when None."""
    names = column_names(output_format)
    if columns is None:
        return list(range(len(names)))
    if not columns:
        raise UserError(f"--columns: name at least one column; for --format {output_format}: {', '.join(names)}")
    unknown = [name for name in columns if name not in names]
    if unknown:
        raise UserError(
            f"--columns {', '.join(unknown)}: not {'a column' if len(unknown) == 1 else 'columns'} of --format "
            f"{output_format}; choose from {', '.join(names)}"
        )
    return [names.index(name) for name in dict.fromkeys(columns)]


def _default_columns(comparison: Comparison, columns: Optional[Sequence[str]], output_format: str) -> list[int]:
    """The columns to draw: those asked for; by default every one, less the hellaswag column when no run has a score."""
    shown = _chosen_columns(columns, output_format)
    scored = any(hellaswag_column.saved_entry(run) for group in comparison.groups for run in group.runs)
    if columns is None and not scored:
        shown.remove(TABLE_COLUMNS.index("hellaswag"))
    if columns is None and not ift_column.any_saved(comparison.groups):
        shown.remove(TABLE_COLUMNS.index("ift"))
    return shown


def check_columns(columns: Optional[Sequence[str]], output_format: str) -> None:
    """Refuse a format or --columns the table cannot show (called before any run is evaluated, and by render)."""
    if output_format not in FORMATS:
        raise UserError(f"--format {output_format}: not a format; choose one of {', '.join(FORMATS)}")
    if output_format == "json" and columns is not None:
        raise UserError(f"--columns: only for --format {', '.join(TEXT_FORMATS)}; json holds every field")
    if output_format != "json":
        _chosen_columns(columns, output_format)


def terminal_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: Optional[int] = None,
    drops: Sequence[str] = (),
    fold: Sequence[str] = ("changes",),
) -> tuple[list[str], list[str]]:
    """(lines, headers left out) of a table drawn by rich to fit `width` (default: $COLUMNS, else the terminal's; none
    for a file or pipe, which keeps whole lines for grep): long cells wrap at spaces, a `fold` column within a quarter
    of the width; if the cells still do not fit, the `drops` columns are left out, in that order."""
    from rich import box
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    width = width or shutil.get_terminal_size(fallback=(0, 0)).columns or None
    console = Console(
        file=io.StringIO(), width=width or 10_000, color_system=None, highlight=False, markup=False, emoji=False
    )

    def table(shown: list[int]) -> Table:
        drawn = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
        for index in shown:
            folds = headers[index] in fold
            drawn.add_column(
                Text(headers[index]),
                overflow="fold",
                max_width=width // CHANGES_WIDTH_SHARE if folds and width else None,
            )
        for cells in rows:
            drawn.add_row(*(Text(cells[index]) for index in shown))
        return drawn

    def narrowest(shown: list[int]) -> int:
        return Measurement.get(console, console.options.update_width(sys.maxsize), table(shown)).minimum

    shown, left_out = list(range(len(headers))), []
    if width is None:
        console.width = Measurement.get(console, console.options, table(shown)).maximum
    else:
        for header in drops:
            if narrowest(shown) <= width:
                break
            if header in headers and headers.index(header) in shown:
                shown.remove(headers.index(header))
                left_out.append(header)
    console.print(table(shown))
    return [line.rstrip() for line in console.file.getvalue().splitlines()], left_out


def wrap_notes(notes: Sequence[str], width: Optional[int] = None) -> list[str]:
    """Notes under a terminal table, each wrapped to `width` (whole lines without one)."""
    width = width or shutil.get_terminal_size(fallback=(0, 0)).columns or None
    return [
        textwrap.fill(note, width, subsequent_indent="  ", break_on_hyphens=False) if width else note for note in notes
    ]


def _terminal(comparison: Comparison, columns: Optional[Sequence[str]] = None, width: Optional[int] = None) -> str:
    """The table to fit `width` (see terminal_table): if the numbers do not fit, NARROW_TERMINAL_DROPS are left out
    (never columns chosen with --columns) and a note names them."""
    width = width or shutil.get_terminal_size(fallback=(0, 0)).columns or None
    shown = _default_columns(comparison, columns, "terminal")
    cells = [table_cells(row) for row in comparison.rows]
    lines, left_out = terminal_table(
        [TABLE_COLUMNS[index] for index in shown],
        [[row[index] for index in shown] for row in cells],
        width,
        NARROW_TERMINAL_DROPS if columns is None else (),
    )
    notes = list(comparison.notes)
    if left_out:
        notes.insert(
            0,
            f"Left out to fit {width} characters: {', '.join(column_name(header) for header in left_out)}; a wider "
            "terminal (or COLUMNS=N) shows them, and --columns chooses.",
        )
    return "\n".join(lines + [""] + wrap_notes(notes, width)) + "\n"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (a "|" inside a cell escaped)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(cells) for cells in rows]


def _markdown(comparison: Comparison, columns: Optional[Sequence[str]] = None) -> str:
    shown = _default_columns(comparison, columns, "markdown")
    rows = [table_cells(row) for row in comparison.rows]
    lines = markdown_table(
        [TABLE_COLUMNS[index] for index in shown], [[cells[index] for index in shown] for cells in rows]
    )
    return "\n".join(lines + [""] + [f"- {note}" for note in comparison.notes]) + "\n"


CSV_FIELDS = (
    "run",
    "seeds",
    "finite_seeds",
    "test_loss",
    "ppl",
    "sd",
    "min",
    "max",
    "ci95_low",
    "ci95_high",
    "improvement",
    "improvement_ci_low",
    "improvement_ci_high",
    "matched_improvement",
    "cohens_d",
    "p_value",
    "p_holm",
    "verdict",
    "noise",
    "decided_by",
    "p_welch",
    "p_paired",
    "test",
    "baseline_sds",
    "seeds_needed",
    "detectable_effect",
    *hellaswag_column.CSV_KEYS,
    *ift_column.CSV_KEYS,
    "training_seconds",
    "tokens_per_second",
    "tokens_seen",
    "cost",
    "skipped_steps",
    "changes",
)


def csv_table(
    comparison: Comparison,
    columns: Optional[Sequence[str]] = None,
    extra_fields: Sequence[str] = (),
    extra: Optional[dict[str, dict[str, Any]]] = None,
) -> str:
    """One CSV row per group: the chosen CSV_FIELDS, then `extra_fields` from `extra` (by group label, e.g. the budget's)."""
    buffer = io.StringIO()
    fields = [CSV_FIELDS[index] for index in _chosen_columns(columns, "csv")] + list(extra_fields)
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in comparison.rows:
        low, high = row["improvement_ci"] or (None, None)
        flat = {**row, "improvement_ci_low": low, "improvement_ci_high": high, **(extra or {}).get(row["run"], {})}
        writer.writerow({key: ("" if value is None else value) for key, value in flat.items()})
    return buffer.getvalue()


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    evaluation = {
        key: comparison.evaluation.get(key)
        for key in (*SLICE_KEYS, "tokens", "precision", "dataset", "tokenizer", "tokens_sha256")
    }
    return {
        "baseline": comparison.baseline.label,
        "rows": comparison.rows,
        "notes": comparison.notes,
        "evaluation": evaluation,
        "hellaswag": comparison.hellaswag,
    }


def render(
    comparison: Comparison,
    output_format: str = "terminal",
    columns: Optional[Sequence[str]] = None,
    width: Optional[int] = None,
) -> str:
    """The comparison as `output_format`; `columns` (names from column_names) chooses and orders the table's columns,
    `width` the terminal table's width."""
    check_columns(columns, output_format)
    if output_format == "json":
        return strict_json(comparison_json(comparison), indent=2) + "\n"
    if output_format == "terminal":
        return _terminal(comparison, columns, width)
    return {"markdown": _markdown, "csv": csv_table}[output_format](comparison, columns)
