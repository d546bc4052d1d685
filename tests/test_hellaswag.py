"""HellaSwag (`gptlab eval --task hellaswag`): scoring, the file's format, evaluation.json, and the compare column.

The models here are tiny, and one has its weights set by the test so that it predicts the same distribution
over the vocabulary at every position: the loss of each ending token is then known exactly, and so is which
ending wins. No test downloads anything: the cache is a folder the test fills, and the no-network case is
urllib failing as it does offline.
"""

from __future__ import annotations

import json
import math
import statistics
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, TINY_TRAIN, run_cli, run_with_model
from scipy import stats as scipy_stats

import gptlab
from gptlab.config import ModelConfig
from gptlab.errors import UserError
from gptlab.evaluate import hellaswag
from gptlab.evaluate.hellaswag import Item, evaluate_hellaswag_run, read_items, score_items
from gptlab.model import GPT
from gptlab.rundir import (
    EVALUATION,
    read_evaluation,
    read_hellaswag_evaluation,
    write_evaluation,
    write_hellaswag_evaluation,
)
from gptlab.runtime.precision import Precision
from gptlab.tokenizer import encode

CPU = torch.device("cpu")
FP32 = Precision("fp32", CPU, None)
# Logits of the fixed next-token distribution: every other token has logit 0.
LIKELY, LONG_WORD, SHORT_WORD = "good", "yes", "no"
LOGITS = {LIKELY: 14.0, LONG_WORD: 10.0, SHORT_WORD: 9.0}


def _token(word: str) -> int:
    [token] = encode(" " + word)  # each word, after a space, is one GPT-2 token
    return token


def fixed_distribution_model() -> GPT:
    """A GPT whose every position predicts softmax(LOGITS): blocks, embeddings and the final norm's scale zeroed,
    so the final hidden state is the norm's bias, e_0, and the head's column 0 holds the logits."""
    model = GPT(ModelConfig(**TINY_MODEL))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.ln_f.bias[0] = 1.0
        for word, logit in LOGITS.items():
            model.lm_head.weight[_token(word), 0] = logit
    return model.eval()


def token_losses() -> dict[int, float]:
    """-log p of each token under that distribution, computed directly from the logits."""
    vocab = TINY_MODEL["vocab_size"]
    special = {_token(word): logit for word, logit in LOGITS.items()}
    log_total = math.log((vocab - len(special)) + sum(math.exp(v) for v in special.values()))
    return {token: log_total - special.get(token, 0.0) for token in range(vocab)}


def item(ctx: str, endings: list[str], label, **extra) -> dict:
    return {"ind": 0, "activity_label": "Test", "ctx": ctx, "endings": endings, "label": label, "split": "val", **extra}


# item 1: the right ending (index 2) is the likely word three times: both scores pick it.
# item 2: " yes yes yes" has the lower loss per token, " no" the lower summed loss; the label says the long one.
# item 3: as item 2, labelled the short one; its context comes as ctx_a + ctx_b, and its label as a string.
ITEMS = [
    item("A man walks into a room and", ["sits", "eats", " ".join([LIKELY] * 3), "runs"], 2),
    item("She opens the door. She says", [SHORT_WORD, " ".join([LONG_WORD] * 3), "maybe", "later"], 1),
    {
        "ctx_a": "He reads the note.",
        "ctx_b": "he says",
        "endings": [SHORT_WORD, " ".join([LONG_WORD] * 3), "perhaps", "never"],
        "label": "0",
        "split": "val",
    },
]


def write_items(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def expected_scores(records: list[dict]) -> tuple[float, float]:
    """acc and acc_norm computed from token_losses() alone, as the rule says: lowest summed / mean ending loss."""
    losses = token_losses()
    right = {"acc": 0, "acc_norm": 0}
    for record in records:
        per_ending = [[losses[t] for t in encode(" " + ending)] for ending in record["endings"]]
        label = int(record["label"])
        right["acc"] += min(range(4), key=lambda e: sum(per_ending[e])) == label
        right["acc_norm"] += min(range(4), key=lambda e: statistics.fmean(per_ending[e])) == label
    return right["acc"] / len(records), right["acc_norm"] / len(records)


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory) -> Path:
    return run_with_model(tmp_path_factory.mktemp("hellaswag") / "fixed", fixed_distribution_model())


