"""How counts and losses read in what gptlab prints: "1 layer", "12 layers", a loss's perplexity."""

from __future__ import annotations

import math
from typing import Optional


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` and the noun in the number that goes with it; `plural` when adding "s" is wrong."""
    return f"{count:,} {noun if count == 1 else (plural or noun + 's')}"


def perplexity(loss: float) -> float:
    """exp(loss): the perplexity of a mean cross-entropy in nats (infinite where a float cannot hold it)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def format_perplexity(value: Optional[float]) -> str:
    """Two decimals with thousands separators, as the training log prints it; "-" where there is none."""
    if value is None:
        return "-"
    return f"{value:,.2f}" if math.isfinite(value) else str(value)


def loss_with_perplexity(loss: float) -> str:
    """A mean cross-entropy as gptlab prints it, with its perplexity beside it: "3.2100 (perplexity 24.78)"."""
    return f"{loss:.4f} (perplexity {format_perplexity(perplexity(loss))})"


def step_label(step: int, total_steps: int) -> str:
    """How a step is named on screen: its global step, the number metrics.jsonl, TensorBoard and the checkpoint
    names (`...-iteration-<step>`) use, counted from 0; then how many of the run's steps are done with it."""
    return f"step {step:,} ({step + 1:,}/{total_steps:,})"
