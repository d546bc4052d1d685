"""One process with gradient accumulation 2 against two torchrun processes (gloo) with accumulation 1, on
this CPU: the same batches, so the same losses; what differs is the wall time.

Run: python benchmarks/ddp_cpu.py [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gptlab.data.prepare import prepare_dataset
from gptlab.train.record import environment

MODEL = {
    "vocab_size": 50257,
    "context_length": 128,
    "emb_dim": 256,
    "n_heads": 4,
    "n_layers": 4,
    "drop_rate": 0.0,
    "tie_weights": True,
    "init": "gpt2",
}


def run(command: list[str], threads: int) -> None:
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--microbatch", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(environment()))
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    work = Path(tempfile.mkdtemp(prefix="gptlab-ddp-"))
    prepare_dataset("brown", work / "data", show_progress=False)
    tokens = args.steps * 2 * args.microbatch * MODEL["context_length"]
    rows = []
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    for name, accumulation, launcher, threads in (
        ("1 process, accumulation 2, 2 threads", 2, [sys.executable, "-m", "gptlab"], 2),
        ("1 process, accumulation 2, 1 thread", 2, [sys.executable, "-m", "gptlab"], 1),
        (
            "2 processes (torchrun, gloo), accumulation 1, 1 thread each",
            1,
            [torchrun, "--standalone", "--nproc_per_node=2", "-m", "gptlab"],
            1,
        ),
    ):
        run_dir = work / name.split(",")[0].replace(" ", "-") / str(threads)
        run_dir.mkdir(parents=True)
        (run_dir / "model.json").write_text(json.dumps(MODEL))
        (run_dir / "train.json").write_text(
            json.dumps(
                {
                    "dataset": str(work / "data"),
                    "microbatch_size": args.microbatch,
                    "precision": "fp32",
                    "gradient_accumulation_steps": accumulation,
                    "min_train_tokens": tokens,
                    "validation_batches": 0,
                }
            )
        )
        run([*launcher, "train", str(run_dir), "--no-progress"], threads)
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append((name, summary["training_seconds"], summary["tokens_per_second"], summary["final_train_loss"]))
    print(
        f"\n{args.steps} steps of {2 * args.microbatch} x {MODEL['context_length']} tokens, 4 layers x 256 wide, fp32"
    )
    print("| setup | training seconds | tokens/s | final train loss |")
    print("|---|---|---|---|")
    for name, seconds, speed, loss in rows:
        print(f"| {name} | {seconds:.1f} | {speed:,.0f} | {loss:.5f} |")


if __name__ == "__main__":
    main()
