"""Where `prepare` reads documents from, one row at a time, in a stable order.

A source yields rows: the text of one document, or None for a row without text (an empty parquet cell),
which `--split-rule rows:P` still counts as a row, as `datasets`' `train[:P%]` does. Kinds:

- `brown`: the embedded Brown Corpus;
- a `.txt` file: documents separated by `<|endoftext|>` (no separator = one document);
- a `.jsonl` file: one JSON object per line, the text under `text_field`;
- a `.parquet` file, or a folder of parquet shards as a Hugging Face download leaves it;
- any other folder: every file that decodes as text (one document per file, or more where it holds
  separators), binary files skipped and counted; `.jsonl` and `.parquet` files inside are read as such;
- `hf:OWNER/NAME` (or `hf:LOCAL_FOLDER`): a Hugging Face dataset streamed by the `datasets` library.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Optional

from gptlab.errors import UserError
from gptlab.hub import bound_hub_waits
from gptlab.tokenizer import END_OF_TEXT

EMBEDDED_CORPORA = {"brown": "brown.jsonl.xz"}
HF_PREFIX = "hf:"
_STRUCTURED_SUFFIXES = (".parquet", ".jsonl")


@dataclass
class SourceOptions:
    """How to read a source (everything here changes which documents come out)."""

    text_field: str = "text"
    encoding: str = "utf-8"
    glob: Optional[str] = None
    hf_name: Optional[str] = None
    hf_split: str = "train"
    hf_revision: Optional[str] = None


@dataclass
class Source:
    """An opened source: `rows(start)` yields every row from row `start` on."""

    spec: str
    description: dict
    fingerprint: str
    rows: Callable[[int], Iterator[Optional[str]]]
    row_count: Optional[int] = None
    skipped_files: list[str] = field(default_factory=list)


def _split_on_separator(text: str) -> Iterator[str]:
    for piece in text.split(END_OF_TEXT):
        if piece.strip():
            yield piece.strip("\n")


def _skip(rows: Iterator[Optional[str]], start: int) -> Iterator[Optional[str]]:
    for index, row in enumerate(rows):
        if index >= start:
            yield row


def _decode(data: bytes, path: Path, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path}: byte 0x{data[error.start]:02x} at offset {error.start} is not valid {encoding}; "
            f"pass --encoding (for example --encoding latin-1) if the file uses another encoding"
        ) from None


def _check_encoding(encoding: str) -> None:
    import codecs

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UserError(
            f"--encoding {encoding}: unknown encoding; use a Python codec name such as utf-8 or latin-1"
        ) from None


# --- files ------------------------------------------------------------------------------------------


def _jsonl_rows(path: Path, text_field: str, encoding: str) -> Iterator[Optional[str]]:
    with open(path, "rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as error:
                raise UserError(
                    f"{path}:{line_number}: byte 0x{raw[error.start]:02x} at column {error.start + 1} is not valid {encoding}; "
                    f"pass --encoding (for example --encoding latin-1) if the file uses another encoding"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if (
                not isinstance(record, dict)
                or text_field not in record
                or not isinstance(record[text_field], (str, type(None)))
            ):
                raise UserError(
                    f"{path}:{line_number}: expected an object with a string '{text_field}' field (set another with --text-field)"
                )
            yield record.get(text_field)


def _parquet_file(path: Path, text_field: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: cannot read parquet ({error})") from None
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise UserError(
            f"{path}: no '{text_field}' column (columns: {', '.join(schema.names)}); set one with --text-field"
        )
    column_type = schema.field(text_field).type
    value_type = column_type.value_type if pa.types.is_dictionary(column_type) else column_type
    if not (
        pa.types.is_string(value_type) or pa.types.is_large_string(value_type) or pa.types.is_string_view(value_type)
    ):
        raise UserError(
            f"{path}: column '{text_field}' has type {column_type}, not text; name a string column with --text-field"
        )
    return parquet


def _parquet_rows(paths: list[Path], text_field: str, start: int) -> Iterator[Optional[str]]:
    """Rows of several parquet files in order; whole row groups before `start` are skipped unread."""
    row = 0
    for path in paths:
        parquet = _parquet_file(path, text_field)
        for group in range(parquet.metadata.num_row_groups):
            group_rows = parquet.metadata.row_group(group).num_rows
            if row + group_rows <= start:
                row += group_rows
                continue
            skip = max(0, start - row)
            # Batches, not whole row groups: a FineWeb row group holds hundreds of MB of text.
            for batch in parquet.iter_batches(batch_size=1024, row_groups=[group], columns=[text_field]):
                texts = batch.column(0).to_pylist()
                yield from texts[skip:]
                skip = max(0, skip - len(texts))
            row += group_rows


def _text_file_documents(path: Path, encoding: str) -> Iterator[str]:
    yield from _split_on_separator(_decode(path.read_bytes(), path, encoding))


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _folder_files(folder: Path, glob: Optional[str]) -> list[Path]:
    files = sorted(p for p in folder.glob(glob or "**/*") if p.is_file() and not _is_hidden(p, folder))
    if not glob:
        # A Hugging Face download holds a README.md and .gitattributes beside its shards: take the shards.
        for suffix in _STRUCTURED_SUFFIXES:
            shards = [p for p in files if p.suffix.lower() == suffix]
            if shards:
                return shards
    return files


def _folder_rows(
    folder: Path, files: list[Path], options: SourceOptions, skipped: list[str]
) -> Iterator[Optional[str]]:
    skipped.clear()
    any_document = False
    for file in files:
        suffix = file.suffix.lower()
        if suffix == ".parquet":
            yield from _parquet_rows([file], options.text_field, 0)
            any_document = True
            continue
        if suffix == ".jsonl":
            yield from _jsonl_rows(file, options.text_field, options.encoding)
            any_document = True
            continue
        data = file.read_bytes()
        try:
            text = data.decode(options.encoding)
        except UnicodeDecodeError:
            text = None
        if text is None or "\x00" in text:
            skipped.append(str(file.relative_to(folder)))
            continue
        any_document = True
        yield from _split_on_separator(text)
    if not any_document:
        raise UserError(
            f"{folder}: no file decodes as {options.encoding} text ({len(skipped)} binary file(s) skipped)"
            + (f" among those matching --glob {options.glob}" if options.glob else "")
        )


def _files_fingerprint(files: list[Path], extra: dict) -> str:
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _parquet_row_count(paths: list[Path], text_field: str) -> int:
    return sum(_parquet_file(path, text_field).metadata.num_rows for path in paths)


# --- Hugging Face -----------------------------------------------------------------------------------


def _open_hf(spec: str, options: SourceOptions) -> Source:
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{spec}: reading Hugging Face datasets needs the `datasets` library: pip install 'gptlab[hf]'"
        ) from None
    repository = spec[len(HF_PREFIX) :]
    local = Path(repository).is_dir()
    bound_hub_waits()  # the stream reads through huggingface_hub's client: no wait without a limit
    try:
        stream = datasets.load_dataset(
            repository, name=options.hf_name, split=options.hf_split, revision=options.hf_revision, streaming=True
        )
    except Exception as error:  # datasets raises many types (not found, bad config, bad split, network)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        chosen = ", ".join(
            f"--{flag} {value}"
            for flag, value in (
                ("name", options.hf_name),
                ("split", options.hf_split),
                ("revision", options.hf_revision),
            )
            if value
        )
        raise UserError(f"{spec}: cannot open with `datasets` ({chosen}): {first_line}") from None
    features = stream.features
    if features is not None:
        if options.text_field not in features:
            raise UserError(
                f"{spec}: no '{options.text_field}' column (columns: {', '.join(features)}); set one with --text-field"
            )
        feature = features[options.text_field]
        dtype = getattr(feature, "dtype", None)
        if dtype not in ("string", "large_string"):
            raise UserError(
                f"{spec}: column '{options.text_field}' has type {dtype or type(feature).__name__}, not text; name a string column with --text-field"
            )
    split_info = (stream.info.splits or {}).get(options.hf_split) if stream.info is not None else None
    row_count = int(split_info.num_examples) if split_info is not None and split_info.num_examples else None

    def rows(start: int) -> Iterator[Optional[str]]:
        selected = stream.skip(start) if start else stream
        for batch in selected.select_columns([options.text_field]).iter(batch_size=1000):
            yield from batch[options.text_field]

    description = {
        "kind": "huggingface",
        "repository": str(Path(repository).resolve()) if local else repository,
        "name": options.hf_name,
        "split": options.hf_split,
        "revision": options.hf_revision,
        "resolved_revision": None if local else _hub_commit(repository, options.hf_revision),
    }
    fingerprint_parts = {"hf": description, "text_field": options.text_field}
    if local:
        files = sorted(p for p in Path(repository).rglob("*") if p.is_file() and not _is_hidden(p, Path(repository)))
        fingerprint = _files_fingerprint(files, fingerprint_parts)
    else:
        fingerprint = hashlib.sha256(json.dumps(fingerprint_parts, sort_keys=True).encode()).hexdigest()
    return Source(spec, description, fingerprint, rows, row_count)


def _hub_commit(repository: str, revision: Optional[str]) -> Optional[str]:
    """The commit a Hub revision resolves to, so meta.json pins the data; None when it cannot be asked."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repository, revision=revision, timeout=10).sha
    except Exception:  # offline or private: the requested revision is still recorded
        return None


