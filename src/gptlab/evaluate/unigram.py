"""The loss of a model that knows only token frequencies: the floor any language model must beat."""

from __future__ import annotations

import numpy as np

from gptlab.data.tokens import TokenSplit

_CHUNK = 1 << 22


def token_counts(split: TokenSplit, vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(split), _CHUNK):
        counts += np.bincount(split.read(start, min(len(split), start + _CHUNK)), minlength=vocab_size)[:vocab_size]
    return counts


def unigram_cross_entropy(
    train: TokenSplit, test: TokenSplit, vocab_size: int, test_tokens: int | None = None
) -> float:
    """Cross-entropy in nats of the test tokens (their first `test_tokens`, or all) under the train split's
    token frequencies, add-one smoothed so unseen tokens have finite loss."""
    probabilities = (token_counts(train, vocab_size) + 1) / (len(train) + vocab_size)
    log_probabilities = np.log(probabilities)
    stop = len(test) if test_tokens is None else min(len(test), test_tokens)
    total, count = 0.0, 0
    for start in range(0, stop, _CHUNK):
        chunk = test.read(start, min(stop, start + _CHUNK)).astype(np.int64)
        total -= float(log_probabilities[chunk].sum())
        count += chunk.size
    return total / max(count, 1)
