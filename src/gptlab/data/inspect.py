"""`gptlab data inspect`: what a prepared dataset holds, and whether its tokens are sound.

Every split is scanned a block at a time (memory stays bounded for billions of tokens): token and
document counts, the largest id, and whether the split ends with `<|endoftext|>`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gptlab.data.tokens import SPLIT_NAMES, TokenDataset
from gptlab.tokenizer import END_OF_TEXT_ID, VOCAB_SIZE, decode

_BLOCK_TOKENS = 16 << 20


def inspect_dataset(directory: Path, show_documents: int = 2, preview_characters: int = 300) -> dict:
    """Counts and checks per split, and the first documents of train decoded; `problems` lists every failed check."""
    dataset = TokenDataset(directory)
    tokenizer = dataset.meta.get("tokenizer", {}) if isinstance(dataset.meta.get("tokenizer"), dict) else {}
    vocab_size = int(tokenizer.get("vocab_size", VOCAB_SIZE))
    end_of_text = int(tokenizer.get("end_of_text_id", END_OF_TEXT_ID))
    split_by = (dataset.meta.get("split_rule") or {}).get("by", "documents")
    report: dict = {
        "directory": str(directory),
        "split_rule": dataset.meta.get("split_rule"),
        "vocab_size": vocab_size,
        "splits": {},
        "problems": [],
    }
    present = [name for name in SPLIT_NAMES if dataset.has_split(name)]
    for name in present:
        split = dataset.split(name)
        documents = 0
        largest = -1
        smallest = 0
        for start in range(0, len(split), _BLOCK_TOKENS):
            block = split.read(start, min(start + _BLOCK_TOKENS, len(split)))
            documents += int(np.count_nonzero(block == end_of_text))
            largest = max(largest, int(block.max()))
            smallest = min(smallest, int(block.min()))
        ends_with_separator = bool(len(split)) and int(split.read(len(split) - 1, len(split))[0]) == end_of_text
        report["splits"][name] = {
            "tokens": len(split),
            "documents": documents,
            "max_id": largest,
            "ends_with_end_of_text": ends_with_separator,
        }
        if largest >= vocab_size or smallest < 0:
            report["problems"].append(
                f"{split.path}: token id {largest if largest >= vocab_size else smallest} is outside the vocabulary [0, {vocab_size})"
            )
        # Under the tokens rule only the last split ends where a document ends.
        if not ends_with_separator and len(split) and (split_by != "tokens" or name == present[-1]):
            report["problems"].append(
                f"{split.path}: does not end with <|endoftext|> ({end_of_text}); documents must each be followed by it"
            )
        if not len(split):
            report["problems"].append(f"{split.path}: holds no tokens")
    report["first_documents"] = (
        _first_documents(dataset, end_of_text, show_documents, preview_characters) if "train" in present else []
    )
    return report


def _first_documents(dataset: TokenDataset, end_of_text: int, count: int, characters: int) -> list[str]:
    split = dataset.split("train")
    texts: list[str] = []
    start = 0
    while len(texts) < count and start < len(split):
        window = split.read(start, min(start + 65536, len(split)))
        ends = np.flatnonzero(window == end_of_text)
        stop = int(ends[0]) if ends.size else len(window)
        ids = window[:stop].astype(np.int64)
        text = (
            decode(ids.tolist())
            if not ids.size or ids.max() < VOCAB_SIZE
            else "(holds ids outside the vocabulary: not decoded)"
        )
        texts.append(text if len(text) <= characters else text[:characters] + " …")
        start += stop + 1
    return texts
