"""Raw text -> a token dataset: documents are tokenised, each followed by `<|endoftext|>`, and assigned to
train / validation / test by a seeded draw per document.

Sources: a `.txt` file (documents separated by `<|endoftext|>`; no separator = one document), a folder of
`.txt` files (one document per file, or more where they hold separators), `.jsonl` (one JSON object per
line, text under `text_field`), `.parquet` (a `text_field` column), or the embedded corpus `brown`.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import random
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

import gptlab
from gptlab.data.tokens import SPLIT_NAMES, TokenSplitWriter
from gptlab.errors import UserError
from gptlab.files import atomic_write_json
from gptlab.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, ENCODER_JSON_SHA256, TOKENIZER_NAME, VOCAB_BPE_SHA256, encode_documents

EMBEDDED_CORPORA = {"brown": "brown.jsonl.xz"}
_TOKENISE_BATCH_DOCUMENTS = 256


@dataclass(frozen=True)
class SplitFractions:
    validation: float = 0.05
    test: float = 0.05

    def check(self) -> None:
        for name, value in (("--validation-fraction", self.validation), ("--test-fraction", self.test)):
            if not 0 <= value < 1:
                raise UserError(f"{name}: {value} is not allowed: use a fraction in [0, 1)")
        if self.validation + self.test >= 1:
            raise UserError(f"--validation-fraction + --test-fraction = {self.validation + self.test:g} leaves nothing to train on; keep the sum below 1")

    @property
    def train(self) -> float:
        return 1 - self.validation - self.test


def _split_on_separator(text: str) -> Iterator[str]:
    for piece in text.split(END_OF_TEXT):
        if piece.strip():
            yield piece.strip("\n")


def _embedded_documents(name: str) -> Iterator[str]:
    with resources.files("gptlab.corpora").joinpath(EMBEDDED_CORPORA[name]).open("rb") as raw, lzma.open(raw, "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)["text"]


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise UserError(f"{path}:{line_number}: expected an object with a string '{text_field}' field (set another with --text-field)")
            yield record[text_field]


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: cannot read parquet ({error})") from None
    if text_field not in parquet.schema_arrow.names:
        raise UserError(f"{path}: no '{text_field}' column (columns: {', '.join(parquet.schema_arrow.names)}); set one with --text-field")
    for batch in parquet.iter_batches(columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if text:
                yield text


def iter_documents(source: str, text_field: str = "text") -> Iterator[str]:
    """Every document of `source`, in a stable order."""
    if source in EMBEDDED_CORPORA:
        yield from _embedded_documents(source)
        return
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"{path}: folder holds no .txt files")
        for file in files:
            yield from _split_on_separator(file.read_text(encoding="utf-8", errors="replace"))
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".txt":
            yield from _split_on_separator(path.read_text(encoding="utf-8", errors="replace"))
        elif suffix == ".jsonl":
            yield from _jsonl_documents(path, text_field)
        elif suffix == ".parquet":
            yield from _parquet_documents(path, text_field)
        else:
            raise UserError(f"{path}: unsupported file type '{suffix}'; give a .txt, .jsonl or .parquet file, a folder of .txt files, or 'brown'")
    else:
        raise UserError(f"{source}: no such file or folder (embedded corpora: {', '.join(EMBEDDED_CORPORA)})")


def _source_description(source: str) -> dict:
    if source in EMBEDDED_CORPORA:
        data = resources.files("gptlab.corpora").joinpath(EMBEDDED_CORPORA[source]).read_bytes()
        return {"kind": "embedded", "name": source, "sha256": hashlib.sha256(data).hexdigest(), "provenance": "gptlab/corpora/PROVENANCE.md"}
    return {"kind": "path", "path": str(Path(source).resolve())}


def _batched(documents: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare_dataset(
    source: str,
    out_dir: Path,
    fractions: SplitFractions = SplitFractions(),
    seed: int = 1234,
    text_field: str = "text",
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict:
    """Tokenise `source` into `out_dir`; returns the dataset's meta.json content."""
    fractions.check()
    out_dir = Path(out_dir)
    if (out_dir / "train.safetensors").exists() and not overwrite:
        raise UserError(f"{out_dir}: already holds a token dataset; pass --overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    documents = iter_documents(source, text_field)
    writers = {name: TokenSplitWriter(out_dir / f"{name}.safetensors") for name in SPLIT_NAMES}
    document_counts = {name: 0 for name in SPLIT_NAMES}
    draw = random.Random(seed)
    started = time.perf_counter()
    progress = tqdm(desc="tokenising", unit=" docs", disable=not show_progress, dynamic_ncols=True)
    try:
        for batch in _batched(documents, _TOKENISE_BATCH_DOCUMENTS):
            for tokens in encode_documents(batch):
                roll = draw.random()
                split = "validation" if roll < fractions.validation else "test" if roll < fractions.validation + fractions.test else "train"
                writers[split].write(np.append(np.asarray(tokens, dtype=np.uint16), END_OF_TEXT_ID))
                document_counts[split] += 1
            progress.update(len(batch))
            progress.set_postfix(tokens=sum(w.count for w in writers.values()))
        empty = [name for name in SPLIT_NAMES if document_counts[name] == 0 and (name == "train" or getattr(fractions, name) > 0)]
        if empty:
            total = sum(document_counts.values())
            raise UserError(
                f"{source}: {total} document(s) left the {', '.join(empty)} split empty; give more documents "
                f"(separate them with {END_OF_TEXT} or use a folder of files) or change the split fractions"
            )
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        progress.close()
    meta = {
        "format": "gptlab-tokens-v1",
        "source": _source_description(source),
        "tokenizer": {"name": TOKENIZER_NAME, "vocab_size": 50257, "end_of_text_id": END_OF_TEXT_ID, "vocab_bpe_sha256": VOCAB_BPE_SHA256, "encoder_json_sha256": ENCODER_JSON_SHA256},
        "dtype": "uint16",
        "document_separator": END_OF_TEXT,
        "split_seed": seed,
        "fractions": {"train": fractions.train, "validation": fractions.validation, "test": fractions.test},
        "documents": document_counts,
        "tokens": {name: writers[name].count for name in SPLIT_NAMES},
        "seconds": round(time.perf_counter() - started, 3),
        "gptlab_version": gptlab.__version__,
    }
    atomic_write_json(out_dir / "meta.json", meta)
    return meta
