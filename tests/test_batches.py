import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from gptlab.data.batches import BatchReader, plan_training
from gptlab.data.tokens import TokenSplit
from gptlab.errors import UserError


@pytest.fixture
def counting_split(tmp_path):
    save_file({"tokens": np.arange(10_000, dtype=np.uint16)}, tmp_path / "train.safetensors")
    return TokenSplit(tmp_path / "train.safetensors")


def plan(split, **kw):
    args = dict(
        start_token=0,
        min_tokens=-1,
        microbatch_size=2,
        context_length=8,
        accumulation_steps=1,
        world_size=1,
        source="t",
    )
    return plan_training(split, **{**args, **kw})


def test_item_index_rule_and_shifted_targets(counting_split):
    p = plan(counting_split, start_token=100, min_tokens=1000, accumulation_steps=3, world_size=2)
    reader = BatchReader(counting_split, p, torch.device("cpu"))
    inputs, targets = reader.read(step=2, micro_step=1, rank=1)
    item = (2 * 3 + 1) * 2 + 1
    first = 100 + item * 16
    assert inputs.shape == (2, 8) and inputs.dtype == torch.int64
    assert inputs.flatten().tolist() == list(range(first, first + 16))
    assert torch.equal(targets, inputs + 1)


def test_min_train_tokens_rounds_up_to_whole_global_batches(counting_split):
    p = plan(counting_split, min_tokens=1000, accumulation_steps=3, world_size=2)  # global batch 96 tokens
    assert p.global_batch_tokens == 96 and p.total_steps == 11 and p.train_tokens == 1056


def test_minus_one_takes_every_whole_global_batch(counting_split):
    p = plan(counting_split, start_token=1000, min_tokens=-1, world_size=4)  # 64-token global batches
    assert p.total_steps == (10_000 - 1000 - 1) // 64


def test_same_items_at_any_world_size(counting_split):
    """World 2 x accumulation 1 and world 1 x accumulation 2 read the same tokens in each step."""
    two_ranks = plan(counting_split, min_tokens=640, world_size=2)
    one_rank = plan(counting_split, min_tokens=640, accumulation_steps=2)
    for step in range(two_ranks.total_steps):
        a = {two_ranks.item_index(step, 0, rank) for rank in range(2)}
        b = {one_rank.item_index(step, micro, 0) for micro in range(2)}
        assert a == b


def test_too_small_and_past_the_end(counting_split):
    with pytest.raises(UserError, match="are needed"):
        plan(counting_split, min_tokens=20_000)
    with pytest.raises(UserError, match="past the end"):
        plan(counting_split, start_token=10_000)
    with pytest.raises(UserError, match="are needed"):
        plan(counting_split, start_token=9_990)
