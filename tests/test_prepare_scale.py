"""`prepare` from one short story to FineWeb-sized sources: split rules, parallel workers, resume after a
kill, the Hugging Face path (on a local dataset folder the test writes: no network), and clear errors."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, write_run
from safetensors.numpy import load_file, save_file

import gptlab.data.prepare as prepare_module
from gptlab.data.inspect import inspect_dataset
from gptlab.data.prepare import STATE_FILE, prepare_dataset, rows_boundary
from gptlab.data.sources import SourceOptions, open_source
from gptlab.data.tokens import TokenDataset
from gptlab.errors import UserError
from gptlab.tokenizer import END_OF_TEXT_ID, encode_documents

SPLITS = ("train", "validation", "test")


def split_bytes(directory):
    return {
        name: (directory / f"{name}.safetensors").read_bytes()
        for name in SPLITS
        if (directory / f"{name}.safetensors").exists()
    }


def tokens_of(documents):
    """Each document's GPT-2 tokens followed by <|endoftext|>, concatenated (computed independently of prepare)."""
    return np.array([t for ids in encode_documents(list(documents)) for t in ids + [END_OF_TEXT_ID]], dtype=np.uint16)


@pytest.fixture(scope="module")
def brown_texts():
    return [text for text in open_source("brown", SourceOptions()).rows(0) if text]


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory, brown_texts):
    """A folder of parquet shards as a Hugging Face download leaves it: README, shards in a sub-folder."""
    folder = tmp_path_factory.mktemp("download")
    (folder / "sample" / "10BT").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: odc-by\n---\n# a dataset card, not data\n")
    rows = [text[:1500] for text in brown_texts] + [""]  # short rows: many chunks; one empty row still counts as a row
    for shard, start in enumerate(range(0, len(rows), 200)):
        pq.write_table(
            pa.table(
                {"text": rows[start : start + 200], "id": list(range(start, start + len(rows[start : start + 200])))}
            ),
            folder / "sample" / "10BT" / f"{shard:03}_00000.parquet",
            row_group_size=64,
        )
    return folder, rows