def test_the_known_ending_wins_and_length_decides_between_acc_and_acc_norm(fixed_run, tmp_path):
    path = write_items(tmp_path / "items.jsonl", ITEMS)
    acc, acc_norm = expected_scores(ITEMS)
    assert (acc, acc_norm) == (2 / 3, 2 / 3)  # item 1 both; item 2 only acc_norm; item 3 only acc

    result = evaluate_hellaswag_run(fixed_run, file=path, batch_items=2)
    assert result["acc"] == pytest.approx(acc) and result["acc_norm"] == pytest.approx(acc_norm)
    assert result["items"] == 3 and result["split"] == "val" and result["endings_cut"] == 0
    assert gptlab.evaluate(fixed_run, task="hellaswag", file=path, batch_size=2) == result  # the Python API

    items, _ = read_items(path)
    assert items[2].context == "He reads the note. he says" and items[2].label == 0
    scores = score_items(fixed_run_model(fixed_run), items, FP32, CPU, batch_items=3)
    losses = token_losses()
    for i, record in enumerate(ITEMS):
        for e, ending in enumerate(record["endings"]):
            tokens = encode(" " + ending)
            assert scores.tokens[i, e] == len(tokens)
            assert float(scores.summed[i, e]) == pytest.approx(sum(losses[t] for t in tokens), abs=1e-4)
    for index, wins in ((1, "acc_norm"), (2, "acc")):  # items 2 and 3 alone: one score right, the other wrong
        alone = evaluate_hellaswag_run(fixed_run, file=write_items(tmp_path / f"{index}.jsonl", [ITEMS[index]]))
        assert alone[wins] == 1.0 and alone["acc" if wins == "acc_norm" else "acc_norm"] == 0.0


def fixed_run_model(run_dir: Path) -> GPT:
    from gptlab.runtime.runs import open_trained_run

    return open_trained_run(run_dir).model


