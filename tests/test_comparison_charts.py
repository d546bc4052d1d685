"""Comparison charts from run directories' metrics.jsonl (written here, no training): each group's mean with
the min-max band of its seeds, a legend entry for the validation dots, and svg / pdf files for print."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from gptlab.experiments.charts import _group_band, _loss_curve, draw_loss_overlay


def _fake_run(path: Path, seed: int, offset: float, steps: int = 120) -> Path:
    """metrics.jsonl as training writes it: a falling loss with seed noise, validation every 40 steps."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    records = []
    for step in range(steps):
        record = {
            "step": step,
            "loss": 10 * np.exp(-step / 40) + 3 + offset + 0.05 * rng.standard_normal(),
            "tokens_seen": (step + 1) * 128,
        }
        if step % 40 == 39:
            record["validation_loss"] = record["loss"] + 0.1
        records.append(record)
    (path / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_group_band_is_mean_min_and_max_over_seeds(tmp_path):
    runs = [_loss_curve(_fake_run(tmp_path / f"seed{seed}", seed, 0.0)) for seed in range(3)]
    xs, means, lows, highs = _group_band(runs)
    curves = np.array([ys for _, ys, _ in runs])
    assert xs == runs[0][0]
    assert (
        np.allclose(means, curves.mean(axis=0))
        and np.allclose(lows, curves.min(axis=0))
        and np.allclose(highs, curves.max(axis=0))
    )
    assert all(low < mean < high for low, mean, high in zip(lows, means, highs))  # three noisy seeds: a real band


@pytest.mark.parametrize("chart_format", ["svg", "pdf"])
def test_overlay_legend_names_seed_bands_and_validation_dots(tmp_path, chart_format):
    baseline = [_fake_run(tmp_path / f"base{seed}", seed, 0.0) for seed in range(3)]
    single = [_fake_run(tmp_path / "lr10x", 7, 0.3)]
    path = tmp_path / f"overlay.{chart_format}"
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.compression": 0}):  # text kept as text, to be read back
        draw_loss_overlay([("baseline", baseline), ("lr10x", single)], path)
    data = path.read_bytes()
    if chart_format == "pdf":
        assert data.startswith(b"%PDF")
        return
    svg = data.decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "baseline (mean of 3 seeds, band: min-max)" in svg and ">lr10x<" in svg
    assert "validation loss (dots, in the group" in svg


def test_comparison_charts_in_the_format_asked_for(tmp_path):
    from types import SimpleNamespace

    from click.testing import CliRunner

    from gptlab.experiments.charts import draw_comparison_charts
    from gptlab.experiments.commands import compare

    def group(label, dirs, losses):
        return SimpleNamespace(label=label, runs=[SimpleNamespace(run_dir=d) for d in dirs], losses=losses)

    baseline = group("baseline", [_fake_run(tmp_path / f"b{seed}", seed, 0.0) for seed in range(3)], [3.50, 3.52, 3.49])
    other = group("lr10x", [_fake_run(tmp_path / "x", 9, 0.2)], [3.61])
    rows = [
        {"run": "baseline", "run_losses": baseline.losses, "improvement": None, "improvement_ci": None},
        {"run": "lr10x", "run_losses": other.losses, "improvement": -0.107, "improvement_ci": [-0.15, -0.06]},
    ]
    comparison = SimpleNamespace(baseline=baseline, groups=[baseline, other], rows=rows)
    written = draw_comparison_charts(comparison, tmp_path / "charts", "svg")
    assert [path.name for path in written] == ["loss-overlay.svg", "test-loss-difference.svg"]
    assert all("<svg" in path.read_text() for path in written)
    assert "--chart-format [png|svg|pdf]" in CliRunner().invoke(compare, ["--help"], terminal_width=200).output
