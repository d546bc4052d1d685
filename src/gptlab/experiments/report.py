"""`gptlab report`: one self-contained HTML page (the comparison table, the comparison charts, with --budget the
runs at equal time or money and their chart, and every run's own charts, open), with images embedded as base64 data
URIs and every text escaped; it prints every chart whole (a print stylesheet: no closed sections, images at most the
page's width, no chart split across pages)."""

from __future__ import annotations

import base64
import html
import tempfile
import time
from pathlib import Path
from typing import Optional

from gptlab.experiments.budget import BUDGET_CHART, BudgetComparison, budget_html, draw_budget_chart
from gptlab.experiments.charts import draw_comparison_charts
from gptlab.experiments.compare import Comparison
from gptlab.experiments.tables import TABLE_COLUMNS, VERDICT_COLUMN, table_cells
from gptlab.files import atomic_write_text
from gptlab.rundir import GRAD_NORM_CHART, LEARNING_RATE_CHART, LOSS_CHART, ROUTING_CHART
from gptlab.train.charts import draw_run_charts

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; padding: 0 1em; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 0.74em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.35em; text-align: right; vertical-align: top; }
th { background: #f2f2f2; }
td:first-child, td.verdict, td:last-child { text-align: left; }
/* Fits a 1366-pixel laptop window: cells wrap at their spaces (a number is never cut), the verdict keeps room to
   read in two or three lines, run names and changes may break anywhere. */
td.verdict { min-width: 11em; }
td:first-child { overflow-wrap: anywhere; min-width: 5em; }
td:last-child { overflow-wrap: anywhere; min-width: 9em; }
.table-frame { overflow-x: auto; }
tr.baseline { background: #f7f7ff; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
details { margin: 0.4em 0; }
.notes li { font-size: 0.9em; margin: 0.2em 0; }
@media print {
  body { margin: 0; max-width: none; font-size: 10pt; }
  table { font-size: 7pt; }
  tr, img, li { break-inside: avoid; page-break-inside: avoid; }
  h1, h2, summary { break-after: avoid; page-break-after: avoid; }
  summary { list-style: none; font-weight: bold; }
  details::details-content { content-visibility: visible; display: block; }
}
"""
# Opens any section a reader closed, so a printed page shows every chart (the stylesheet does so where the browser
# supports ::details-content).
OPEN_FOR_PRINT = (
    '<script>window.addEventListener("beforeprint", () => '
    'document.querySelectorAll("details").forEach(section => { section.open = true; }));</script>'
)


def image_tag(path: Path, alt: str) -> str:
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def table_html(comparison: Comparison) -> str:
    head = "".join(f"<th>{html.escape(column)}</th>" for column in TABLE_COLUMNS)
    body = []
    for row in comparison.rows:
        css = ' class="baseline"' if row["noise"] == "baseline" else ""
        cells = "".join(
            f'<td class="verdict">{html.escape(cell)}</td>'
            if index == VERDICT_COLUMN
            else f"<td>{html.escape(cell)}</td>"
            for index, cell in enumerate(table_cells(row))
        )
        body.append(f'<tr{css} data-run="{html.escape(row["run"])}">{cells}</tr>')
    return (
        f'<div class="table-frame"><table id="comparison"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _run_sections(comparison: Comparison) -> str:
    sections = []
    for group in comparison.groups:
        for run in group.runs:
            if not (run.run_dir / LOSS_CHART).is_file():
                draw_run_charts(run.run_dir)
            images = "".join(
                image_tag(run.run_dir / name, f"{name} of {run.run_dir}")
                for name in (LOSS_CHART, GRAD_NORM_CHART, LEARNING_RATE_CHART, ROUTING_CHART)  # routing: MoE runs only
                if (run.run_dir / name).is_file()
            )
            outcome = run.stopped or f"test loss {run.test_loss:.4f}"
            title = f"{group.label}, seed {run.seed}: {outcome} ({run.run_dir})"
            sections.append(f"<details open><summary>{html.escape(title)}</summary>{images}</details>")
    return "".join(sections)


def report_html(comparison: Comparison, title: str, budget: Optional[BudgetComparison] = None) -> str:
    with tempfile.TemporaryDirectory(prefix="gptlab-report-") as scratch:
        overlay, difference = draw_comparison_charts(comparison, Path(scratch))
        charts = image_tag(overlay, "loss curves of every run") + image_tag(
            difference, "test-loss difference from the baseline"
        )
        worth = (
            budget_html(
                budget,
                image_tag(
                    draw_budget_chart(budget, Path(scratch) / BUDGET_CHART), "validation loss against time and money"
                ),
            )
            if budget is not None
            else ""
        )
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in comparison.notes)
    generated = time.strftime("%Y-%m-%d %H:%M %Z")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Generated by gptlab on {html.escape(generated)}; baseline: <b>{html.escape(comparison.baseline.label)}</b>.</p>"
        f'<h2>Test loss</h2>{table_html(comparison)}<ul class="notes">{notes}</ul>'
        f"<h2>Charts</h2>{charts}{worth}<h2>Runs</h2>{_run_sections(comparison)}{OPEN_FOR_PRINT}</body></html>\n"
    )


def write_report(
    comparison: Comparison, out_path: Path, title: Optional[str] = None, budget: Optional[BudgetComparison] = None
) -> Path:
    out_path = Path(out_path)
    atomic_write_text(out_path, report_html(comparison, title or "gptlab comparison", budget))
    return out_path