def test_batched_scores_equal_each_ending_scored_alone(tmp_path):
    """A random model, so context matters: padding, the mask and the length order must not change a score."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**TINY_MODEL)).eval()
    words = "the cat sat on a mat and then it ran far away from home while we all sang".split()
    records = [
        item(" ".join(words[: 3 + i]), [" ".join(words[j : j + 1 + (i + j) % 5]) for j in range(4)], i % 4)
        for i in range(7)
    ]
    records.append(item(" ".join(words * 3), [" a b", " c", " d e f", " g"], 0))  # longer than the context
    items, _ = read_items(write_items(tmp_path / "items.jsonl", records))
    batched = score_items(model, items, FP32, CPU, batch_items=3)
    one_by_one = score_items(model, items, FP32, CPU, batch_items=1)
    by_tokens = score_items(model, items, FP32, CPU, max_tokens=4 * 3 * 24)  # as many items as fill 288 positions
    assert torch.allclose(batched.summed, one_by_one.summed, rtol=1e-5)
    assert torch.allclose(by_tokens.summed, one_by_one.summed, rtol=1e-5)
    assert torch.equal(batched.tokens, one_by_one.tokens)
    assert [len(group) for group in hellaswag._batches([0, 1, 2, 3], [5, 6, 10, 40], None, 4 * 2 * 10)] == [2, 1, 1]
    context_length = TINY_MODEL["context_length"]
    with torch.no_grad():
        for i, record in enumerate(records):
            context = encode(record["ctx"])
            for e, ending in enumerate(record["endings"]):
                completion = encode(" " + ending)
                tokens = torch.tensor(context + completion)[-(context_length + 1) :]
                log_probs = torch.log_softmax(model(tokens[None, :-1])[0].float(), dim=-1)
                picked = -log_probs[torch.arange(len(tokens) - 1), tokens[1:]][-len(completion) :]
                assert float(batched.summed[i, e]) == pytest.approx(float(picked.sum()), rel=1e-5)
    assert len(encode(records[-1]["ctx"])) > context_length and batched.endings_cut == 0


@pytest.mark.parametrize(
    "line, words",
    [
        ('{"ctx": "x", "endings": ["a", "b"', "not valid JSON"),
        ('["ctx", "endings"]', "not a JSON object"),
        (json.dumps(item("x", ["a", "b", "c"], 0)), "'endings' has 3 endings; a HellaSwag item has 4"),
        (json.dumps(item("x", ["a", "b", "c", 4], 0)), "'endings' must be a list of 4 strings"),
        (json.dumps(item("x", ["a", "b", "c", "d"], 4)), "'label' 4 is not 0, 1, 2 or 3"),
        (json.dumps(item("x", ["a", "b", "c", "d"], "two")), "'label' \"two\" is not 0, 1, 2 or 3"),
        (json.dumps(item("x", ["a", "b", "c", "d"], "")), "no 'label'"),
        (json.dumps({"endings": ["a", "b", "c", "d"], "label": 0}), "no context"),
    ],
)
def test_a_malformed_line_names_its_file_and_line(tmp_path, line, words):
    path = write_items(tmp_path / "bad.jsonl", [ITEMS[0], "", line])
    with pytest.raises(UserError) as raised:
        read_items(path)
    [message] = raised.value.lines
    assert message.startswith(f"{path}:3: ") and words in message


def test_cli_bad_line_exits_2_with_one_line(fixed_run, tmp_path):
    path = write_items(tmp_path / "bad.jsonl", [ITEMS[0], item("x", ["a", "b", "c", "d"], 7)])
    result = run_cli("eval", str(fixed_run), "--task", "hellaswag", "--file", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(f"{path}:2: 'label' 7 is not 0, 1, 2 or 3 (the index of the right ending)")
    )
    result = run_cli("eval", str(fixed_run), "--task", "hellaswag", "--file", str(path), "--batches", "3")
    assert result.returncode == 2 and "--task hellaswag: --batches is for --task loss" in result.stderr


def test_cli_json_limit_and_save_keep_the_test_loss(fixed_run, tmp_path):
    path = write_items(tmp_path / "items.jsonl", ITEMS)
    test_loss = {"loss": 5.25, "tokens_sha256": "ab" * 32, "checkpoint": "x", "split": "test", "batches": 3}
    (fixed_run / EVALUATION).write_text(json.dumps(test_loss))
    try:
        result = run_cli(
            "eval", str(fixed_run), "--task", "hellaswag", "--file", str(path), "--limit", "1", "--json", "--save"
        )
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout)
        assert printed["items"] == 1 and printed["limit"] == 1 and printed["acc"] == printed["acc_norm"] == 1.0
        assert printed["file_sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
        saved = read_evaluation(fixed_run)
        assert {key: saved[key] for key in test_loss} == test_loss  # the test loss and its identity are untouched
        assert saved["hellaswag"] == {**printed, "checkpoint_choice": "latest"}
        # a later test-loss evaluation keeps the HellaSwag entry
        write_evaluation(fixed_run, {**test_loss, "loss": 5.0}, "latest")
        assert read_evaluation(fixed_run)["loss"] == 5.0 and read_hellaswag_evaluation(fixed_run) == saved["hellaswag"]

        whole = run_cli("eval", str(fixed_run), "--task", "hellaswag", "--file", str(path), "--no-progress")
        assert whole.returncode == 0, whole.stderr
        acc, acc_norm = expected_scores(ITEMS)
        assert f"acc_norm: {acc_norm:.4f}, acc: {acc:.4f}" in whole.stdout and "3 items" in whole.stdout
    finally:
        (fixed_run / EVALUATION).unlink()


def test_the_cached_file_is_used_and_no_network_says_to_pass_file(fixed_run, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cached = cache / "gptlab" / "hellaswag" / "hellaswag_val.jsonl"
    cached.parent.mkdir(parents=True)
    write_items(cached, ITEMS)
    result = run_cli(
        "eval", str(fixed_run), "--task", "hellaswag", "--json", "--no-progress", env={"XDG_CACHE_HOME": str(cache)}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["file"] == str(cached)

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    with pytest.raises(UserError) as raised:
        hellaswag.locate_file(None)
    [message] = raised.value.lines
    assert hellaswag.VALIDATION_URL in message and "pass --file PATH" in message
    assert not (tmp_path / "empty" / "gptlab" / "hellaswag" / "hellaswag_val.jsonl").exists()


def test_a_download_that_is_not_hellaswag_never_becomes_the_cache(tmp_path, monkeypatch):
    class Page:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        sent = False

        def read1(self, size=-1):  # what the download reads with, a chunk at a time
            page, self.sent = (b"" if self.sent else b"<html>proxy login</html>\n"), True
            return page

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Page())
    target = tmp_path / "hellaswag_val.jsonl"
    with pytest.raises(UserError, match="not valid JSON"):
        hellaswag.download_validation_file(target)
    assert list(tmp_path.iterdir()) == []


# --- compare --------------------------------------------------------------------------------------------------

CHECKPOINT = "20260101Z000000-iteration-11"
FILE_SHA = "cd" * 32


def fake_run(root: Path, name: str, seed: int, learning_rate: float, loss: float, acc_norm=None, **hellaswag_keys):
    """A finished run as compare reads it: configs, summary.json and evaluation.json, no weights needed."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    model, train = (
        TINY_MODEL,
        {"dataset": "alice/data", **TINY_TRAIN, "learning_rate": learning_rate, "random_seed": seed},
    )
    (run_dir / "model.json").write_text(json.dumps(model))
    (run_dir / "train.json").write_text(json.dumps(train))
    summary = {"config": {"model": model, "train": train}, "steps": 12, "tokens_seen": 4096, "world_size": 1}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    evaluation = {
        "loss": loss,
        "checkpoint": CHECKPOINT,
        "split": "test",
        "start_token": 0,
        "batches": 4,
        "batch_size": 4,
        "context_length": 32,
        "tokens": 512,
        "precision": "fp32",
        "tokens_sha256": "ef" * 32,
        "tokenizer_fingerprint": "gpt2",
        "checkpoint_choice": "latest",
    }
    (run_dir / EVALUATION).write_text(json.dumps(evaluation))
    if acc_norm is not None:
        entry = {
            "task": "hellaswag",
            "checkpoint": CHECKPOINT,
            "acc": acc_norm - 0.01,
            "acc_norm": acc_norm,
            "items": 200,
            "limit": 200,
            "file": "/data/hellaswag_val.jsonl",
            "file_sha256": FILE_SHA,
            "split": "val",
            "precision": "fp32",
            **hellaswag_keys,
        }
        write_hellaswag_evaluation(run_dir, entry, "latest")
    return run_dir


