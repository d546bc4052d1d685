"""HellaSwag, zero-shot: which of four endings a model finds most likely after a context.

Each ending is scored by the cross-entropy of its tokens after the context (the context, then a space, then
the ending, as the dataset's authors join them). `acc_norm` picks the ending with the lowest mean loss per
ending token, the normalised score that published GPT-2 small numbers use (about 0.29 for the original 124M
model); `acc` picks the lowest summed loss, which favours short endings.

The file is the dataset's own jsonl (github.com/rowanz/hellaswag, data/hellaswag_val.jsonl): one item per
line with `ctx` (or `ctx_a` and `ctx_b`), a list of four `endings` and a `label` (0-3, an int or, in the
Hugging Face copy, a string). Without `--file` the validation file is read from the user's cache,
downloaded there once when the network allows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from gptlab.errors import UserError
from gptlab.files import atomic_write
from gptlab.rundir import DEFAULT_CHECKPOINT
from gptlab.runtime.precision import Precision

ENDINGS = 4
VALIDATION_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VALIDATION_FILE = "hellaswag_val.jsonl"


@dataclass(frozen=True)
class Item:
    line: int  # in the file, for messages
    context: str
    endings: tuple[str, ...]
    label: int
    split: Optional[str]  # the item's own `split` field: "val", "train" or "test"


@dataclass(frozen=True)
class Scores:
    """Per item and ending: the summed cross-entropy of the ending's tokens, and how many tokens were scored."""

    summed: torch.Tensor  # (items, 4) float64
    tokens: torch.Tensor  # (items, 4) int64
    endings_cut: int = 0  # endings whose first tokens fell outside the model's context window

    @property
    def mean(self) -> torch.Tensor:
        return self.summed / self.tokens


# --- the file ------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where the downloaded validation file is kept: $XDG_CACHE_HOME/gptlab/hellaswag (default ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gptlab" / "hellaswag"


def locate_file(file: Optional[Path]) -> Path:
    """`file` when given; else the cached validation file, downloaded first when it is not cached yet."""
    if file is not None:
        if not Path(file).is_file():
            raise UserError(f"--file {file}: no such file; give the path of a HellaSwag .jsonl file")
        return Path(file)
    cached = cache_dir() / VALIDATION_FILE
    if not cached.is_file():
        download_validation_file(cached)
    return cached


DOWNLOAD_READ_TIMEOUT = 30.0  # seconds without a byte
DOWNLOAD_DEADLINE = 600.0  # seconds for the whole file (about 11 MB)


def download_validation_file(target: Path, url: str = VALIDATION_URL) -> None:
    """Download the validation file to `target`, kept only when every line reads as a HellaSwag item."""
    print(f"Downloading HellaSwag's validation items from {url} to {target} (once) ...", file=sys.stderr)
    deadline = time.monotonic() + DOWNLOAD_DEADLINE
    try:
        # the socket timeout bounds each wait; the deadline bounds the whole, against a server trickling bytes
        with urllib.request.urlopen(url, timeout=DOWNLOAD_READ_TIMEOUT) as response:
            chunks = []
            while chunk := response.read1(1 << 16):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not complete after {DOWNLOAD_DEADLINE:g} s")
            data = b"".join(chunks)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(
            f"HellaSwag: cannot download {url} ({reason}); download {VALIDATION_FILE} yourself and pass --file PATH"
        ) from None

    def write_checked(tmp: Path) -> None:
        tmp.write_bytes(data)
        read_items(tmp)  # a proxy's error page is refused here, before it can take the cache's place

    atomic_write(target, write_checked, needed_bytes=len(data))


