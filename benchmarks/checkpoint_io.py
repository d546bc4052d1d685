"""Checkpoint save and load speed for GPT-2 small (163M parameters, untied) with a full AdamW state.

A save writes model.safetensors (book layout), optimizer.pt and training_state.pt into a staging folder,
fsyncs every file and renames it into place; a load verifies every file, then restores weights and
optimizer. Prints MB/s for both. Run: python benchmarks/checkpoint_io.py [--repeats 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptlab.config import ModelConfig, TrainConfig
from gptlab.runtime.checkpoint import find_resumable_checkpoint, snapshot_checkpoint, write_checkpoint
from gptlab.train.optim import build_optimizer
from gptlab.train.record import environment
from gptlab.weights import build_model


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    print(json.dumps(environment()))
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))

    config = ModelConfig(init="gpt2")
    model = build_model(config)
    optimizer = build_optimizer(model, TrainConfig(dataset="-", microbatch_size=1), torch.device("cpu"))
    for parameter in model.parameters():  # one step on small random gradients fills both AdamW moments
        parameter.grad = torch.randn_like(parameter) * 1e-3
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    run_dir = Path(args.dir or tempfile.mkdtemp(prefix="gptlab-ckpt-"))
    saves, loads, size = [], [], 0
    for repeat in range(args.repeats):
        started = time.perf_counter()
        snapshot = snapshot_checkpoint(
            repeat,
            model,
            optimizer,
            None,
            {"step": repeat, "totals": {}, "rng": []},
            {"global_step": repeat},
            {"model": config.model_dump(mode="json"), "train": {}},
            is_best=False,
            copy=False,  # written at once, as a synchronous save is
        )
        path = write_checkpoint(run_dir, snapshot)
        saves.append(time.perf_counter() - started)
        size = folder_bytes(path)
        started = time.perf_counter()
        checkpoint = find_resumable_checkpoint(run_dir, "latest")  # reads and checks every file
        checkpoint.load_model(model)
        checkpoint.load_optimizer(optimizer)
        loads.append(time.perf_counter() - started)
        shutil.rmtree(path)
    megabytes = size / 1e6
    print(f"\ncheckpoint size: {megabytes:,.0f} MB (GPT-2 small untied, AdamW state)")
    print("| operation | mean seconds | MB/s |")
    print("|---|---|---|")
    for name, times in (("save (write + fsync + rename)", saves), ("load (verify + restore)", loads)):
        mean = sum(times) / len(times)
        print(f"| {name} | {mean:.2f} | {megabytes / mean:,.0f} |")
    if args.dir is None:
        shutil.rmtree(run_dir)


if __name__ == "__main__":
    main()