BASE_ACC = [0.300, 0.315, 0.290]
BETTER_ACC = [0.340, 0.350, 0.335]
SAME_ACC = [0.305, 0.305, 0.300]


@pytest.fixture
def groups(tmp_path) -> dict[str, list[Path]]:
    made = {"baseline": [], "lr-high": [], "lr-low": []}
    for seed, base, better, same in zip((1, 2, 3), BASE_ACC, BETTER_ACC, SAME_ACC):
        made["baseline"].append(fake_run(tmp_path, f"baseline-seed{seed}", seed, 0.003, 5.00 + seed / 100, base))
        made["lr-high"].append(fake_run(tmp_path, f"lr-high-seed{seed}", seed, 0.006, 4.90 + seed / 100, better))
        made["lr-low"].append(fake_run(tmp_path, f"lr-low-seed{seed}", seed, 0.002, 5.01 + seed / 90, same))
    return made


def _compare(*runs: Path, output_format: str = "json"):
    """`gptlab compare RUNS --format json` in this process (the CLI itself runs once, in the first test)."""
    from gptlab.experiments.compare import compare_runs
    from gptlab.experiments.tables import render

    text = render(compare_runs(list(runs), echo=lambda line: None), output_format, width=400)
    return json.loads(text) if output_format == "json" else text