def read_items(path: Path, limit: Optional[int] = None) -> tuple[list[Item], str]:
    """The first `limit` items of the file (all when None) and the sha256 of the whole file."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); give a HellaSwag .jsonl file") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if limit is not None and len(items) == limit:
            break
        if line.strip():
            items.append(parse_item(line, f"{path}:{number}", number))
    if not items:
        raise UserError(f"{path}: holds no HellaSwag items (one JSON object per line)")
    return items, hashlib.sha256(data).hexdigest()


def parse_item(line: str, where: str, number: int) -> Item:
    """One line of the file, or one `PATH:LINE: what is wrong` error."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: not a JSON object; each line is one HellaSwag item")
    context = record.get("ctx")
    if not isinstance(context, str):
        ctx_a, ctx_b = record.get("ctx_a"), record.get("ctx_b", "")
        if not isinstance(ctx_a, str) or not isinstance(ctx_b, str):
            raise UserError(f"{where}: no context: needs a string 'ctx', or 'ctx_a' and 'ctx_b'")
        context = f"{ctx_a} {ctx_b}" if ctx_b else ctx_a  # how the dataset itself builds ctx
    endings = record.get("endings")
    if not isinstance(endings, list) or not all(isinstance(ending, str) for ending in endings):
        raise UserError(f"{where}: 'endings' must be a list of {ENDINGS} strings")
    if len(endings) != ENDINGS:
        raise UserError(f"{where}: 'endings' has {len(endings)} endings; a HellaSwag item has {ENDINGS}")
    if any(not ending.strip() for ending in endings):
        raise UserError(f"{where}: ending {[e.strip() for e in endings].index('')} is empty")
    label = record.get("label")
    if label is None or label == "":
        raise UserError(f"{where}: no 'label' (the test split is unlabelled; use the validation file)")
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < ENDINGS:
        raise UserError(f"{where}: 'label' {json.dumps(label)} is not 0, 1, 2 or 3 (the index of the right ending)")
    split = record.get("split")
    return Item(number, context, tuple(endings), label, split if isinstance(split, str) else None)


# --- scoring -------------------------------------------------------------------------------------------


def _sequences(item: Item, encode, context_length: int) -> list[tuple[list[int], list[int], int, int]]:
    """(inputs, targets, ending tokens scored, ending tokens) for each ending: the context's tokens then the
    ending's, the targets shifted by one, cut from the left to the model's context length."""
    context = encode(item.context)
    rows = []
    for ending in item.endings:
        completion = encode(" " + ending)
        tokens = context + completion
        inputs, targets = tokens[:-1][-context_length:], tokens[1:][-context_length:]
        rows.append((inputs, targets, min(len(completion), len(targets)), len(completion)))
    return rows


@torch.no_grad()
def score_items(
    model: torch.nn.Module,
    items: Sequence[Item],
    precision: Precision,
    device: torch.device,
    batch_items: Optional[int] = None,
    show_progress: bool = False,
    max_tokens: Optional[int] = None,
) -> Scores:
    """The ending losses of every item: `batch_items` items (4 sequences each) per forward pass, or, when it is
    None, as many as fit in `max_tokens` padded positions (default: one context window per item's sequence).

    Items are batched in order of length so little is padding; padded positions come after every real token,
    so causal attention keeps them out of what is scored, and the mask keeps them out of the sums."""
    from tqdm import tqdm

    from gptlab.tokenizer import encode

    context_length = model.config.context_length
    rows = [row for item in items for row in _sequences(item, encode, context_length)]
    longest = [max(len(rows[ENDINGS * i + e][0]) for e in range(ENDINGS)) for i in range(len(items))]
    order = sorted(range(len(items)), key=longest.__getitem__)
    budget = max_tokens or ENDINGS * context_length
    summed = torch.zeros(len(items), ENDINGS, dtype=torch.float64)
    counts = torch.zeros(len(items), ENDINGS, dtype=torch.int64)
    was_training = model.training
    model.eval()
    bar = tqdm(
        total=len(items),
        desc="hellaswag",
        unit=" items",
        disable=not show_progress,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    try:
        for chosen in _batches(order, longest, batch_items, budget):
            batch = [rows[ENDINGS * i + e] for i in chosen for e in range(ENDINGS)]
            width = max(len(row[0]) for row in batch)
            inputs = torch.zeros(len(batch), width, dtype=torch.long)
            targets = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.bool)
            for row, (ids, shifted, scored, _) in enumerate(batch):
                inputs[row, : len(ids)] = torch.tensor(ids)
                targets[row, : len(shifted)] = torch.tensor(shifted)
                mask[row, len(shifted) - scored : len(shifted)] = True  # the ending's tokens
            inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
            with precision.autocast():
                logits = model(inputs)
            losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
            losses = losses.view(len(batch), width).masked_fill(~mask, 0.0).double().sum(dim=1)
            index = torch.tensor(chosen)
            summed[index] = losses.view(len(chosen), ENDINGS).cpu()
            counts[index] = mask.sum(dim=1).view(len(chosen), ENDINGS).cpu()
            bar.update(len(chosen))
    finally:
        bar.close()
        model.train(was_training)
    return Scores(summed, counts, sum(scored < whole for _, _, scored, whole in rows))


