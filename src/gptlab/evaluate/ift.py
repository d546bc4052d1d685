"""Instruction fine-tuning as a check of a base model (`gptlab eval RUN --task ift`): the users' recipe.

A copy of the checkpoint is fine-tuned on an Alpaca-style instruction set (the book's chapter 7
`instruction-data.json`: a JSON list of `{"instruction", "input", "output"}`), one epoch at a time until the
validation loss rises, keeping the best epoch. Its masked cross-entropy on the held-out test items (the IFT
test loss) is an offline score that needs no judge; the greedy responses to those items are written for
`gptlab judge`, and the fine-tuned weights as a book-layout model.safetensors. The run's own checkpoints are
never written to: everything goes to a folder of its own (RUN_DIR/ift by default).

The users' format differs from the book's in one character: their input block is headed `### Input` with no
colon. Items split in file order: the first 85% train, the next 10% test, the rest validation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from gptlab.errors import UserError
from gptlab.files import atomic_write, atomic_write_text, strict_json
from gptlab.rundir import DEFAULT_CHECKPOINT

END_OF_TEXT = 50256
IGNORE_INDEX = -100
DATA_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"
)
DATA_FILE = "instruction-data.json"
RESPONSES_FILE = "responses.json"  # the test items with `model_response`, as the users' judging script reads them
WEIGHTS_FILE = "model.safetensors"
OUT_DIR = "ift"  # inside the run directory
PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
RESPONSE_HEADER = "### Response:"


@dataclass(frozen=True)
class Settings:
    """Every number of the recipe that the users have a choice over; the defaults are theirs."""

    train_fraction: float = 0.85
    test_fraction: float = 0.10
    batch_size: int = 8
    learning_rate: float = 5e-5
    weight_decay: float = 0.1
    seed: int = 42
    dropout: str = "model"  # model | on | off
    dropout_rate: float = 0.1  # the rate `on` means
    max_epochs: int = 20
    max_new_tokens: int = 256


# --- the file ------------------------------------------------------------------------------------------


def locate_file(file: Optional[Path]) -> Path:
    """`file` when given; else the book's instruction-data.json from the cache, downloaded once (gptlab.evaluate.downloads)."""
    from gptlab.evaluate import downloads

    return downloads.locate_file(file, "ift", DATA_FILE, DATA_URL, read_items)


def download_data_file(target: Path, url: str = DATA_URL) -> None:
    from gptlab.evaluate import downloads

    downloads.download_file(target, url, "ift", read_items)


def read_items(path: Path) -> tuple[list[dict[str, str]], str]:
    """The file's items (each with string `instruction`, `input` and `output`) and the sha256 of the file."""
    data = Path(path).read_bytes()
    try:
        items = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); give an instruction-data.json file") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(items, list) or not items:
        raise UserError(f"{path}: must be a non-empty JSON list of {{instruction, input, output}} objects")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{path}: item {index} is not a JSON object")
        for key in ("instruction", "input", "output"):
            if not isinstance(item.get(key, "" if key == "input" else None), str):
                raise UserError(f"{path}: item {index} has no string {key!r}")
    return items, hashlib.sha256(data).hexdigest()


def split_items(items: Sequence[dict], settings: Settings) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, test, validation) in file order: the first train_fraction, the next test_fraction, the rest."""
    train_end = int(len(items) * settings.train_fraction)
    test_end = train_end + int(len(items) * settings.test_fraction)
    train, test, validation = list(items[:train_end]), list(items[train_end:test_end]), list(items[test_end:])
    for name, part in (("train", train), ("test", test), ("validation", validation)):
        if not part:
            raise UserError(
                f"ift: {len(items)} items leave the {name} split empty with --train-fraction "
                f"{settings.train_fraction} and --test-fraction {settings.test_fraction}; give more items"
            )
    return train, test, validation


# --- the format and the batches ------------------------------------------------------------------------


def format_prompt(item: dict) -> str:
    """The users' Alpaca-style prompt: their `### Input` header has no colon, and appears only for an input."""
    text = f"{PREAMBLE}\n\n### Instruction:\n{item['instruction']}"
    return text + (f"\n\n### Input\n{item['input']}" if item.get("input") else "")


