"""Routing statistics of a mixture-of-experts run, read back every log interval with the step values.

Each layer's statistics since the last read (see `gptlab.model_moe.routing_statistics`) are averaged over ranks,
added to the newest `metrics.jsonl` record under `routing`, kept for the next checkpoint's `meta.json`, and,
when model.json's `moe.log_moe_balance_file` names a file, appended to it as one JSON line per read:
`{"step": S, "layers": [...]}`.
"""

from __future__ import annotations

from pathlib import Path

from gptlab.files import append_jsonl
from gptlab.model_moe import routing_statistics
from gptlab.train import distributed
from gptlab.train.state import Training


def record_routing(run: Training, step: int) -> None:
    """Read, average and record the routing statistics since the last read; nothing for a dense model.
    A collective when several processes train: every rank calls it at the same steps."""
    totals = run.model.take_routing_totals()
    if totals is None:
        return
    layers = routing_statistics(distributed.mean_across_ranks(totals.float(), run.dist).cpu())
    if not layers:
        return
    run.last_routing = {"step": step, "layers": layers}
    run.metrics.annotate_last(routing=layers)
    balance_file = run.config.model.moe.log_moe_balance_file
    if balance_file is not None and run.dist.is_main:
        Path(balance_file).parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(Path(balance_file), [run.last_routing])
