"""Token splits on disk: one safetensors file per split holding a 1-D `tokens` tensor (uint16 for GPT-2).

This is the layout of the published pre-tokenised FineWeb sets. Reading is by slice through a memory
map, so a split of billions of tokens is never loaded whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from gptlab.errors import UserError
from gptlab.files import fsync_directory

SPLIT_NAMES = ("train", "validation", "test")
TOKENS_KEY = "tokens"
_INTEGER_DTYPES = {np.dtype("uint16"), np.dtype("int32"), np.dtype("uint32"), np.dtype("int64")}
MAX_ID_KEY = (
    "max_id"  # in the safetensors header's __metadata__, written by TokenSplitWriter (short: the header room is fixed)
)
SCAN_TOKENS = 1 << 24  # a split without a recorded max id is scanned this far when opened (tens of milliseconds)


def check_ids(tokens: np.ndarray, vocab_size: int, path: Path, first_position: int) -> None:
    """Refuse ids outside [0, vocab_size): they would crash the embedding lookup (IndexError on CPU, a
    device-side assert on CUDA) long after the data was read."""
    if tokens.size == 0:
        return
    low, high = tokens.min(), tokens.max()
    if low >= 0 and high < vocab_size:
        return
    position = int(np.flatnonzero((tokens < 0) | (tokens >= vocab_size))[0])
    raise UserError(
        f"{path}: token {first_position + position:,} is id {int(tokens[position])}, outside the vocabulary [0, {vocab_size}) "
        f"of model.json's vocab_size; the dataset was made with another tokenizer or is damaged"
    )


class TokenSplit:
    """One split's tokens, read lazily by slice."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._handle = safe_open(str(self.path), framework="numpy")
            keys = list(self._handle.keys())
            if TOKENS_KEY not in keys:
                raise UserError(f"{self.path}: no tensor named '{TOKENS_KEY}' (found: {', '.join(keys) or 'none'})")
            self._slice = self._handle.get_slice(TOKENS_KEY)
        except (SafetensorError, OSError) as error:
            raise UserError(f"{self.path}: cannot read token file ({error})") from None
        shape = self._slice.get_shape()
        if len(shape) != 1:
            raise UserError(f"{self.path}: '{TOKENS_KEY}' must be 1-D, found shape {tuple(shape)}")
        self.length = int(shape[0])
        recorded = (self._handle.metadata() or {}).get(MAX_ID_KEY)
        self.max_id = int(recorded) if recorded is not None and recorded.lstrip("-").isdigit() else None
        first = self._slice[0:1] if self.length else np.zeros(0, dtype=np.uint16)
        if first.dtype not in _INTEGER_DTYPES:
            raise UserError(f"{self.path}: '{TOKENS_KEY}' has dtype {first.dtype}; expected uint16 token ids")

    def __len__(self) -> int:
        return self.length

    def check_vocabulary(self, vocab_size: int) -> None:
        """The recorded max id against vocab_size, else a bounded scan of the start of the split (every
        batch read for training or evaluation is checked as well, by BatchReader)."""
        if self.max_id is not None:
            if self.max_id >= vocab_size:
                raise UserError(
                    f"{self.path}: holds token ids up to {self.max_id} (recorded when it was prepared), outside the vocabulary "
                    f"[0, {vocab_size}) of model.json's vocab_size; use a vocab_size above {self.max_id} or a dataset of this tokenizer"
                )
            return
        check_ids(self.read(0, min(self.length, SCAN_TOKENS)), vocab_size, self.path, 0)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as a NumPy array of the file's dtype."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"{self.path}: token range [{start}, {stop}) outside [0, {self.length})")
        return self._slice[start:stop]