def test_compare_shows_hellaswag_with_its_own_verdict(groups):
    runs = [run for group in groups.values() for run in group]
    table = _compare(*runs)
    rows = {row["run"]: row for row in table["rows"]}
    assert table["hellaswag"]["items"] == 200 and table["hellaswag"]["file"] == "hellaswag_val.jsonl"
    assert rows["baseline"]["hellaswag"] == pytest.approx(statistics.fmean(BASE_ACC))
    assert rows["baseline"]["hellaswag_verdict"] == "baseline"

    # same seeds, same data order: the paired t-test on per-seed accuracies decides; Holm over the two
    better, same = rows["lr-high"], rows["lr-low"]
    p_better = scipy_stats.ttest_rel(BETTER_ACC, BASE_ACC).pvalue
    p_same = scipy_stats.ttest_rel(SAME_ACC, BASE_ACC).pvalue
    assert better["hellaswag_p"] == pytest.approx(p_better, rel=1e-9)
    assert same["hellaswag_p"] == pytest.approx(p_same, rel=1e-9)
    assert better["hellaswag_p_holm"] == pytest.approx(min(1, 2 * min(p_better, p_same)), rel=1e-9)
    assert better["hellaswag_difference"] == pytest.approx(statistics.fmean(BETTER_ACC) - statistics.fmean(BASE_ACC))
    assert better["hellaswag_noise"] == "better, beyond noise" and same["hellaswag_noise"] == "within noise"
    assert better["hellaswag_verdict"].startswith("better, beyond noise (paired t, Holm p=")

    terminal = run_cli("compare", *map(str, runs), env={"COLUMNS": "400"})  # wide enough that no cell wraps
    assert terminal.returncode == 0, terminal.stderr
    header, _, *lines = terminal.stdout.splitlines()
    assert "hellaswag" in header.split()
    line = next(text for text in lines if text.startswith("lr-high"))
    assert f"{statistics.fmean(BETTER_ACC):.4f} (+0.0400, better, beyond noise (paired t" in line
    assert any(
        note.startswith("HellaSwag: acc_norm") and "200 items of hellaswag_val.jsonl" in note for note in table["notes"]
    )

    from gptlab.experiments.compare import build_comparison, load_results
    from gptlab.experiments.report import table_html

    html = table_html(build_comparison(load_results(runs)))
    assert "<th>hellaswag</th>" in html and f"{statistics.fmean(BETTER_ACC):.4f} (+0.0400, better, beyond noise" in html


def test_compare_leaves_hellaswag_out_unless_every_run_has_the_same_items(groups, tmp_path):
    runs = [run for group in groups.values() for run in group]
    other = fake_run(tmp_path, "lr-low-seed4", 4, 0.002, 5.03, 0.31, items=100, limit=100)
    table = _compare(*runs, other)
    assert all(row["hellaswag"] is None for row in table["rows"]) and table["hellaswag"] is None
    [note] = [note for note in table["notes"] if note.startswith("HellaSwag")]
    assert f"{other} was scored on 100 items" in note

    bare = fake_run(tmp_path, "lr-low-seed5", 5, 0.002, 5.03)
    table = _compare(*runs, bare)
    [note] = [note for note in table["notes"] if note.startswith("HellaSwag")]
    assert f"{bare} has none (`gptlab eval {bare} --task hellaswag --save`)" in note
    header, rule, *lines = _compare(*runs, bare, output_format="terminal").splitlines()
    column = header.index("hellaswag")
    assert all(line[column] == "-" for line in lines if line.startswith(("baseline", "lr-")))

    plain = [fake_run(tmp_path / "plain", f"run-seed{seed}", seed, 0.003, 5 + seed / 100) for seed in (1, 2)]
    assert not [note for note in _compare(*plain)["notes"] if "HellaSwag" in note]