def _batches(order: list[int], longest: list[int], batch_items: Optional[int], max_tokens: int) -> list[list[int]]:
    """Items in `order` (shortest first), cut into groups of `batch_items`, or into groups whose padded
    sequences (4 per item, each as long as the group's longest) fill at most `max_tokens` positions."""
    if batch_items is not None:
        return [order[start : start + batch_items] for start in range(0, len(order), batch_items)]
    batches: list[list[int]] = []
    for index in order:
        if batches and ENDINGS * (len(batches[-1]) + 1) * longest[index] <= max_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def accuracies(scores: Scores, labels: Sequence[int]) -> dict[str, float]:
    """acc (lowest summed loss), acc_norm (lowest mean loss per token), and each one's standard error over items."""
    truth = torch.tensor(list(labels))
    result = {}
    for name, losses in (("acc", scores.summed), ("acc_norm", scores.mean)):
        accuracy = float((losses.argmin(dim=1) == truth).double().mean())
        result[name] = accuracy
        result[f"{name}_stderr"] = math.sqrt(accuracy * (1 - accuracy) / len(truth))
    return result


def evaluate_hellaswag_run(
    run_dir: Path,
    checkpoint: str = DEFAULT_CHECKPOINT,
    file: Optional[Path] = None,
    limit: Optional[int] = None,
    batch_items: Optional[int] = None,
    precision_name: str = "fp32",
    device_name: str = "auto",
    show_progress: bool = False,
) -> dict:
    """HellaSwag accuracy of a run's checkpoint; the result names the file (by hash) and the items scored."""
    from gptlab.evaluate.loss import eval_device
    from gptlab.runtime.precision import configure_precision
    from gptlab.runtime.runs import open_trained_run
    from gptlab.tokenizer import VOCAB_SIZE

    path = locate_file(file)
    items, sha256 = read_items(path, limit)
    device = eval_device(device_name)
    trained = open_trained_run(run_dir, checkpoint, device)
    if trained.config.model.vocab_size < VOCAB_SIZE:
        raise UserError(
            f"{run_dir}: vocab_size {trained.config.model.vocab_size} is smaller than GPT-2's {VOCAB_SIZE}; "
            "HellaSwag is read with GPT-2's byte-pair encoding"
        )
    precision = configure_precision(precision_name, device, "--precision")
    # By default a forward pass reads at most the positions of one training microbatch, which the run's device held.
    max_tokens = trained.config.train.microbatch_size * trained.config.model.context_length
    scores = score_items(trained.model, items, precision, device, batch_items, show_progress, max_tokens)
    splits = sorted({item.split for item in items if item.split})
    return {
        "task": "hellaswag",
        "run": str(run_dir),
        "checkpoint": trained.checkpoint.name,
        **accuracies(scores, [item.label for item in items]),
        "items": len(items),
        "limit": limit,
        "file": str(path),
        "file_sha256": sha256,
        "split": splits[0] if len(splits) == 1 else None,
        "endings_cut": scores.endings_cut,
        "precision": precision_name,
    }
