"""Seconds the training loop is blocked per checkpoint: synchronous saves against background saves, same run.

One model and AdamW state (default: 50257-token vocabulary, 384 wide, 6 layers, untied: about 590 MB per
checkpoint) train on random tokens; a checkpoint is taken, then training goes on for --gap seconds (a run's
checkpoints are minutes apart), then the next checkpoint, alternating synchronous and background saves.
Both go through the code the training loop uses (`snapshot_checkpoint`, `CheckpointWriter`):

- synchronous: the loop waits for snapshot (no copy), write, hash, fsync, rename, pointers;
- background: the loop waits for the previous save still in flight (none when --gap is long enough), then
  for the copy of the state to host memory; writing, hashing and renaming happen while it trains.

Prints blocked seconds per checkpoint for each, their ratio, the save's whole time, and the mean step time
in the --gap after each kind of checkpoint (the writer shares the machine with training: on a CPU it
competes for the cores; on a GPU training runs on the device). Run:
python benchmarks/checkpoint_blocking.py [--repeats 3] [--gap 20] [--device cpu|cuda] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptlab.config import ModelConfig, TrainConfig
from gptlab.runtime.checkpoint import list_checkpoints, snapshot_checkpoint
from gptlab.train.checkpoint_writer import CheckpointWriter
from gptlab.train.host import keep_freed_memory_for_reuse
from gptlab.train.optim import build_optimizer
from gptlab.train.record import environment
from gptlab.weights import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="checkpoints of each kind")
    parser.add_argument("--gap", type=float, default=20.0, help="seconds of training between checkpoints")
    parser.add_argument("--emb-dim", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    print(json.dumps(environment()))
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))

    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_memory_for_reuse()  # as the training loop does on a CPU
    config = ModelConfig(emb_dim=args.emb_dim, n_heads=args.emb_dim // 64, n_layers=args.layers, context_length=64)
    torch.manual_seed(0)
    model = build_model(config, device)
    optimizer = build_optimizer(model, TrainConfig(dataset="-", microbatch_size=1), device)
    tokens = torch.randint(0, config.vocab_size, (2, config.context_length + 1), device=device)

    def train_step() -> None:
        loss, _ = model(tokens[:, :-1], tokens[:, 1:], with_router_loss=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    train_step()  # both AdamW moments exist from here on
    run_dir = Path(args.dir or tempfile.mkdtemp(prefix="gptlab-blocking-"))
    writers = {"synchronous": CheckpointWriter(run_dir, 2, False), "background": CheckpointWriter(run_dir, 2, True)}
    blocked: dict[str, list[float]] = {name: [] for name in writers}
    step_seconds: dict[str, list[float]] = {name: [] for name in writers}
    waited_for_previous: dict[str, float] = {name: 0.0 for name in writers}
    save_seconds: dict[str, float] = {name: 0.0 for name in writers}  # each save, snapshot to pointers, summed
    step = 0
    for repeat in range(args.repeats):
        for name, writer in writers.items():
            started = time.perf_counter()
            writer.wait()  # the loop's wait for a save still in flight (a background one only)
            snapshot_started = time.perf_counter()
            snapshot = snapshot_checkpoint(
                step,
                model,
                optimizer,
                None,
                {"step": step, "totals": {}, "rng": []},
                {"global_step": step},
                {"model": config.model_dump(mode="json"), "train": {}},
                is_best=False,
                copy=writer.background,
            )

            def written(seconds: float, name: str = name) -> None:
                save_seconds[name] += seconds

            writer.save(snapshot, time.perf_counter() - snapshot_started, on_written=written)
            del snapshot
            blocked[name].append(time.perf_counter() - started)
            gap_started = time.perf_counter()
            while time.perf_counter() - gap_started < args.gap:
                step_started = time.perf_counter()
                train_step()
                step_seconds[name].append(time.perf_counter() - step_started)
                step += 1
            if writer.background:  # what the next checkpoint would have waited for, counted as this one's
                waited = time.perf_counter()
                writer.wait()
                blocked[name][-1] += time.perf_counter() - waited
                waited_for_previous[name] += time.perf_counter() - waited
    size = sum(path.stat().st_size for path in list_checkpoints(run_dir)[-1].iterdir())
    print(
        f"\ncheckpoint: {size / 1e6:,.0f} MB ({model.parameter_count():,} parameters, AdamW state); "
        f"device {device}; {args.gap:g} s of training between checkpoints"
    )
    print(
        "| save | blocked s per checkpoint (mean) | each | of which waiting for the save in flight | "
        "save s per checkpoint | step s in the gap after it |"
    )
    print("|---|---|---|---|---|---|")
    for name in writers:
        print(
            f"| {name} | {statistics.mean(blocked[name]):.2f} | {', '.join(f'{b:.2f}' for b in blocked[name])} | "
            f"{waited_for_previous[name] / args.repeats:.2f} | {save_seconds[name] / args.repeats:.2f} | "
            f"{statistics.mean(step_seconds[name]):.3f} |"
        )
    ratio = statistics.mean(blocked["synchronous"]) / statistics.mean(blocked["background"])
    print(f"\nblocked time per checkpoint: {ratio:.1f}x less with background saves")
    if args.dir is None:
        shutil.rmtree(run_dir)


if __name__ == "__main__":
    main()
