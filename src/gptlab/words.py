"""How counts read in what gptlab prints: "1 layer", "12 layers"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` and the noun in the number that goes with it; `plural` when adding "s" is wrong."""
    return f"{count:,} {noun if count == 1 else (plural or noun + 's')}"