def format_example(item: dict) -> str:
    return f"{format_prompt(item)}\n\n{RESPONSE_HEADER}\n{item['output']}"


def collate(sequences: Sequence[list[int]], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The users' padding: end-of-text appended, padded with end-of-text to the batch's longest, every pad in
    the targets after the first masked with -100, inputs and targets cut to the context length."""
    width = max(len(sequence) + 1 for sequence in sequences)
    inputs, targets = [], []
    for sequence in sequences:
        padded = list(sequence) + [END_OF_TEXT] * (width - len(sequence))
        row_inputs, row_targets = torch.tensor(padded[:-1]), torch.tensor(padded[1:])
        pads = torch.nonzero(row_targets == END_OF_TEXT).flatten()
        if pads.numel() > 1:
            row_targets[pads[1:]] = IGNORE_INDEX
        inputs.append(row_inputs[:context_length])
        targets.append(row_targets[:context_length])
    return torch.stack(inputs), torch.stack(targets)


def make_batches(
    encoded: Sequence[list[int]], batch_size: int, context_length: int, order: Optional[Sequence[int]] = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = list(order) if order is not None else list(range(len(encoded)))
    return [
        collate([encoded[i] for i in order[start : start + batch_size]], context_length)
        for start in range(0, len(order), batch_size)
    ]


def batch_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over a batch's unmasked target tokens."""
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches, device: torch.device, autocast) -> float:
    """Mean over batches of each batch's mean loss (the users' IFT loss), dropout off."""
    was_training = model.training
    model.eval()
    try:
        losses = []
        for inputs, targets in batches:
            with autocast():
                losses.append(float(batch_loss(model, inputs.to(device), targets.to(device))))
    finally:
        model.train(was_training)
    return math.fsum(losses) / len(losses)


# --- fine-tuning and responses -------------------------------------------------------------------------


def fine_tune(
    model: torch.nn.Module,
    train: list[list[int]],
    validation_batches,
    settings: Settings,
    device: torch.device,
    precision,
    show_progress: bool = False,
) -> tuple[list[float], int]:
    """Train one epoch at a time until the validation loss rises (or max_epochs), leaving `model` at the best
    epoch. Returns every epoch's validation loss and the best epoch (1-based)."""
    from tqdm import tqdm

    context_length = model.config.context_length
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    shuffler = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scaler = precision.scaler
    val_losses: list[float] = []
    best_state, best_epoch = None, 0
    batches_per_epoch = math.ceil(len(train) / settings.batch_size)
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=shuffler).tolist()
        for inputs, targets in tqdm(
            make_batches(train, settings.batch_size, context_length, order),
            total=batches_per_epoch,
            desc=f"ift epoch {epoch}",
            disable=not show_progress,
            file=sys.stderr,
            dynamic_ncols=True,
        ):
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                loss = batch_loss(model, inputs.to(device), targets.to(device))
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        val_losses.append(mean_loss(model, validation_batches, device, precision.autocast))
        if best_state is None or val_losses[-1] < val_losses[best_epoch - 1]:
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
        if len(val_losses) >= 2 and val_losses[-1] > val_losses[-2]:
            break
    model.load_state_dict(best_state)
    model.eval()
    return val_losses, best_epoch


@torch.no_grad()
def greedy_response(model: torch.nn.Module, prompt: str, max_new_tokens: int, device: torch.device) -> str:
    """The greedy continuation of `prompt` (its tail kept within the context window), stopped at end-of-text;
    the text after the prompt with `### Response:` removed and whitespace stripped."""
    from gptlab.tokenizer import decode, encode

    context_length = model.config.context_length
    ids = torch.tensor([encode(prompt)], dtype=torch.long, device=device)
    for _ in range(max_new_tokens):
        next_id = model(ids[:, -context_length:])[:, -1, :].float().argmax(dim=-1, keepdim=True)
        if int(next_id) == END_OF_TEXT:
            break
        ids = torch.cat([ids, next_id], dim=1)
    text = decode(ids[0].tolist())
    return text[len(prompt) :].replace(RESPONSE_HEADER, "").strip()