# --- opening ----------------------------------------------------------------------------------------


def open_source(spec: str, options: SourceOptions = SourceOptions()) -> Source:
    """Open `spec` (see the module docstring); a missing or unreadable source is a UserError here."""
    _check_encoding(options.encoding)
    if spec.startswith(HF_PREFIX):
        return _open_hf(spec, options)
    if spec in EMBEDDED_CORPORA:
        data = resources.files("gptlab.corpora").joinpath(EMBEDDED_CORPORA[spec]).read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()

        def embedded(start: int) -> Iterator[Optional[str]]:
            with lzma.open(
                resources.files("gptlab.corpora").joinpath(EMBEDDED_CORPORA[spec]).open("rb"), "rt", encoding="utf-8"
            ) as lines:
                yield from _skip((json.loads(line)["text"] for line in lines), start)

        description = {"kind": "embedded", "name": spec, "sha256": sha256, "provenance": "gptlab/corpora/PROVENANCE.md"}
        return Source(spec, description, sha256, embedded)
    path = Path(spec)
    fingerprint_extra = {"text_field": options.text_field, "encoding": options.encoding, "glob": options.glob}
    if path.is_dir():
        files = _folder_files(path, options.glob)
        if not files:
            raise UserError(
                f"{path}: folder holds no files" + (f" matching --glob {options.glob}" if options.glob else "")
            )
        description = {"kind": "folder", "path": str(path.resolve()), "files": len(files), "glob": options.glob}
        fingerprint = _files_fingerprint(files, fingerprint_extra)
        if all(f.suffix.lower() == ".parquet" for f in files):
            count = _parquet_row_count(files, options.text_field)
            return Source(
                spec, description, fingerprint, lambda start: _parquet_rows(files, options.text_field, start), count
            )
        skipped: list[str] = []
        source = Source(
            spec, description, fingerprint, lambda start: _skip(_folder_rows(path, files, options, skipped), start)
        )
        source.skipped_files = skipped
        return source
    if not path.is_file():
        raise UserError(
            f"{spec}: no such file or folder (embedded corpora: {', '.join(EMBEDDED_CORPORA)}; Hugging Face datasets: hf:OWNER/NAME)"
        )
    suffix = path.suffix.lower()
    description = {"kind": "path", "path": str(path.resolve())}
    fingerprint = _files_fingerprint([path], fingerprint_extra)
    if suffix == ".parquet":
        count = _parquet_row_count([path], options.text_field)
        return Source(
            spec, description, fingerprint, lambda start: _parquet_rows([path], options.text_field, start), count
        )
    if suffix == ".jsonl":
        return Source(
            spec,
            description,
            fingerprint,
            lambda start: _skip(_jsonl_rows(path, options.text_field, options.encoding), start),
        )
    if suffix in (".txt", ".md", ".text", ""):
        return Source(
            spec, description, fingerprint, lambda start: _skip(_text_file_documents(path, options.encoding), start)
        )
    raise UserError(
        f"{path}: unsupported file type '{suffix}'; give a .txt, .md, .jsonl or .parquet file, a folder, "
        f"'hf:OWNER/NAME' or one of: {', '.join(EMBEDDED_CORPORA)}"
    )