def test_compare_refuses_hellaswag_scored_in_mixed_precision_as_the_loss_does(groups, tmp_path):
    runs = [run for group in groups.values() for run in group]
    bf16 = fake_run(tmp_path, "lr-low-seed4", 4, 0.002, 5.03, 0.31, precision="bf16")
    table = _compare(*runs, bf16)
    assert all(row["hellaswag"] is None for row in table["rows"]) and table["hellaswag"] is None
    [note] = [note for note in table["notes"] if note.startswith("HellaSwag")]
    assert f"{bf16} was scored in bf16" in note and "in fp32" in note and "same evaluation precision" in note


def test_hellaswag_zero_spread_of_paired_differences_is_no_noise_estimate(tmp_path):
    """One more item right on every seed: the old paired t said p = 0, 'beyond noise'."""
    made = []
    for seed, accuracy in zip((1, 2, 3), (0.30, 0.32, 0.29)):
        made.append(fake_run(tmp_path, f"baseline-seed{seed}", seed, 0.003, 5.00 + seed / 100, accuracy))
        made.append(fake_run(tmp_path, f"lr-seed{seed}", seed, 0.006, 4.95 + seed / 97, accuracy + 0.005))
    rows = {row["run"]: row for row in _compare(*made)["rows"]}
    assert rows["lr"]["hellaswag_noise"] == "no noise estimate" and rows["lr"]["hellaswag_p"] is None
    assert rows["lr"]["hellaswag_verdict"].startswith("no noise estimate: every seed differs from its baseline seed")


def test_improvement_is_the_difference_of_the_means_shown_and_the_matched_seeds_one_is_labelled(tmp_path):
    """A group paired with 3 of the baseline's 5 seeds: its improvement is of the means in the table; the paired
    test's matched-seed difference (what its interval and p are of) stands beside it, labelled."""
    base_loss, base_acc = [5.00, 5.03, 4.98, 5.10, 5.12], [0.30, 0.31, 0.29, 0.28, 0.27]
    made = [
        fake_run(tmp_path, f"baseline-seed{seed}", seed, 0.003, loss, acc)
        for seed, loss, acc in zip(range(1, 6), base_loss, base_acc)
    ]
    ours_loss, ours_acc = [4.95, 4.99, 4.92], [0.33, 0.33, 0.32]
    made += [
        fake_run(tmp_path, f"lr-seed{seed}", seed, 0.006, loss, acc)
        for seed, loss, acc in zip(range(1, 4), ours_loss, ours_acc)
    ]
    table = _compare(*made)
    rows = {row["run"]: row for row in table["rows"]}
    lr = rows["lr"]
    assert lr["improvement"] == pytest.approx(rows["baseline"]["test_loss"] - lr["test_loss"])
    paired = scipy_stats.ttest_rel(base_loss[:3], ours_loss)
    assert lr["matched_improvement"] == pytest.approx(statistics.fmean(base_loss[:3]) - statistics.fmean(ours_loss))
    assert lr["improvement_ci"] == pytest.approx(list(paired.confidence_interval(0.95)), rel=1e-9)
    assert lr["hellaswag_difference"] == pytest.approx(statistics.fmean(ours_acc) - statistics.fmean(base_acc))
    assert lr["hellaswag_matched_difference"] == pytest.approx(
        statistics.fmean(ours_acc) - statistics.fmean(base_acc[:3])
    )
    line = next(text for text in _compare(*made, output_format="terminal").splitlines() if text.startswith("lr "))
    assert f"{lr['improvement']:+.4f} (matched seeds {lr['matched_improvement']:+.4f})" in line
    assert f"matched seeds {lr['hellaswag_matched_difference']:+.4f}" in line


def test_model_card_carries_hellaswag(fixed_run, tmp_path):
    from huggingface_hub import ModelCard

    from gptlab.export.hf import export_run

    path = write_items(tmp_path / "hellaswag_val.jsonl", ITEMS)
    result = evaluate_hellaswag_run(fixed_run, file=path)
    write_hellaswag_evaluation(fixed_run, result, "latest")
    try:
        export_run(fixed_run, tmp_path / "export")
    finally:
        (fixed_run / EVALUATION).unlink()
    text = (tmp_path / "export" / "README.md").read_text()
    # a hand-made file named like the official one is not the official validation set: no model-index entry
    # against the Hub's HellaSwag, and the text names the file and its item count
    assert not [r for r in ModelCard(text).data.eval_results or [] if r.metric_type in ("acc", "acc_norm")]
    assert "Rowan/hellaswag" not in text
    assert f"HellaSwag: acc_norm {result['acc_norm']:.4f}, acc {result['acc']:.4f}" in text
    assert (
        f"{len(ITEMS)} items of `hellaswag_val.jsonl`" in text and "not the official HellaSwag validation set" in text
    )
    assert str(tmp_path) not in text