def _dropout_rate(settings: Settings, model_rate: float) -> float:
    return {"model": model_rate, "on": settings.dropout_rate, "off": 0.0}[settings.dropout]


def evaluate_ift_run(
    run_dir: Path,
    checkpoint: str = DEFAULT_CHECKPOINT,
    file: Optional[Path] = None,
    settings: Settings = Settings(),
    out_dir: Optional[Path] = None,
    precision_name: str = "fp32",
    device_name: str = "auto",
    show_progress: bool = False,
) -> dict[str, Any]:
    """Fine-tune a copy of a run's checkpoint on the instruction set and score it; writes the responses and
    the fine-tuned weights to `out_dir` (default RUN_DIR/ift)."""
    from gptlab.evaluate.loss import eval_device
    from gptlab.runtime.precision import configure_precision
    from gptlab.runtime.runs import open_trained_run
    from gptlab.tokenizer import VOCAB_SIZE, encode
    from gptlab.weights import build_model, save_book_safetensors

    if settings.dropout not in ("model", "on", "off"):
        raise UserError(f"--dropout {settings.dropout}: model, on or off")
    path = locate_file(file)
    items, sha256 = read_items(path)
    train, test, validation = split_items(items, settings)
    device = eval_device(device_name)
    trained = open_trained_run(run_dir, checkpoint, device)
    config = trained.config.model
    if config.vocab_size < VOCAB_SIZE:
        raise UserError(
            f"{run_dir}: vocab_size {config.vocab_size} is smaller than GPT-2's {VOCAB_SIZE}; "
            "the instruction set is read with GPT-2's byte-pair encoding"
        )
    precision = configure_precision(precision_name, device, "--precision")
    context_length = config.context_length
    encoded = {name: [encode(format_example(item)) for item in part] for name, part in
               (("train", train), ("test", test), ("validation", validation))}  # fmt: skip
    test_batches = make_batches(encoded["test"], settings.batch_size, context_length)
    validation_batches = make_batches(encoded["validation"], settings.batch_size, context_length)
    base_test_loss = mean_loss(trained.model, test_batches, device, precision.autocast)

    rate = _dropout_rate(settings, config.drop_rate)
    model = build_model(config.model_copy(update={"drop_rate": rate}), device="cpu", initialise=False)
    model.load_state_dict(trained.model.state_dict())
    model.to(device)
    del trained.model
    val_losses, best_epoch = fine_tune(
        model, encoded["train"], validation_batches, settings, device, precision, show_progress
    )
    test_loss = mean_loss(model, test_batches, device, precision.autocast)
    responses = []
    for item in test:
        with precision.autocast():
            responses.append(
                {**item, "model_response": greedy_response(model, format_prompt(item), settings.max_new_tokens, device)}
            )

    out = Path(out_dir) if out_dir is not None else Path(run_dir) / OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    responses_path, weights_path = out / RESPONSES_FILE, out / WEIGHTS_FILE
    atomic_write_text(responses_path, strict_json(responses, indent=2, ensure_ascii=False) + "\n")
    atomic_write(weights_path, lambda tmp: save_book_safetensors(model.cpu(), tmp))
    return {
        "task": "ift",
        "run": str(run_dir),
        "base_checkpoint": trained.checkpoint.name,  # the run's checkpoint that was fine-tuned (and left as it was)
        "test_loss": test_loss,
        "base_test_loss": base_test_loss,
        "val_losses": val_losses,
        "best_epoch": best_epoch,
        "items": {"train": len(train), "test": len(test), "validation": len(validation)},
        "file": str(path),
        "file_sha256": sha256,
        "settings": {**settings.__dict__, "dropout_rate_used": rate},
        "precision": precision_name,
        "responses_file": str(responses_path),
        "checkpoint": str(weights_path),  # the fine-tuned weights, in the book's layout
    }


# --- the task (gptlab.evaluate.tasks) ------------------------------------------------------------------


def _run_task(run_dir, checkpoint, precision, show_progress, file=None, batch_size=None, out_dir=None, **numbers):
    given = {key: value for key, value in numbers.items() if value is not None}
    if batch_size is not None:
        given["batch_size"] = batch_size
    return evaluate_ift_run(
        run_dir, checkpoint, file, Settings(**given), out_dir, precision, show_progress=show_progress
    )