@pytest.mark.slow
def test_one_story_prepares_into_three_contiguous_splits_and_trains(tmp_path, brown_texts):
    """The book's case: one short story in one .txt file (here three Brown documents as one text)."""
    from gptlab.train.loop import train_run

    story = "\n\n".join(brown_texts[:3])
    (tmp_path / "the-story.txt").write_text(story)
    result = run_cli(
        "prepare", str(tmp_path / "the-story.txt"), str(tmp_path / "data"), "--context-length", "32", "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    assert "cut into contiguous token ranges" in result.stdout
    splits = {name: load_file(tmp_path / "data" / f"{name}.safetensors")["tokens"] for name in SPLITS}
    whole = tokens_of([story])
    assert np.array_equal(np.concatenate([splits[name] for name in SPLITS]), whole)  # in order, nothing lost
    assert len(splits["validation"]) == round(0.05 * len(whole)) == len(splits["test"])
    assert len(splits["train"]) == len(whole) - 2 * round(0.05 * len(whole))
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["split_rule"]["by"] == "tokens" and meta["split_rule"]["chosen_by"] == "auto"

    run = write_run(
        tmp_path / "run", tmp_path / "data", train={"min_train_tokens": 4 * 32 * 6, "validation_interval": 3}
    )
    summary = train_run(run, show_progress=False)
    assert summary["tokens_seen"] == 4 * 32 * 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("validation_loss" in record for record in records)


def test_a_split_under_one_context_window_names_the_fraction(tmp_path, brown_texts):
    (tmp_path / "story.txt").write_text(brown_texts[0])
    with pytest.raises(
        UserError, match=r"validation split holds \d+ tokens.*raise --validation-fraction \(to at least 0\.\d+\)"
    ):
        prepare_dataset(str(tmp_path / "story.txt"), tmp_path / "out", show_progress=False, context_length=512)
    assert not (tmp_path / "out" / "train.safetensors").exists() and not (tmp_path / "out" / STATE_FILE).exists()


def test_folder_takes_every_text_file_and_skips_binary_ones(tmp_path, brown_texts):
    (tmp_path / "notes" / "deeper").mkdir(parents=True)
    for i, text in enumerate(brown_texts[:30]):
        (tmp_path / "notes" / ("deeper" if i % 3 else "") / f"{i:02}.md").write_text(text)
    (tmp_path / "notes" / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (tmp_path / "notes" / ".hidden.md").write_text("not read")
    meta = prepare_dataset(str(tmp_path / "notes"), tmp_path / "out", show_progress=False, context_length=32)
    assert meta["source"]["skipped_files"] == 1
    assert sum(meta["documents"].values()) == 30
    assert sum(meta["tokens"].values()) == len(tokens_of(brown_texts[:30]))
    only_deeper = prepare_dataset(
        str(tmp_path / "notes"),
        tmp_path / "out2",
        show_progress=False,
        context_length=32,
        source_options=prepare_module.SourceOptions(glob="deeper/*.md"),
    )
    assert sum(only_deeper["documents"].values()) == 20


def test_workers_give_byte_identical_files(tmp_path, shard_folder, monkeypatch):
    folder, rows = shard_folder
    monkeypatch.setattr(prepare_module, "CHUNK_DOCUMENTS", 16)  # many chunks, finished out of order by the workers
    one = prepare_dataset(str(folder), tmp_path / "one", show_progress=False, workers=1)
    three = prepare_dataset(str(folder), tmp_path / "three", show_progress=False, workers=3)
    assert split_bytes(tmp_path / "one") == split_bytes(tmp_path / "three")
    assert one["tokens"] == three["tokens"] and one["split_rule"]["by"] == "documents"
    assert one["rows"] == {"read": len(rows), "total": len(rows)}
    everything = np.concatenate([load_file(tmp_path / "one" / f"{name}.safetensors")["tokens"] for name in SPLITS])
    assert sorted(everything.tolist()) == sorted(tokens_of([r for r in rows if r]).tolist())


def test_resume_after_a_kill_gives_identical_files(tmp_path, shard_folder):
    folder, _ = shard_folder
    prepare_dataset(str(folder), tmp_path / "whole", show_progress=False, workers=1)
    # A child process whose tokenising is slowed down, so it can be killed (SIGKILL: no clean-up) mid-way.
    script = f"""
import time, gptlab.data.prepare as p
p.CHUNK_DOCUMENTS = 16
real = p.tokenise_chunk
p.tokenise_chunk = lambda texts: (time.sleep(0.05), real(texts))[1]
p.prepare_dataset({str(folder)!r}, {str(tmp_path / "killed")!r}, show_progress=False, workers=1, save_interval_seconds=0)
"""
    child = subprocess.Popen([sys.executable, "-c", script])
    state = tmp_path / "killed" / STATE_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if state.exists() and json.loads(state.read_text())["progress"]["rows_done"] >= 100:
            break
        time.sleep(0.02)
    assert child.poll() is None, "the prepare finished before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = json.loads(state.read_text())["progress"]["rows_done"]
    assert 100 <= done < 501 and not (tmp_path / "killed" / "train.safetensors").exists()

    # Other options are refused rather than mixed into the half-written splits.
    with pytest.raises(UserError, match="interrupted prepare .* other options"):
        prepare_dataset(str(folder), tmp_path / "killed", show_progress=False, seed=7)
    prepare_dataset(str(folder), tmp_path / "killed", show_progress=False, workers=2)
    assert split_bytes(tmp_path / "killed") == split_bytes(tmp_path / "whole")
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == [
        "meta.json",
        "test.safetensors",
        "train.safetensors",
        "validation.safetensors",
    ]


def test_rows_rule_matches_a_hand_computation_and_datasets_slicing(tmp_path, shard_folder, monkeypatch):
    folder, rows = shard_folder
    monkeypatch.setattr(prepare_module, "CHUNK_DOCUMENTS", 32)
    meta = prepare_dataset(
        str(folder), tmp_path / "out", show_progress=False, split_rule="rows:99", workers=2, context_length=32
    )
    boundary = round(0.99 * len(rows))  # 501 rows: row 496 is the first validation row
    assert rows_boundary(99, len(rows)) == boundary == 496
    assert not (tmp_path / "out" / "test.safetensors").exists() and set(meta["tokens"]) == {"train", "validation"}
    assert np.array_equal(
        load_file(tmp_path / "out" / "train.safetensors")["tokens"], tokens_of([r for r in rows[:boundary] if r])
    )
    assert np.array_equal(
        load_file(tmp_path / "out" / "validation.safetensors")["tokens"], tokens_of([r for r in rows[boundary:] if r])
    )
    assert meta["split_rule"] == {
        "by": "rows",
        "train_rows_percent": 99.0,
        "rule": "first round(99% of rows) train, the rest validation, no test",
    }

    # The same rows as `datasets` gives for the users' `train[:99%]` / `train[99%:]`.
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    files = sorted(str(p) for p in folder.rglob("*.parquet"))
    cache = str(tmp_path / "hf-cache")
    head = datasets.load_dataset("parquet", data_files=files, split="train[:99%]", cache_dir=cache)
    tail = datasets.load_dataset("parquet", data_files=files, split="train[99%:]", cache_dir=cache)
    assert head["text"] == rows[:boundary] and tail["text"] == rows[boundary:]


def test_max_tokens(tmp_path, shard_folder):
    folder, rows = shard_folder
    longest = max(len(ids) + 1 for ids in encode_documents([r for r in rows if r]))
    by_documents = prepare_dataset(str(folder), tmp_path / "documents", show_progress=False, max_tokens=20_000)
    assert 20_000 <= by_documents["tokens"]["train"] < 20_000 + longest
    by_rows = prepare_dataset(
        str(folder), tmp_path / "rows", show_progress=False, max_tokens=20_000, split_rule="rows:99", context_length=32
    )
    assert 20_000 <= by_rows["tokens"]["train"] < 20_000 + longest
    # Validation is still the whole last 1% of rows.
    assert np.array_equal(
        load_file(tmp_path / "rows" / "validation.safetensors")["tokens"], tokens_of([r for r in rows[496:] if r])
    )


def test_hugging_face_path_on_a_local_dataset_folder(tmp_path, shard_folder, monkeypatch):
    """`hf:` goes through `datasets.load_dataset(..., streaming=True)`; a local folder stands in for the Hub."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    folder, rows = shard_folder
    local = tmp_path / "local"
    (local / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": rows[:300]}), local / "data" / "train-00000-of-00001.parquet")
    meta = prepare_dataset(f"hf:{local}", tmp_path / "hub", show_progress=False, workers=2)
    prepare_dataset(str(local / "data" / "train-00000-of-00001.parquet"), tmp_path / "direct", show_progress=False)
    assert split_bytes(tmp_path / "hub") == split_bytes(tmp_path / "direct")
    assert meta["source"]["kind"] == "huggingface" and meta["source"]["split"] == "train"
    with pytest.raises(UserError, match="no 'body' column"):
        prepare_dataset(
            f"hf:{local}",
            tmp_path / "bad",
            show_progress=False,
            source_options=prepare_module.SourceOptions(text_field="body"),
        )


def test_hugging_face_path_without_datasets_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the optional extra were not installed
    with pytest.raises(UserError, match=r"needs the `datasets` library: pip install 'gptlab\[hf\]'"):
        prepare_dataset("hf:HuggingFaceFW/fineweb", tmp_path / "out", show_progress=False)


@pytest.mark.parametrize(
    "name, write, message",
    [
        (
            "latin.jsonl",
            lambda p: p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n'),
            r"latin\.jsonl:2: byte 0xe9 at column 14 is not valid utf-8; pass --encoding",
        ),
        (
            "numbers.parquet",
            lambda p: pq.write_table(pa.table({"text": [1, 2, 3]}), p),
            r"numbers\.parquet: column 'text' has type int64, not text; name a string column with --text-field",
        ),
    ],
)
def test_undecodable_jsonl_and_non_text_column_are_one_line(tmp_path, name, write, message):
    write(tmp_path / name)
    result = run_cli("prepare", str(tmp_path / name), str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert "tokenising" not in result.stderr  # no progress bar before a source error


def test_encoding_option_reads_a_latin1_jsonl(tmp_path):
    (tmp_path / "latin.jsonl").write_bytes(b"".join(b'{"text": "caf\xe9 number %d"}\n' % i for i in range(40)))
    meta = prepare_dataset(
        str(tmp_path / "latin.jsonl"),
        tmp_path / "out",
        show_progress=False,
        context_length=4,
        source_options=prepare_module.SourceOptions(encoding="latin-1"),
    )
    train = load_file(tmp_path / "out" / "train.safetensors")["tokens"]
    assert np.array_equal(train[: len(tokens_of(["café number 0"]))], tokens_of(["café number 0"]))
    assert meta["split_rule"]["by"] == "tokens"


def test_inspect_checks_ids_and_separators(tmp_path, brown_dataset):
    report = inspect_dataset(brown_dataset)
    assert report["problems"] == []
    assert {name: split["tokens"] for name, split in report["splits"].items()} == json.loads(
        (brown_dataset / "meta.json").read_text()
    )["tokens"]
    assert report["first_documents"][0].startswith("The Fulton County Grand Jury")
    # A dataset written elsewhere (safetensors' own writer, no meta.json) with an id past the vocabulary.
    (tmp_path / "bad").mkdir()
    save_file({"tokens": np.array([1, 2, 50256, 60000, 7], dtype=np.uint16)}, tmp_path / "bad" / "train.safetensors")
    result = run_cli("data", "inspect", str(tmp_path / "bad"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "token id 60000 is outside the vocabulary [0, 50257)" in result.stderr
    assert "does not end with <|endoftext|>" in result.stderr
    assert len(TokenDataset(tmp_path / "bad").split("train")) == 5  # the older header layout still opens


def test_disk_full_is_one_line_and_gives_the_space_back(tmp_path, shard_folder, monkeypatch):
    """ENOSPC simulated at the writer (mounting a small tmpfs needs privileges the test machines lack)."""
    import errno

    from gptlab.data.tokens import TokenSplitWriter

    folder, _ = shard_folder
    real_write = TokenSplitWriter.write
    written = []

    def write_until_full(self, tokens):
        if len(written) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(tokens))
        real_write(self, tokens)

    monkeypatch.setattr(TokenSplitWriter, "write", write_until_full)
    monkeypatch.setattr(prepare_module, "CHUNK_DOCUMENTS", 16)
    with pytest.raises(
        UserError, match=r"no space left on the device while writing tokens .* free space and run the command again"
    ):
        prepare_dataset(str(folder), tmp_path / "out", show_progress=False)
    assert list((tmp_path / "out").iterdir()) == []
