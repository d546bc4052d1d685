import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

from gptlab.data.prepare import SplitFractions, prepare_dataset
from gptlab.data.tokens import TokenDataset
from gptlab.errors import UserError
from gptlab.tokenizer import END_OF_TEXT_ID, encode

DOCUMENTS = [f"Document number {i} says something about topic {i % 7}. " * (3 + i % 5) for i in range(60)]


def all_tokens(directory):
    return {name: load_file(directory / f"{name}.safetensors")["tokens"] for name in ("train", "validation", "test")}


def check_dataset(directory, documents):
    splits = all_tokens(directory)
    meta = json.loads((directory / "meta.json").read_text())
    for name, tokens in splits.items():
        assert tokens.dtype == np.uint16 and tokens.ndim == 1
        assert meta["tokens"][name] == len(tokens)
        assert len(tokens) == 0 or tokens[-1] == END_OF_TEXT_ID
    assert sum(meta["documents"].values()) == len(documents)
    # Every document appears once, whole, followed by <|endoftext|>, in exactly one split.
    expected = sorted(tuple(encode(d)) + (END_OF_TEXT_ID,) for d in documents)
    found = []
    for tokens in splits.values():
        boundaries = np.flatnonzero(tokens == END_OF_TEXT_ID)
        start = 0
        for end in boundaries:
            found.append(tuple(int(t) for t in tokens[start : end + 1]))
            start = end + 1
    assert sorted(found) == expected
    assert meta["tokenizer"]["name"] == "gpt2" and meta["fractions"]["test"] == pytest.approx(0.1)
    return meta


def test_txt_file_with_separators(tmp_path):
    (tmp_path / "corpus.txt").write_text("<|endoftext|>".join(DOCUMENTS))
    prepare_dataset(
        str(tmp_path / "corpus.txt"),
        tmp_path / "out",
        SplitFractions(0.1, 0.1),
        show_progress=False,
        split_by="documents",
    )
    check_dataset(tmp_path / "out", DOCUMENTS)


def test_folder_of_txt_files(tmp_path):
    (tmp_path / "docs" / "nested").mkdir(parents=True)
    for i, document in enumerate(DOCUMENTS):
        (tmp_path / "docs" / ("nested" if i % 2 else "") / f"{i:03}.txt").write_text(document)
    prepare_dataset(
        str(tmp_path / "docs"), tmp_path / "out", SplitFractions(0.1, 0.1), show_progress=False, split_by="documents"
    )
    check_dataset(tmp_path / "out", DOCUMENTS)


def test_jsonl(tmp_path):
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCUMENTS)))
    prepare_dataset(
        str(tmp_path / "c.jsonl"), tmp_path / "out", SplitFractions(0.1, 0.1), show_progress=False, split_by="documents"
    )
    check_dataset(tmp_path / "out", DOCUMENTS)


def test_parquet_with_a_chosen_column(tmp_path):
    pq.write_table(
        pa.table({"body": DOCUMENTS, "n": list(range(len(DOCUMENTS)))}), tmp_path / "c.parquet", row_group_size=16
    )
    prepare_dataset(
        str(tmp_path / "c.parquet"),
        tmp_path / "out",
        SplitFractions(0.1, 0.1),
        text_field="body",
        show_progress=False,
        split_by="documents",
    )
    check_dataset(tmp_path / "out", DOCUMENTS)
    with pytest.raises(UserError, match="no 'text' column"):
        prepare_dataset(str(tmp_path / "c.parquet"), tmp_path / "out2", show_progress=False)


def test_split_is_fixed_by_the_seed(tmp_path):
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCUMENTS))
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        prepare_dataset(
            str(tmp_path / "c.jsonl"),
            tmp_path / name,
            SplitFractions(0.2, 0.2),
            seed=seed,
            show_progress=False,
            split_by="documents",
        )
    a, b, c = (all_tokens(tmp_path / n)["test"] for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_embedded_brown_corpus(brown_dataset):
    meta = json.loads((brown_dataset / "meta.json").read_text())
    assert sum(meta["documents"].values()) == 500
    assert 1_200_000 < sum(meta["tokens"].values()) < 1_500_000
    assert meta["source"]["kind"] == "embedded" and len(meta["source"]["sha256"]) == 64
    dataset = TokenDataset(brown_dataset)
    assert len(dataset.split("train")) == meta["tokens"]["train"]
    assert dataset.split("train").read(0, 10).tolist()[:3] == encode("The Fulton County")[:3]


@pytest.mark.parametrize(
    "source, message",
    [
        ("missing.txt", "no such file or folder"),
        ("corpus.csv", "unsupported file type"),
        ("single.txt", "holds only 5 tokens; train, validation, test need at least 257 each"),
        ("bad.jsonl", "bad.jsonl:2: not valid JSON"),
        ("nofield.jsonl", "string 'text' field"),
        ("latin.txt", r"latin.txt: byte 0xe9 at offset 3 is not valid utf-8; pass --encoding"),
    ],
)
def test_bad_sources_are_clear_errors(tmp_path, source, message):
    (tmp_path / "corpus.csv").write_text("a,b")
    (tmp_path / "single.txt").write_text("only one document here")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n')
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UserError, match=message):
        prepare_dataset(str(tmp_path / source), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out" / "train.safetensors").exists()


def test_existing_dataset_is_not_overwritten_without_asking(tmp_path):
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCUMENTS))
    prepare_dataset(str(tmp_path / "c.jsonl"), tmp_path / "out", show_progress=False, context_length=32)
    before = (tmp_path / "out" / "train.safetensors").read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        prepare_dataset(str(tmp_path / "c.jsonl"), tmp_path / "out", SplitFractions(0.3, 0.3), show_progress=False)
    assert (tmp_path / "out" / "train.safetensors").read_bytes() == before


def test_bad_fractions(tmp_path):
    with pytest.raises(UserError, match="leaves nothing to train on"):
        prepare_dataset("brown", tmp_path / "out", SplitFractions(0.5, 0.5), show_progress=False)