class TokenSplitWriter:
    """Streams uint16 tokens into a safetensors file without holding the split in memory, and can resume.

    safetensors' own writers need the whole tensor at once, so the (simple, documented) format is written
    here: an 8-byte little-endian header size, a JSON header, then the raw data. The header's room is
    reserved up front (JSON padded with spaces, which the format allows), the tokens go straight after it
    into a `.NAME.partial` file, and `close()` fills in the header and renames the file into place: the
    tokens are written once and never read back. `resume_from=n` reopens a partial file, keeping its
    first n tokens and dropping anything written after them. The header records the largest token id, so a
    reader checks the ids against a vocabulary at once; a resumed file reads its kept tokens back once, in
    chunks, so that it ends byte-identical to one written without a break.
    """

    _HEADER_ROOM = 120  # + the 8-byte size = 128 bytes: room for any length, and 8-byte aligned data
    DATA_OFFSET = 8 + _HEADER_ROOM

    @staticmethod
    def partial_path_of(path: Path) -> Path:
        return Path(path).with_name(f".{Path(path).name}.partial")

    def __init__(self, path: Path, resume_from: int | None = None):
        self.path = Path(path)
        self.partial_path = self.partial_path_of(self.path)
        if resume_from is None:
            self._data = open(self.partial_path, "wb")
            self._data.write(b"\0" * (self.DATA_OFFSET))
            self.count = 0
            self.max_id: int | None = -1
        else:
            self._data = open(self.partial_path, "r+b")
            self._data.truncate(self.DATA_OFFSET + 2 * resume_from)
            self._data.seek(0, os.SEEK_END)
            self.count = resume_from
            self.max_id = self._largest_kept_id(resume_from)

    def _largest_kept_id(self, count: int, chunk: int = 1 << 24) -> int:
        if count == 0:
            return -1
        kept = np.memmap(self.partial_path, dtype=np.uint16, mode="r", offset=self.DATA_OFFSET, shape=(count,))
        largest = max(int(kept[start : start + chunk].max()) for start in range(0, count, chunk))
        del kept
        return largest

    def write(self, tokens: np.ndarray | list[int]) -> None:
        array = np.asarray(tokens, dtype=np.uint16)
        self._data.write(array.tobytes())
        self.count += int(array.size)
        if array.size and self.max_id is not None:
            self.max_id = max(self.max_id, int(array.max()))

    def sync(self) -> None:
        """Make every token written so far durable (before recording progress that counts on them)."""
        self._data.flush()
        os.fsync(self._data.fileno())

    def close(self) -> None:
        header: dict = {TOKENS_KEY: {"dtype": "U16", "shape": [self.count], "data_offsets": [0, 2 * self.count]}}
        if self.max_id is not None:
            header["__metadata__"] = {MAX_ID_KEY: str(self.max_id)}
        header_bytes = json.dumps(header, separators=(",", ":")).encode().ljust(self._HEADER_ROOM)
        self._data.seek(0)
        self._data.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
        self._data.truncate(self.DATA_OFFSET + 2 * self.count)
        self.sync()
        self._data.close()
        os.replace(self.partial_path, self.path)
        fsync_directory(self.path.parent)

    def detach(self) -> None:
        """Close the file but keep the partial tokens for a later `resume_from`."""
        self._data.close()

    def abort(self) -> None:
        self._data.close()
        self.partial_path.unlink(missing_ok=True)


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{path}: not valid JSON ({error}); restore it, or delete it to use the splits without it"
        ) from None
    if not isinstance(meta, dict):
        raise UserError(
            f"{path}: must hold a JSON object, not {type(meta).__name__}; restore it, or delete it to use the splits without it"
        )
    return meta


FINGERPRINT_IGNORES = (
    "seconds",
    "gptlab_version",
)  # meta.json keys that differ between preparations of the same tokens


class TokenDataset:
    """A prepared dataset directory: `train.safetensors`, `validation.safetensors`, optional `test.safetensors`
    and `meta.json`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise UserError(f"{self.directory}: dataset directory not found")
        if not (self.directory / "train.safetensors").is_file():
            raise UserError(
                f"{self.directory}: not a token dataset (no train.safetensors); make one with `gptlab prepare`"
            )
        self._splits: dict[str, TokenSplit] = {}
        meta_path = self.directory / "meta.json"
        self.meta: dict = _read_meta(meta_path) if meta_path.is_file() else {}

    def has_split(self, name: str) -> bool:
        return (self.directory / f"{name}.safetensors").is_file()

    def fingerprint(self) -> str:
        """What a resume checks to be on the same tokens: a hash of meta.json (source, counts, split rule,
        seed; not how long the prepare took) and of each split file's size, cheap for any dataset size. A re-prepare of another corpus at
        the same path changes it; a re-prepare of the same corpus with the same options does not (the
        tokens are then the same)."""
        digest = hashlib.sha256()
        described = {key: value for key, value in self.meta.items() if key not in FINGERPRINT_IGNORES}
        digest.update(json.dumps(described, sort_keys=True).encode("utf-8"))
        for name in SPLIT_NAMES:
            path = self.directory / f"{name}.safetensors"
            digest.update(f"{name}:{path.stat().st_size if path.is_file() else -1};".encode())
        return "sha256:" + digest.hexdigest()[:16]

    def split(self, name: str) -> TokenSplit:
        if name not in self._splits:
            path = self.directory / f"{name}.safetensors"
            if not path.is_file():
                present = [n for n in SPLIT_NAMES if self.has_split(n)]
                raise UserError(f"{self.directory}: has no '{name}' split (present: {', '.join(present)})")
            self._splits[name] = TokenSplit(path)
        return self._splits[name]

    @property
    def tokenizer(self) -> str:
        return str(self.meta.get("tokenizer", {}).get("name", "gpt2"))