def _card_with_hellaswag(entry: dict, dataset: str = "alice/tiny-stories", local: bool = False) -> str:
    from gptlab.config import ModelConfig, RunConfig, TrainConfig
    from gptlab.export.card import CardFacts, model_card

    config = RunConfig(model=ModelConfig(**TINY_MODEL), train=TrainConfig(dataset=dataset, microbatch_size=4))
    facts = CardFacts(config, "x", {}, 1, None, None, "Hi", "there", 1, hellaswag=entry, dataset_is_local=local)
    return model_card(facts)


def test_model_card_names_the_official_validation_set_only_for_its_10042_items(monkeypatch):
    from huggingface_hub import ModelCard

    from gptlab.evaluate import hellaswag

    entry = {"acc_norm": 0.3, "acc": 0.29, "items": 10_042, "limit": None, "file": "/x/hellaswag_val.jsonl"}
    entry |= {"file_sha256": "ab" * 32, "precision": "fp32", "split": "val"}
    text = _card_with_hellaswag(entry)
    results = {r.metric_type: r for r in ModelCard(text).data.eval_results}
    assert results["acc_norm"].dataset_type == "Rowan/hellaswag" and results["acc_norm"].dataset_split == "validation"
    assert "by file name and item count (10,042); the check of the file's sha256 is pending" in text
    for partial in ({"items": 100, "limit": 100}, {"file": "/x/mine.jsonl"}):
        text = _card_with_hellaswag({**entry, **partial})
        assert not ModelCard(text).data.eval_results and "not the official HellaSwag validation set" in text
    # once the official hash is recorded, the hash decides
    monkeypatch.setattr(hellaswag, "VALIDATION_SHA256", "cd" * 32)
    assert not ModelCard(_card_with_hellaswag(entry)).data.eval_results
    text = _card_with_hellaswag({**entry, "file_sha256": "cd" * 32})
    assert ModelCard(text).data.eval_results and "validation set (its file's sha256)" in text


def test_a_local_folder_named_like_a_hub_id_is_not_listed_as_a_hub_dataset():
    from huggingface_hub import ModelCard

    assert ModelCard(_card_with_hellaswag(None, "alice/data", local=True)).data.datasets is None
    assert ModelCard(_card_with_hellaswag(None, "alice/data", local=False)).data.datasets == ["alice/data"]


# The validation file's item 24 as rowanz/hellaswag's data/hellaswag_val.jsonl holds it (quoted in its README).
REAL_LINE = (
    '{"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he", '
    '"ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3, '
    '"endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", '
    '"is holding a rubik\'s cube.", "starts pulling up roofing on a roof."], "source_id": "activitynet~v_-JhWjGDPHMY"}'
)


def test_items_parse_as_the_dataset_writes_them():
    """ctx is ctx_a, a space, ctx_b (the dataset's README); the Hugging Face copy's labels are strings."""
    parsed = hellaswag.parse_item(REAL_LINE, "f:1", 1)
    assert parsed == Item(1, "A man is sitting on a roof. he", tuple(json.loads(REAL_LINE)["endings"]), 3, "val")
    without_ctx = {key: value for key, value in json.loads(REAL_LINE).items() if key != "ctx"}
    assert hellaswag.parse_item(json.dumps({**without_ctx, "label": "3"}), "f:1", 1) == parsed
    no_b = hellaswag.parse_item(json.dumps({**without_ctx, "ctx_b": ""}), "f:1", 1)
    assert no_b.context == "A man is sitting on a roof."
