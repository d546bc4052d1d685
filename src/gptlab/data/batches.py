"""Which tokens each step reads: the ddp-base-model-from-scratch harness's rule, so a run reads the same data at any world size.

The training slice starts at `start_train_token` and holds N tokens, N a whole number of global batches;
one more token is read for the targets. Inputs are slice[:-1] and targets slice[1:], each cut into
items of microbatch x context consecutive tokens. Global step s, accumulation step a and rank r read
item ((s * accumulation) + a) * world_size + r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from gptlab.data.tokens import TokenSplit, check_ids
from gptlab.errors import UserError


@dataclass(frozen=True)
class BatchPlan:
    """The layout of a token slice into items, independent of where the tokens live."""

    start_token: int
    microbatch_size: int
    context_length: int
    accumulation_steps: int = 1
    world_size: int = 1
    total_steps: int = 0

    @property
    def item_tokens(self) -> int:
        return self.microbatch_size * self.context_length

    @property
    def global_batch_tokens(self) -> int:
        return self.item_tokens * self.accumulation_steps * self.world_size

    @property
    def train_tokens(self) -> int:
        return self.global_batch_tokens * self.total_steps

    def item_index(self, step: int, micro_step: int, rank: int) -> int:
        return (step * self.accumulation_steps + micro_step) * self.world_size + rank

    def item_start(self, item: int) -> int:
        """First input token of an item; its targets start one token later."""
        return self.start_token + item * self.item_tokens


def plan_training(
    split: TokenSplit,
    *,
    start_token: int,
    min_tokens: int,
    microbatch_size: int,
    context_length: int,
    accumulation_steps: int,
    world_size: int,
    source: str,
) -> BatchPlan:
    """Round `min_tokens` up to whole global batches (-1: every whole batch there is) and check the split holds them."""
    plan = BatchPlan(start_token, microbatch_size, context_length, accumulation_steps, world_size)
    available = len(split) - start_token - 1  # one token is kept back for the last target
    if start_token >= len(split):
        raise UserError(
            f"{source}: start_train_token: {start_token} is past the end of the train split ({len(split):,} tokens)"
        )
    if min_tokens == -1:
        steps = available // plan.global_batch_tokens
    else:
        steps = math.ceil(min_tokens / plan.global_batch_tokens)
    needed = max(steps, 1) * plan.global_batch_tokens + 1
    if steps < 1 or needed > len(split) - start_token:
        raise UserError(
            f"{source}: the train split has {len(split) - start_token:,} tokens from start_train_token {start_token:,}, "
            f"but {needed:,} are needed ({max(steps, 1)} step(s) of {plan.global_batch_tokens:,}-token global batches "
            f"= world {world_size} x microbatch_size {microbatch_size} x gradient_accumulation_steps {accumulation_steps} "
            f"x context_length {context_length}, plus 1); lower min_train_tokens or the batch size"
        )
    return BatchPlan(start_token, microbatch_size, context_length, accumulation_steps, world_size, steps)


def whole_items(split: TokenSplit, start_token: int, item_tokens: int) -> int:
    """How many whole items (with their one-token-later targets) fit in the split after `start_token`."""
    return max(0, (len(split) - start_token - 1) // item_tokens)


class BatchReader:
    """Reads (inputs, targets) for an item of a plan as int64 tensors of shape (microbatch, context)."""

    def __init__(self, split: TokenSplit, plan: BatchPlan, device: torch.device, vocab_size: Optional[int] = None):
        self.split = split
        self.vocab_size = vocab_size  # when given, every window's ids are checked against it (microseconds per batch)
        self.plan = plan
        self.device = device
        self._pin = device.type == "cuda"

    def read_item(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.plan.item_start(item)
        tokens = self.split.read(start, start + self.plan.item_tokens + 1)
        if self.vocab_size is not None:
            check_ids(tokens, self.vocab_size, self.split.path, start)
        tokens = tokens.astype(np.int64)
        window = torch.from_numpy(tokens)
        shape = (self.plan.microbatch_size, self.plan.context_length)
        inputs, targets = window[:-1].view(shape), window[1:].reshape(shape)
        if self._pin:
            # Pinned host memory lets the copy overlap with compute on the GPU.
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        return inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)

    def read(self, step: int, micro_step: int = 0, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return self.read_item(self.plan.item_index(step, micro_step, rank))
