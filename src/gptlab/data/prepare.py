"""Raw text -> a token dataset: every document tokenised and followed by `<|endoftext|>`, then split into
train / validation / test by one of three rules:

- `documents`: a seeded draw per document (the default for corpora of many documents);
- `tokens`: contiguous token ranges of the whole text, train first, as the book splits its one story
  (chosen by `auto` when there are too few documents for a per-document split);
- `rows:P`: the first P% of rows train, the rest validation, no test: `datasets`' `train[:P%]` and
  `train[P%:]`, which is how the users built their FineWeb set.

Rows are read in order and cut into chunks; worker processes tokenise chunks while the main process
assigns each document its split and streams its tokens to disk, so the output is byte-identical for any
number of workers and memory stays bounded. Progress is recorded after finished chunks in
`.prepare-state.json`; an interrupted prepare run again with the same options resumes from there.
"""

from __future__ import annotations

import collections
import errno
import math
import multiprocessing
import os
import random
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from tqdm import tqdm

from gptlab.data.sources import Source, SourceOptions, open_source
from gptlab.data.tokens import SPLIT_NAMES, TokenSplitWriter
from gptlab.errors import UserError
from gptlab.files import atomic_write_json, read_json
from gptlab.tokenizer import (
    ENCODER_JSON_SHA256,
    END_OF_TEXT,
    END_OF_TEXT_ID,
    TOKENIZER_NAME,
    VOCAB_BPE_SHA256,
    VOCAB_SIZE,
    gpt2_encoding,
)
from gptlab.version import __version__

STATE_FILE = ".prepare-state.json"
CHUNK_DOCUMENTS = 1024
CHUNK_BYTES = 4 << 20
# `auto` splits by documents when every split with a share expects at least this many documents.
AUTO_MIN_DOCUMENTS_PER_SPLIT = 20
_STREAM = "stream"  # the `tokens` rule writes one stream in source order and cuts it at the end


@dataclass(frozen=True)
class SplitFractions:
    validation: float = 0.05
    test: float = 0.05

    def check(self) -> None:
        for name, value in (("--validation-fraction", self.validation), ("--test-fraction", self.test)):
            if not 0 <= value < 1:
                raise UserError(f"{name}: {value} is not allowed: use a fraction in [0, 1)")
        if self.validation + self.test >= 1:
            raise UserError(
                f"--validation-fraction + --test-fraction = {self.validation + self.test:g} leaves nothing to train on; keep the sum below 1"
            )

    @property
    def train(self) -> float:
        return 1 - self.validation - self.test


@dataclass(frozen=True)
class SplitRule:
    """`by` is documents, tokens, rows or auto; `train_percent` only for rows."""

    by: str = "auto"
    train_percent: float = 0.0

    @classmethod
    def parse(cls, split_by: str = "auto", split_rule: Optional[str] = None) -> "SplitRule":
        if split_by not in ("auto", "documents", "tokens"):
            raise UserError(f"--split-by {split_by}: use auto, documents or tokens")
        if split_rule is None:
            return cls(split_by)
        kind, _, value = split_rule.partition(":")
        try:
            percent = float(value)
        except ValueError:
            percent = -1.0
        if kind != "rows" or not 0 < percent < 100:
            raise UserError(
                f"--split-rule {split_rule}: expected rows:P with 0 < P < 100, for example rows:99 "
                "(first 99% of rows train, the rest validation)"
            )
        if split_by != "auto":
            raise UserError(f"--split-rule {split_rule} and --split-by {split_by}: give one of them")
        return cls("rows", percent)

    def describe(self, seed: int) -> dict:
        if self.by == "rows":
            return {
                "by": "rows",
                "train_rows_percent": self.train_percent,
                "rule": f"first round({self.train_percent:g}% of rows) train, the rest validation, no test",
            }
        if self.by == "tokens":
            return {
                "by": "tokens",
                "rule": "contiguous token ranges in source order: train, then validation, then test",
            }
        return {"by": "documents", "seed": seed, "rule": "one seeded draw per document"}


def rows_boundary(train_percent: float, rows: int) -> int:
    """First validation row under rows:P, computed exactly as `datasets` does for `train[:P%]`."""
    return int(round(train_percent * rows / 100.0))


# --- tokenising (runs in the worker processes) ------------------------------------------------------