def _describe(result: dict) -> str:
    epochs = ", ".join(f"{loss:.4f}" for loss in result["val_losses"])
    return (
        f"ift test loss: {result['test_loss']:.4f} after fine-tuning (base model: {result['base_test_loss']:.4f}) "
        f"on {result['items']['test']} test items of {result['file']}; validation loss by epoch {epochs}, "
        f"best epoch {result['best_epoch']} kept; responses {result['responses_file']}, "
        f"weights {result['checkpoint']} (from checkpoint {result['base_checkpoint']})"
    )


def card_line(entry: dict) -> str:
    judged = f"; judge's mean score {entry['judge']['mean']:.1f}/100" if isinstance(entry.get("judge"), dict) else ""
    return (
        f"IFT test loss {entry['test_loss']:.4f} (masked cross-entropy on {entry.get('items', {}).get('test', '?')} held-out items "
        f"after instruction fine-tuning, best of {len(entry.get('val_losses', []))} epochs; the base model "
        f"{entry.get('base_test_loss', float('nan')):.4f}{judged})"
    )


def _task():
    import click

    from gptlab.click_types import FRACTION, NON_NEGATIVE, POSITIVE, SEED, FiniteFloatRange
    from gptlab.evaluate.tasks import Task

    default = Settings()
    return Task(
        name="ift",
        summary="instruction fine-tuning check: IFT test loss and greedy responses for `gptlab judge`",
        options=(
            (
                "file",
                ("--file",),
                dict(
                    type=click.Path(dir_okay=False, path_type=Path),
                    help=f"a JSON list of {{instruction, input, output}} (default: the book's {DATA_FILE}, downloaded once into ~/.cache/gptlab/ift)",
                ),
            ),
            (
                "batch_size",
                ("--batch-size",),
                dict(type=POSITIVE, help=f"items per batch (default {default.batch_size})"),
            ),
            (
                "train_fraction",
                ("--train-fraction",),
                dict(type=FRACTION, help=f"first share of items to train on (default {default.train_fraction})"),
            ),
            (
                "test_fraction",
                ("--test-fraction",),
                dict(
                    type=FRACTION, help=f"next share to test on; the rest validates (default {default.test_fraction})"
                ),
            ),
            (
                "learning_rate",
                ("--learning-rate",),
                dict(type=FiniteFloatRange(min=0, min_open=True), help=f"AdamW's (default {default.learning_rate})"),
            ),
            (
                "weight_decay",
                ("--weight-decay",),
                dict(type=FiniteFloatRange(min=0), help=f"AdamW's (default {default.weight_decay})"),
            ),
            (
                "seed",
                ("--seed",),
                dict(type=SEED, help=f"seeds torch and the shuffle of the training batches (default {default.seed})"),
            ),
            (
                "dropout",
                ("--dropout",),
                dict(
                    type=click.Choice(["model", "on", "off"]),
                    help="fine-tune with model.json's drop_rate, with --dropout-rate, or without (default model)",
                ),
            ),
            (
                "dropout_rate",
                ("--dropout-rate",),
                dict(
                    type=FiniteFloatRange(min=0, max=1, max_open=True),
                    help=f"the rate --dropout on means (default {default.dropout_rate})",
                ),
            ),
            (
                "max_epochs",
                ("--max-epochs",),
                dict(
                    type=POSITIVE, help=f"stop here if the validation loss has not risen (default {default.max_epochs})"
                ),
            ),
            (
                "max_new_tokens",
                ("--max-new-tokens",),
                dict(type=NON_NEGATIVE, help=f"longest greedy response (default {default.max_new_tokens})"),
            ),
            (
                "out_dir",
                ("--out-dir",),
                dict(
                    type=click.Path(file_okay=False, path_type=Path),
                    help=f"where the responses and fine-tuned weights go (default RUN_DIR/{OUT_DIR})",
                ),
            ),
        ),  # fmt: skip
        run=_run_task,
        describe=_describe,
        entry="ift",
        order=20,
        card_line=card_line,
    )


TASK = _task()
