"""`gptlab bench`'s text output: a table per result, side by side for --compare."""

from __future__ import annotations

from typing import Any

from gptlab.bench.harness import PHASES
from gptlab.bench.memory import format_bytes
from gptlab.words import counted


def _rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    mfu = (
        f"{result['mfu'] * 100:.1f}% of {result['peak_tflops']:g}"
        if result["mfu"] is not None
        else "n/a (no known peak; --peak-tflops)"
    )
    phases = result["phases_ms"] or {}
    return [
        ("tokens/s", f"{result['tokens_per_second']:,.0f}"),
        ("ms per step", f"{result['ms_per_step']:,.1f}"),
        ("model GFLOPs per token", f"{result['flops_per_token'] / 1e9:.4g}"),
        ("model TFLOP/s", f"{result['model_tflops_per_second']:.4g}"),
        ("MFU (peak TFLOP/s)", mfu),
        ("peak memory", format_bytes(result["peak_memory_bytes"])),
        (
            "minor page faults per step",
            f"{result['page_faults_per_step']:,}" if result["page_faults_per_step"] is not None else "n/a",
        ),
        *((f"{name} ms per step", f"{phases[name]:,.1f}" if name in phases else "n/a") for name in PHASES),
        ("warm-up s", f"{result['warmup_seconds']:.2f}"),
    ]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [headers] + rows) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(cells, widths))
            )
            + " |"
        )

    return [line(headers), "|" + "|".join("-" * (width + 2) for width in widths) + "|"] + [line(row) for row in rows]


def _header(result: dict[str, Any]) -> list[str]:
    env = result["environment"]
    config = result["config"]["model"]
    return [
        f"gptlab {env['gptlab']} | Python {env['python']} | torch {env['torch']} | CUDA {env['cuda']} | {result['device']} ({result['device_name']})"
        + (
            f" | CPU matmul: {env['cpu_matmul']} ({env['cpu_matmul_reason']})"
            if str(result["device"]).startswith("cpu") and "cpu_matmul" in env
            else ""
        ),
        f"model: {counted(config['n_layers'], 'layer')}, {config['emb_dim']} wide, {counted(config['n_heads'], 'head')}, context {config['context_length']}, "
        f"vocab {config['vocab_size']:,}, tied head: {str(config['tie_weights']).lower()}; {result['parameters']:,} parameters"
        + (
            f" ({result['active_parameters']:,} active: {config['moe']['num_active_experts']} of {config['moe']['num_experts']} experts per token)"
            if config.get("moe")
            else ""
        ),
        f"batch: microbatch {result['microbatch_size']} x accumulation {result['gradient_accumulation_steps']} x context {result['context_length']} "
        f"= {result['tokens_per_step']:,} tokens per step; tokens: {result['tokens']}",
        f"steps: {result['warmup_steps']} warm-up, {result['steps']} timed, {result['phase_steps']} timed phase by phase; "
        f"peak memory: {result['peak_memory_method'] or 'not measured'}",
    ]


def format_bench(result: dict[str, Any]) -> list[str]:
    rows = [[name, value] for name, value in _rows(result)]
    rows.insert(5, ["MFU peak from", result["peak_tflops_source"] or "n/a"])
    return _header(result) + [f"precision: {result['precision']}", ""] + _table(["measure", "value"], rows)


def format_comparison(comparison: dict[str, Any]) -> list[str]:
    columns = comparison["columns"]
    per_column = [dict(_rows(column)) for column in columns]
    names = [name for name, _ in _rows(columns[0])]
    rows = [[name] + [values[name] for values in per_column] for name in names]
    baseline = columns[0]["tokens_per_second"]
    rows.insert(
        1, ["tokens/s vs first column"] + [f"{column['tokens_per_second'] / baseline:.2f}x" for column in columns]
    )
    rows.append(["precision"] + [column["precision"] for column in columns])
    return (
        _header(columns[0])[:1]
        + [f"run: {comparison['run_dir']}", ""]
        + _table(["measure"] + [c["column"] for c in columns], rows)
    )


def format_max_microbatch(result: dict[str, Any]) -> list[str]:
    lines = [
        f"{result['device']} ({result['device_name']}), precision {result['precision']}, context {result['context_length']}, "
        f"limit {format_bytes(result['memory_limit_bytes'])} ({result['memory_limit_source']})",
        "",
    ]
    lines += _table(
        ["microbatch", "outcome", "peak memory", "seconds"],
        [
            [str(t["microbatch"]), t["outcome"], format_bytes(t["peak_memory_bytes"]), f"{t['seconds']:.1f}"]
            for t in result["trials"]
        ],
    )
    lines.append("")
    if result["max_microbatch"] == 0:
        lines.append("Not even microbatch 1 fits.")
    else:
        lines.append(
            f"Largest microbatch that fits: {result['max_microbatch']} ({result['trial_count']} trials"
            + (", stopped at the search bound" if result["hit_search_bound"] else "")
            + ")"
        )
    return lines
