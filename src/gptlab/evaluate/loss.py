"""Mean cross-entropy over a fixed run of batches of a split: the same tokens every time, dropout off."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from gptlab.data.batches import BatchPlan, BatchReader, whole_items
from gptlab.data.tokens import TokenSplit
from gptlab.errors import UserError
from gptlab.rundir import DEFAULT_CHECKPOINT
from gptlab.runtime.precision import Precision


@dataclass(frozen=True)
class EvalSlice:
    """Exactly which tokens an evaluation reads; two losses are comparable only when these agree."""

    split: str
    start_token: int
    batches: int
    batch_size: int
    context_length: int

    @property
    def tokens(self) -> int:
        return self.batches * self.batch_size * self.context_length


def eval_slice_for(
    split: TokenSplit,
    split_name: str,
    start_token: int,
    batch_size: int,
    context_length: int,
    batches: Optional[int] = None,
) -> EvalSlice:
    """`batches=None` takes every whole batch from `start_token` to the end of the split."""
    available = whole_items(split, start_token, batch_size * context_length)
    if available == 0:
        raise UserError(
            f"{split.path}: the {split_name} split has {len(split):,} tokens, too few from token {start_token:,} "
            f"for one batch of {batch_size} x {context_length} tokens; lower --batch-size or --start-token"
        )
    if batches is None:
        batches = available
    elif batches > available:
        raise UserError(
            f"{split.path}: --batches {batches} needs {batches * batch_size * context_length + 1:,} tokens from {start_token:,}; the {split_name} split has room for {available}"
        )
    return EvalSlice(split_name, start_token, batches, batch_size, context_length)


@torch.no_grad()
def evaluate_batch_losses(
    model: torch.nn.Module,
    split: TokenSplit,
    eval_slice: EvalSlice,
    precision: Precision,
    device: torch.device,
    first: int = 0,
    stride: int = 1,
) -> torch.Tensor:
    """Mean token cross-entropy of batches first, first + stride, ... of the slice (float64, on `device`).

    `first` and `stride` let several processes share one evaluation without overlapping.
    """
    was_training = model.training
    model.eval()
    plan = BatchPlan(eval_slice.start_token, eval_slice.batch_size, eval_slice.context_length)
    reader = BatchReader(split, plan, device, vocab_size=getattr(getattr(model, "config", None), "vocab_size", None))
    losses = []
    try:
        for item in range(first, eval_slice.batches, stride):
            inputs, targets = reader.read_item(item)
            with precision.autocast():
                losses.append(model(inputs, targets).double())
    finally:
        model.train(was_training)
    return torch.stack(losses) if losses else torch.zeros(0, dtype=torch.float64, device=device)


def evaluate_loss(
    model: torch.nn.Module, split: TokenSplit, eval_slice: EvalSlice, precision: Precision, device: torch.device
) -> float:
    """Mean over batches of each batch's mean token cross-entropy (the users' "test set loss")."""
    return float(evaluate_batch_losses(model, split, eval_slice, precision, device).mean())


def eval_device(device_name: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one, else the CPU."""
    if device_name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_name)


def evaluate_run(
    run_dir,
    checkpoint: str = DEFAULT_CHECKPOINT,
    split_name: Optional[str] = None,
    start_token: int = 0,
    batches: Optional[int] = None,
    batch_size: Optional[int] = None,
    precision_name: str = "fp32",
    datasets_dir=None,
    device_name: str = "auto",
) -> dict:
    """Test loss of a run's checkpoint; the result names exactly which tokens it was computed on."""
    from gptlab.runtime.precision import configure_precision
    from gptlab.runtime.runs import open_trained_run

    device = eval_device(device_name)
    trained = open_trained_run(run_dir, checkpoint, device)
    dataset = trained.dataset(datasets_dir)
    if split_name is None:
        split_name = "test" if dataset.has_split("test") else "validation"
    split = dataset.split(split_name)
    split.check_vocabulary(trained.config.model.vocab_size)
    context = trained.config.model.context_length
    chosen = eval_slice_for(
        split, split_name, start_token, batch_size or trained.config.train.microbatch_size, context, batches
    )
    precision = configure_precision(precision_name, device, "--precision")
    loss = evaluate_loss(trained.model, split, chosen, precision, device)
    return {
        "run": str(run_dir),
        "checkpoint": trained.checkpoint.name,
        "loss": loss,
        "split": split_name,
        "start_token": chosen.start_token,
        "batches": chosen.batches,
        "batch_size": chosen.batch_size,
        "context_length": chosen.context_length,
        "tokens": chosen.tokens,
        "precision": precision_name,
        "dataset": str(dataset.directory),
        "tokenizer": dataset.tokenizer,
        **evaluated_tokens_identity(dataset, split, chosen),
    }


def evaluated_tokens_identity(dataset, split: TokenSplit, chosen: EvalSlice) -> dict:
    """What two evaluations must share to be compared: a hash of exactly the tokens read (inputs and the
    one extra target token) and a description of the dataset and tokenizer they came from."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    stop = chosen.start_token + chosen.tokens + 1
    for begin in range(chosen.start_token, stop, 1 << 23):  # chunks keep memory flat on billion-token splits
        digest.update(np.asarray(split.read(begin, min(begin + (1 << 23), stop)), dtype="<u4").tobytes())
    meta = dataset.meta
    if meta:
        described = {key: meta.get(key) for key in ("source", "split_seed", "fractions", "tokens")}
    else:  # a dataset without meta.json (the users' downloads): the split file itself
        described = {"split_file": split.path.name, "bytes": split.path.stat().st_size}
    return {
        "tokens_sha256": digest.hexdigest(),
        "dataset_fingerprint": described,
        "tokenizer_fingerprint": meta.get("tokenizer") or dataset.tokenizer,
    }