def tokenise_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every text's tokens followed by `<|endoftext|>`, concatenated, and each document's token count."""
    encoding = gpt2_encoding()
    pieces = []
    for text in texts:
        pieces.append(encoding.encode_to_numpy(text, disallowed_special=()))  # special tokens in text stay text
        pieces.append(np.array([END_OF_TEXT_ID], dtype=np.uint32))
    lengths = np.fromiter((len(piece) + 1 for piece in pieces[::2]), dtype=np.int64, count=len(texts))
    tokens = np.concatenate(pieces).astype(np.uint16) if pieces else np.zeros(0, dtype=np.uint16)
    return tokens, lengths


@contextmanager
def _main_script_hidden() -> Iterator[None]:
    """While worker processes start, hide the path of a script run as `python script.py` from multiprocessing.
    A spawned worker otherwise re-runs the script's top level (which calls gptlab.prepare again and fails
    without an `if __name__ == "__main__":` guard); the workers need nothing from it, as tokenise_chunk lives
    here. A script run as a module (`python -m`) or a notebook has no such path and is left alone."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class _ScriptSafePool(ProcessPoolExecutor):
    """Spawned workers that never re-import the user's script; they start inside `submit`."""

    def submit(self, function, /, *args, **kwargs) -> Future:
        with _main_script_hidden():
            return super().submit(function, *args, **kwargs)


PARENT_POLL_SECONDS = 0.5


