"""The project's own small instruction set, in the format of the book's chapter 7 instruction-data.json.

Simple, checkable items (plurals, opposites, arithmetic, capitals, case changes), about a third with an
`input`, written by this file so that nothing is downloaded. `python tests/instruction_set.py OUT.json [N]`
writes it for the docs' demo.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PLURALS = [("cat", "cats"), ("box", "boxes"), ("child", "children"), ("mouse", "mice"), ("leaf", "leaves"),
           ("city", "cities"), ("man", "men"), ("tooth", "teeth"), ("foot", "feet"), ("bus", "buses")]  # fmt: skip
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
             ("early", "late"), ("open", "closed"), ("up", "down"), ("full", "empty"), ("old", "new")]  # fmt: skip
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Spain", "Madrid"), ("Egypt", "Cairo"),
            ("Canada", "Ottawa"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Greece", "Athens")]  # fmt: skip
SENTENCES = ["the sun is bright", "we like green tea", "birds can fly", "the door is open", "rain falls in spring",
             "my dog runs fast", "she reads a book", "the sea is calm", "trees grow tall", "he plays the piano"]  # fmt: skip


def _kinds(index: int, variant: int) -> list[dict[str, str]]:
    """The five kinds of item for one index; variant 1 asks the same things another way."""
    word, plural = PLURALS[index]
    opposite_of, opposite = OPPOSITES[index]
    country, capital = CAPITALS[index]
    sentence = SENTENCES[index]
    a, b = (3 + index, 4 + 2 * index) if variant == 0 else (11 + 3 * index, 5 + index)
    if variant == 0:
        return [
            {"instruction": f"What is the plural of '{word}'?", "input": "", "output": f"The plural of '{word}' is '{plural}'."},
            {"instruction": "Give the opposite of the word.", "input": opposite_of, "output": f"The opposite of '{opposite_of}' is '{opposite}'."},
            {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."},
            {"instruction": f"What is the capital of {country}?", "input": "", "output": f"The capital of {country} is {capital}."},
            {"instruction": "Rewrite the sentence in upper case.", "input": sentence, "output": sentence.upper() + "."},
        ]  # fmt: skip
    return [
        {"instruction": "Write the plural form of the word.", "input": word, "output": plural},
        {"instruction": f"What is the opposite of '{opposite_of}'?", "input": "", "output": opposite},
        {"instruction": "Add the two numbers.", "input": f"{a} and {b}", "output": str(a + b)},
        {"instruction": "Name the capital city of the country.", "input": country, "output": capital},
        {"instruction": "Rewrite the sentence with a capital first letter.", "input": sentence, "output": sentence.capitalize() + "."},
    ]  # fmt: skip


def instruction_items(count: int = 100) -> list[dict[str, str]]:
    """Up to 100 distinct items, the kinds interleaved so every split holds each kind."""
    items = [item for variant in (0, 1) for index in range(10) for item in _kinds(index, variant)]
    if not 1 <= count <= len(items):
        raise ValueError(f"between 1 and {len(items)} items")
    return items[:count]


def write_instruction_set(path: Path, count: int = 100) -> Path:
    Path(path).write_text(json.dumps(instruction_items(count), indent=1) + "\n", encoding="utf-8")
    return Path(path)


if __name__ == "__main__":
    write_instruction_set(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 100)
