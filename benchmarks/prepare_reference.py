"""What our users' FineWeb script does, for `prepare_vs_reference.py` to measure gptlab against.

Their script loads the `sample/10BT` parquet through `datasets`, takes rows `train[:99%]` as train and
`train[99%:]` as validation, tokenises in one process with tiktoken's `encode_batch` over 1,000 rows at a
time, keeps every token in one Python list, and writes each split with one `save_file` at the end. Here
the parquet is a local folder (no network) and the GPT-2 BPE is gptlab's offline copy of the same
files; each document is followed by <|endoftext|>, as in their published token files.

    python benchmarks/prepare_reference.py PARQUET_FOLDER OUT_DIR [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from datasets import load_dataset
from safetensors.torch import save_file

from gptlab.tokenizer import END_OF_TEXT_ID, gpt2_encoding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parquet_folder", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="datasets' cache (a fresh one makes the run pay for the Arrow copy, as theirs does)",
    )
    args = parser.parse_args()
    files = sorted(str(path) for path in args.parquet_folder.rglob("*.parquet"))
    encoding = gpt2_encoding()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split_name, rows in (("train", "train[:99%]"), ("validation", "train[99%:]")):
        dataset = load_dataset("parquet", data_files=files, split=rows, cache_dir=args.cache_dir)
        tokens: list[int] = []
        for start in range(0, len(dataset), 1000):
            texts = dataset[start : start + 1000]["text"]
            for ids in encoding.encode_batch(texts):
                tokens.extend(ids)
                tokens.append(END_OF_TEXT_ID)
        save_file({"tokens": torch.tensor(tokens, dtype=torch.uint16)}, str(args.out_dir / f"{split_name}.safetensors"))
        print(f"{split_name}: {len(tokens):,} tokens", flush=True)


if __name__ == "__main__":
    main()