def _exit_with_parent(parent: int) -> None:
    """A worker's initializer: end the worker when the prepare that started it is gone. A SIGKILLed parent
    runs no cleanup, and the pool's workers would then wait for work forever (holding the resource
    tracker, which ends once no process holds its pipe). Polling getppid works on every platform; a worker
    is re-parented (to init or a subreaper) the moment its parent dies."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="gptlab-watch-parent", daemon=True).start()


class _InProcess:
    """The executor for one worker: no process pool, the same function."""

    def submit(self, function, *args) -> Future:
        future: Future = Future()
        future.set_result(function(*args))
        return future

    def shutdown(self, cancel_futures: bool = False) -> None:
        pass


# --- reading chunks ---------------------------------------------------------------------------------


@dataclass
class _Chunk:
    first_row: int
    end_row: int
    texts: list[str]
    rows: np.ndarray  # the row index of each text
    text_bytes: int


def _chunks(rows: Iterator[Optional[str]], first_row: int) -> Iterator[_Chunk]:
    texts: list[str] = []
    indices: list[int] = []
    size = 0
    start = next_row = first_row
    for row, text in enumerate(rows, start=first_row):
        next_row = row + 1
        if text:
            texts.append(text)
            indices.append(row)
            size += len(text)
        if len(texts) >= CHUNK_DOCUMENTS or size >= CHUNK_BYTES:
            yield _Chunk(start, next_row, texts, np.asarray(indices, dtype=np.int64), size)
            texts, indices, size, start = [], [], 0, next_row
    if next_row > start:
        yield _Chunk(start, next_row, texts, np.asarray(indices, dtype=np.int64), size)


# --- progress record --------------------------------------------------------------------------------


@dataclass
class _Progress:
    rule: str  # resolved: documents, tokens or rows
    rows_done: int = 0  # rows of the source fully handled
    documents_done: int = 0  # documents drawn (the documents rule replays this many draws on resume)
    train_full: bool = False  # --max-tokens reached
    finished: bool = False  # every row read; the splits only need closing
    text_bytes: int = 0

    def to_json(self, writers: dict[str, TokenSplitWriter], documents: dict[str, int]) -> dict:
        return {
            **asdict(self),
            "tokens": {name: writer.count for name, writer in writers.items()},
            "documents": documents,
        }


def _settings(source: Source, fractions: SplitFractions, seed: int, rule: SplitRule, max_tokens: Optional[int]) -> dict:
    """Everything that decides the output: a resume is only allowed when these match."""
    return {
        "source_fingerprint": source.fingerprint,
        "fractions": asdict(fractions),
        "seed": seed,
        "rule": asdict(rule),
        "max_tokens": max_tokens,
        "gptlab_version": __version__,
    }


def _staged_names(rule: str) -> tuple[str, ...]:
    return (_STREAM,) if rule == "tokens" else SPLIT_NAMES


def _remove_staging(out_dir: Path) -> None:
    (out_dir / STATE_FILE).unlink(missing_ok=True)
    for name in (*SPLIT_NAMES, _STREAM):
        TokenSplitWriter.partial_path_of(out_dir / f"{name}.safetensors").unlink(missing_ok=True)


# --- the command ------------------------------------------------------------------------------------


def _resolve_auto(rows: Iterator[Optional[str]], fractions: SplitFractions) -> tuple[str, list[Optional[str]]]:
    """Read just enough rows to know whether there are enough documents for a per-document split."""
    shares = [share for share in (fractions.validation, fractions.test) if share > 0]
    needed = math.ceil(AUTO_MIN_DOCUMENTS_PER_SPLIT / min(shares)) if shares else 1
    head: list[Optional[str]] = []
    documents = 0
    for text in rows:
        head.append(text)
        documents += bool(text)
        if documents >= needed:
            return "documents", head
    return "tokens", head


def _head_to_first_document(rows: Iterator[Optional[str]]) -> list[Optional[str]]:
    head: list[Optional[str]] = []
    for text in rows:
        head.append(text)
        if text:
            break
    return head


def _small_split_problem(
    name: str, count: int, total: int, fractions: SplitFractions, rule: str, context_length: int
) -> Optional[str]:
    needed = context_length + 1
    if count >= needed:
        return None
    if name == "train":
        change = (
            "lower --validation-fraction / --test-fraction" if rule != "rows" else "raise the P of --split-rule rows:P"
        )
    elif rule == "rows":
        change = "lower the P of --split-rule rows:P"
    else:
        suggestion = math.ceil(100 * needed / total) / 100 if total else 1
        change = f"raise --{name}-fraction (to at least {suggestion:g})" if suggestion < 1 else "give more text"
    return (
        f"the {name} split holds {count:,} tokens, under one context window of {context_length} tokens plus its target "
        f"(--context-length); {change}, or lower --context-length"
    )


def _refuse_own_source(source: str, out_dir: Path) -> None:
    """OUT inside a local SRC would have the next prepare of SRC read the dataset's own files as documents.
    (SRC inside OUT is fine: a prepare writes only its own named files into OUT, never into a subfolder.)"""
    if not Path(source).exists():
        return  # a Hub id, `brown`, an hf: source
    src, out = Path(source).resolve(), out_dir.resolve()
    if out == src or src in out.parents:
        raise UserError(
            f"{out_dir}: OUT_DIR is inside the source {source}, whose next prepare would read the dataset's files as "
            "text; choose a folder outside it"
        )


def prepare_dataset(
    source: str,
    out_dir: Path,
    fractions: SplitFractions = SplitFractions(),
    seed: int = 1234,
    text_field: str = "text",
    overwrite: bool = False,
    show_progress: bool = True,
    *,
    split_by: str = "auto",
    split_rule: Optional[str] = None,
    workers: Optional[int] = 1,
    max_tokens: Optional[int] = None,
    context_length: int = 256,
    source_options: Optional[SourceOptions] = None,
    save_interval_seconds: float = 2.0,
) -> dict:
    """Tokenise `source` into `out_dir`; returns the dataset's meta.json content.

    `workers` None means every core. A `.prepare-state.json` left by an interrupted run with the same
    settings is resumed; with other settings it is an error unless `overwrite`.
    """
    fractions.check()
    rule = SplitRule.parse(split_by, split_rule)
    if rule.by == "rows" and (fractions.validation, fractions.test) != (
        SplitFractions().validation,
        SplitFractions().test,
    ):
        raise UserError("--split-rule rows:P decides the splits itself; drop --validation-fraction / --test-fraction")
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"--max-tokens {max_tokens}: give a positive number of training tokens")
    if context_length < 1:
        raise UserError(f"--context-length {context_length}: give a positive number of tokens")
    workers = workers or len(os.sched_getaffinity(0))
    options = source_options or SourceOptions(text_field=text_field)
    out_dir = Path(out_dir)
    _refuse_own_source(source, out_dir)
    if (out_dir / "train.safetensors").exists() and not overwrite and not (out_dir / STATE_FILE).exists():
        raise UserError(f"{out_dir}: already holds a token dataset; pass --overwrite to replace it")
    opened = open_source(source, options)
    settings = _settings(opened, fractions, seed, rule, max_tokens)
    state_path = out_dir / STATE_FILE
    saved = None
    if state_path.is_file() and not overwrite:
        try:
            saved = read_json(state_path)
        except (OSError, ValueError):
            saved = None
        if not isinstance(saved, dict) or saved.get("settings") != settings:
            raise UserError(
                f"{out_dir}: holds an interrupted prepare of another source or with other options ({STATE_FILE}); "
                "run it again with the same options to resume, or pass --overwrite to start over"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    if saved is None:
        _remove_staging(out_dir)
    started = time.perf_counter()

    # Which rule, and where to start reading.
    documents_count = {name: 0 for name in SPLIT_NAMES}
    head: list[Optional[str]] = []
    if saved is not None:
        progress = _Progress(**{key: saved["progress"][key] for key in _Progress.__dataclass_fields__})
        documents_count.update(saved["progress"]["documents"])
        writers = {
            name: TokenSplitWriter(out_dir / f"{name}.safetensors", resume_from=saved["progress"]["tokens"][name])
            for name in _staged_names(progress.rule)
        }
        if show_progress:
            print(
                f"Resuming the interrupted prepare in {out_dir} after row {progress.rows_done:,} "
                f"({sum(w.count for w in writers.values()):,} tokens already written)"
            )
    else:
        rows = opened.rows(0)
        if rule.by == "auto":
            resolved, head = _resolve_auto(rows, fractions)
        else:
            resolved, head = rule.by, _head_to_first_document(rows)
        if not any(head):
            raise UserError(f"{source}: holds no text (0 documents)")
        progress = _Progress(resolved)
        writers = {name: TokenSplitWriter(out_dir / f"{name}.safetensors") for name in _staged_names(resolved)}
    if progress.rule == "rows" and opened.row_count is None:
        _close_writers(writers, keep=False)
        raise UserError(
            f"{source}: --split-rule rows:P needs the number of rows, which this source does not record; "
            "use a parquet source or --split-by documents"
        )
    validation_row = rows_boundary(rule.train_percent, opened.row_count) if progress.rule == "rows" else None
    if saved is not None:
        if progress.train_full and validation_row is not None and progress.rows_done < validation_row:
            progress.rows_done = validation_row  # training tokens were complete: go straight to validation rows
        rows = opened.rows(progress.rows_done)

    def save_state() -> None:
        for writer in writers.values():
            writer.sync()
        atomic_write_json(state_path, {"settings": settings, "progress": progress.to_json(writers, documents_count)})

    draw = random.Random(seed)
    for _ in range(progress.documents_done if progress.rule == "documents" else 0):
        draw.random()

    bar = tqdm(
        desc="tokenising",
        unit=" rows",
        total=opened.row_count,
        initial=progress.rows_done,
        disable=not show_progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    executor = (
        _ScriptSafePool(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )
        if workers > 1
        else _InProcess()
    )
    try:
        if not progress.finished:
            pending: collections.deque[tuple[_Chunk, Future]] = collections.deque()
            last_save = time.perf_counter()
            chunks = _chunks(_chain(head, rows), progress.rows_done)
            while True:
                while len(pending) < 2 * workers:
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    pending.append((chunk, executor.submit(tokenise_chunk, chunk.texts)))
                if not pending:
                    break
                chunk, future = pending.popleft()
                tokens, lengths = future.result()
                stop = _assign(
                    chunk,
                    tokens,
                    lengths,
                    progress,
                    writers,
                    documents_count,
                    draw,
                    validation_row,
                    max_tokens,
                    fractions,
                )
                bar.update(progress.rows_done - bar.n)
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(
                    f"{progress.documents_done:,} docs, {sum(w.count for w in writers.values()):,} tokens, "
                    f"{progress.text_bytes / elapsed / 1e6:.1f} MB/s",
                    refresh=False,
                )
                if stop == "all":
                    break
                if stop == "train" and validation_row is not None and progress.rows_done < validation_row:
                    # Training tokens are complete: skip the remaining training rows unread.
                    for _, queued in pending:
                        queued.cancel()
                    pending.clear()
                    progress.rows_done = validation_row
                    chunks = _chunks(opened.rows(validation_row), validation_row)
                if time.perf_counter() - last_save >= save_interval_seconds:
                    save_state()
                    last_save = time.perf_counter()
            for _, queued in pending:
                queued.cancel()
            progress.finished = True
            save_state()
        meta = _finish(
            out_dir,
            source,
            opened,
            progress,
            writers,
            documents_count,
            fractions,
            seed,
            rule,
            context_length,
            started,
            max_tokens,
        )
    except KeyboardInterrupt:
        _close_writers(writers, keep=True)  # progress so far stays in .prepare-state.json for a resume
        if state_path.exists():
            print(
                f"\nprepare interrupted; run the same command again to resume from row {progress.rows_done:,}",
                file=sys.stderr,
            )
        raise
    except BaseException as error:
        _close_writers(writers, keep=False)
        _remove_staging(out_dir)  # the space of a failed run comes back
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise UserError(
                f"{out_dir}: no space left on the device while writing tokens "
                f"({sum(w.count for w in writers.values()) * 2:,} bytes of tokens were written and are removed again); "
                "free space and run the command again"
            ) from None
        raise
    finally:
        executor.shutdown(cancel_futures=True)
        bar.close()
    return meta


def _chain(head: list[Optional[str]], rest: Iterator[Optional[str]]) -> Iterator[Optional[str]]:
    yield from head
    yield from rest


def _close_writers(writers: dict[str, TokenSplitWriter], keep: bool) -> None:
    for writer in writers.values():
        try:
            writer.detach() if keep else writer.abort()
        except OSError:
            pass


def _assign(
    chunk: _Chunk,
    tokens: np.ndarray,
    lengths: np.ndarray,
    progress: _Progress,
    writers: dict[str, TokenSplitWriter],
    documents_count: dict[str, int],
    draw: random.Random,
    validation_row: Optional[int],
    max_tokens: Optional[int],
    fractions: SplitFractions,
) -> Optional[str]:
    """Give each document of a tokenised chunk its split and write it; returns "all" or "train" when
    --max-tokens ends reading or training rows."""
    count = len(lengths)
    if progress.rule == "documents":
        rolls = np.fromiter((draw.random() for _ in range(count)), dtype=np.float64, count=count)
        labels = np.where(
            rolls < fractions.validation, 1, np.where(rolls < fractions.validation + fractions.test, 2, 0)
        )
    elif progress.rule == "rows":
        labels = np.where(chunk.rows < validation_row, 0, 1)
    else:
        labels = np.zeros(count, dtype=np.int64)
    ends = np.cumsum(lengths)
    stop = None
    kept = count
    if max_tokens is not None:
        train_ends = writers[SPLIT_NAMES[0] if progress.rule != "tokens" else _STREAM].count + np.cumsum(
            np.where(labels == 0, lengths, 0)
        )
        target = max_tokens if progress.rule != "tokens" else math.ceil(max_tokens / fractions.train)
        full = np.flatnonzero((labels == 0) & (train_ends >= target))
        if progress.train_full:
            kept_mask = labels != 0
            labels = np.where(kept_mask, labels, -1)
        elif full.size:
            last = int(full[0])
            progress.train_full = True
            if progress.rule == "rows":
                labels = np.where((labels == 0) & (np.arange(count) > last), -1, labels)
                stop = "train"
            else:
                kept = last + 1
                stop = "all"
    token_labels = np.repeat(labels[:kept], lengths[:kept])
    kept_tokens = tokens[: int(ends[kept - 1])] if kept else tokens[:0]
    names = (_STREAM,) if progress.rule == "tokens" else SPLIT_NAMES
    for index, name in enumerate(names):
        selected = kept_tokens[token_labels == index]
        if selected.size:
            writers[name].write(selected)
        documents_count[SPLIT_NAMES[index]] += int(np.count_nonzero(labels[:kept] == index))
    progress.documents_done += kept
    progress.text_bytes += chunk.text_bytes
    progress.rows_done = chunk.end_row if kept == count else int(chunk.rows[kept - 1]) + 1
    return stop


def _finish(
    out_dir: Path,
    source_spec: str,
    source: Source,
    progress: _Progress,
    writers: dict[str, TokenSplitWriter],
    documents_count: dict[str, int],
    fractions: SplitFractions,
    seed: int,
    rule: SplitRule,
    context_length: int,
    started: float,
    max_tokens: Optional[int],
) -> dict:
    """Check the splits, close them into their safetensors files, write meta.json, drop the state."""
    if progress.rule == "tokens":
        stream = writers[_STREAM]
        total = stream.count
        sizes = {"validation": round(total * fractions.validation), "test": round(total * fractions.test)}
        sizes = {"train": total - sizes["validation"] - sizes["test"], **sizes}
    else:
        total = sum(writer.count for writer in writers.values())
        sizes = {name: writers[name].count for name in SPLIT_NAMES}
    wanted = {
        "train": True,
        "validation": progress.rule == "rows" or fractions.validation > 0,
        "test": progress.rule != "rows" and fractions.test > 0,
    }
    parts = [name for name in SPLIT_NAMES if wanted[name]]
    if total < len(parts) * (context_length + 1):
        raise UserError(
            f"{source_spec}: holds only {total:,} tokens; {', '.join(parts)} need at least {context_length + 1} each "
            f"(one context window of --context-length {context_length} plus its target): give more text or lower --context-length"
        )
    problems = [
        problem
        for name in SPLIT_NAMES
        if wanted[name]
        for problem in [_small_split_problem(name, sizes[name], total, fractions, progress.rule, context_length)]
        if problem
    ]
    if problems:
        if progress.rule == "documents":
            problems.append(
                f"({progress.documents_done} documents split by a draw per document; --split-by tokens cuts one text into contiguous ranges)"
            )
        raise UserError(*(f"{source_spec}: {problem}" for problem in problems))
    if progress.rule == "tokens":
        documents_count = _cut_stream(out_dir, writers.pop(_STREAM), sizes)
    else:
        for writer in writers.values():
            writer.close()
    produced = [name for name in SPLIT_NAMES if wanted[name] or sizes[name]]
    for name in SPLIT_NAMES:
        if name not in produced:  # an older dataset's split must not survive an --overwrite
            (out_dir / f"{name}.safetensors").unlink(missing_ok=True)
    if progress.rule == "rows":
        split_fractions = {"train": rule.train_percent / 100, "validation": 1 - rule.train_percent / 100, "test": 0.0}
    else:
        split_fractions = {"train": fractions.train, "validation": fractions.validation, "test": fractions.test}
    meta = {
        "format": "gptlab-tokens-v1",
        "source": {
            **source.description,
            **({"skipped_files": len(source.skipped_files)} if source.skipped_files else {}),
        },
        "tokenizer": {
            "name": TOKENIZER_NAME,
            "vocab_size": VOCAB_SIZE,
            "end_of_text_id": END_OF_TEXT_ID,
            "vocab_bpe_sha256": VOCAB_BPE_SHA256,
            "encoder_json_sha256": ENCODER_JSON_SHA256,
        },
        "dtype": "uint16",
        "document_separator": END_OF_TEXT,
        "split_seed": seed,
        "split_rule": {
            **SplitRule(progress.rule, rule.train_percent).describe(seed),
            **({"chosen_by": "auto"} if rule.by == "auto" else {}),
        },
        "fractions": split_fractions,
        "rows": {"read": progress.rows_done, "total": source.row_count},
        "documents": {name: documents_count[name] for name in produced},
        "tokens": {name: sizes[name] for name in produced},
        "max_tokens": max_tokens,
        "seconds": round(time.perf_counter() - started, 3),
        "gptlab_version": __version__,
    }
    atomic_write_json(out_dir / "meta.json", meta)
    (out_dir / STATE_FILE).unlink(missing_ok=True)
    return meta


def _cut_stream(out_dir: Path, stream: TokenSplitWriter, sizes: dict[str, int]) -> dict[str, int]:
    """Copy contiguous ranges of the token stream into the split files, a block at a time."""
    stream.sync()
    stream.detach()
    data = np.memmap(
        stream.partial_path, dtype=np.uint16, mode="r", offset=TokenSplitWriter.DATA_OFFSET, shape=(stream.count,)
    )
    documents = {}
    start = 0
    block = 8 << 20
    for name in SPLIT_NAMES:
        if not sizes[name] and name != "train":
            continue
        writer = TokenSplitWriter(out_dir / f"{name}.safetensors")
        ends = 0
        for offset in range(start, start + sizes[name], block):
            piece = np.asarray(data[offset : min(offset + block, start + sizes[name])])
            ends += int(np.count_nonzero(piece == END_OF_TEXT_ID))
            writer.write(piece)
        writer.close()
        documents[name] = ends
        start += sizes[name]
    del data
    stream.partial_path.unlink()
    return {**{name: 0 for name in SPLIT_NAMES}, **documents}
