"""Token splits on disk: one safetensors file per split holding a 1-D `tokens` tensor (uint16 for GPT-2).

This is the layout of the published pre-tokenised FineWeb sets. Reading is by slice through a memory
map, so a split of billions of tokens is never loaded whole.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from gptlab.errors import UserError

SPLIT_NAMES = ("train", "validation", "test")
TOKENS_KEY = "tokens"
_INTEGER_DTYPES = {np.dtype("uint16"), np.dtype("int32"), np.dtype("uint32"), np.dtype("int64")}


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
        first = self._slice[0:1] if self.length else np.zeros(0, dtype=np.uint16)
        if first.dtype not in _INTEGER_DTYPES:
            raise UserError(f"{self.path}: '{TOKENS_KEY}' has dtype {first.dtype}; expected uint16 token ids")

    def __len__(self) -> int:
        return self.length

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as a NumPy array of the file's dtype."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"{self.path}: token range [{start}, {stop}) outside [0, {self.length})")
        return self._slice[start:stop]


class TokenSplitWriter:
    """Streams uint16 tokens into a safetensors file without holding the split in memory.

    safetensors' own writers need the whole tensor at once, so the (simple, documented) header is
    written here: 8-byte little-endian header size, a JSON header padded to 8 bytes, then raw data.
    The file is written under a temporary name and renamed into place by `close()`.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tmp_path = self.path.with_name(f".{self.path.name}.tmp")
        self._data_path = self.path.with_name(f".{self.path.name}.data.tmp")
        self._data = open(self._data_path, "wb")
        self.count = 0

    def write(self, tokens: np.ndarray | list[int]) -> None:
        array = np.asarray(tokens, dtype=np.uint16)
        self._data.write(array.tobytes())
        self.count += int(array.size)

    def close(self) -> None:
        self._data.close()
        header = {TOKENS_KEY: {"dtype": "U16", "shape": [self.count], "data_offsets": [0, 2 * self.count]}}
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        header_bytes += b" " * (-len(header_bytes) % 8)
        with open(self._tmp_path, "wb") as out, open(self._data_path, "rb") as data:
            out.write(struct.pack("<Q", len(header_bytes)))
            out.write(header_bytes)
            while chunk := data.read(1 << 24):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(self._tmp_path, self.path)
        self._data_path.unlink()

    def abort(self) -> None:
        self._data.close()
        self._data_path.unlink(missing_ok=True)
        self._tmp_path.unlink(missing_ok=True)


class TokenDataset:
    """A prepared dataset directory: `train.safetensors`, `validation.safetensors`, optional `test.safetensors`
    and `meta.json`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise UserError(f"{self.directory}: dataset directory not found")
        if not (self.directory / "train.safetensors").is_file():
            raise UserError(f"{self.directory}: not a token dataset (no train.safetensors); make one with `gptlab prepare`")
        self._splits: dict[str, TokenSplit] = {}
        meta_path = self.directory / "meta.json"
        self.meta: dict = json.loads(meta_path.read_text()) if meta_path.is_file() else {}

    def has_split(self, name: str) -> bool:
        return (self.directory / f"{name}.safetensors").is_file()

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
