"""What common random numbers buy: the seed SD of paired differences, with and without `random_streams`.

For each intervention (qkv_bias true, drop_rate 0, weight_decay 0.01) and the baseline, SEEDS seeds are
trained on a tiny model (2 layers, 64 wide, the embedded Brown corpus), once with the default
initialisation (one generator in the book's module order) and once with `random_streams: true`. Each run's
test loss is its mean cross-entropy on one fixed slice of the validation split; the table gives, per
intervention, the mean and SD of the per-seed paired differences (baseline - intervention, positive is
better) in each mode, and their ratio. A smaller SD with streams is what pairing gains from initialising
the untouched parameters alike: fewer seeds for the same power (`gptlab experiment seeds --paired-sd`).

Run from the repository root (one thread per run; --jobs runs in parallel):

    python benchmarks/crn_streams.py --out /tmp/crn                       # 8 seeds, 300 steps each
    python benchmarks/crn_streams.py --out /tmp/crn --seeds 3 --steps 50  # a quick look

Prints the table as Markdown, then one JSON line with every run's loss. Runs already trained under --out are
reused, so an interrupted measurement continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MODEL = {"vocab_size": 50257, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_layers": 2, "drop_rate": 0.1}
TRAIN = {"microbatch_size": 8, "learning_rate": 0.002, "precision": "fp32", "validation_batches": 0}
INTERVENTIONS = {
    "baseline": ({}, {}),
    "qkv_bias": ({"qkv_bias": True}, {}),
    "no dropout": ({"drop_rate": 0.0}, {}),
    "weight_decay 0.01": ({}, {"weight_decay": 0.01}),
}
EVAL = {"split": "validation", "batches": 16, "batch_size": 16}


def _train_one(job: tuple[str, str, int, bool, int, str]) -> tuple[str, str, int, bool, float]:
    import torch

    from gptlab import api

    torch.set_num_threads(1)
    out, label, seed, streams, steps, dataset = job
    model, train = INTERVENTIONS[label]
    run_dir = Path(out) / ("streams" if streams else "default") / label.replace(" ", "-") / f"seed-{seed}"
    loss_file = run_dir / "test_loss.json"
    if not loss_file.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "model.json").write_text(json.dumps({**MODEL, **model}))
        tokens = steps * TRAIN["microbatch_size"] * MODEL["context_length"]
        (run_dir / "train.json").write_text(
            json.dumps(
                {
                    "dataset": dataset,
                    **TRAIN,
                    **train,
                    "min_train_tokens": tokens,
                    "random_seed": seed,
                    "random_streams": streams,
                }
            )
        )
        api.train(run_dir)
        loss_file.write_text(json.dumps(api.evaluate(run_dir, **EVAL)["loss"]))
    return label, str(seed), seed, streams, float(json.loads(loss_file.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where the runs and the prepared corpus go")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()

    from gptlab.data.prepare import prepare_dataset

    dataset = args.out / "brown"
    if not (dataset / "meta.json").is_file():
        prepare_dataset("brown", dataset, show_progress=False)
    jobs = [
        (str(args.out), label, seed, streams, args.steps, str(dataset.resolve()))
        for seed in range(1, args.seeds + 1)
        for streams in (False, True)
        for label in INTERVENTIONS
    ]
    started = time.perf_counter()
    losses: dict[tuple[str, bool], dict[int, float]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for label, _, seed, streams, loss in pool.map(_train_one, jobs):
            losses.setdefault((label, streams), {})[seed] = loss
    minutes = (time.perf_counter() - started) / 60

    print(
        f"{args.seeds} seeds per arm, {args.steps} steps of {TRAIN['microbatch_size']} x {MODEL['context_length']} "
        f"tokens, model {MODEL}; test loss on {EVAL}; {minutes:.1f} minutes\n"
    )
    print(
        "| intervention | mean diff (default) | SD of paired diffs (default) | mean diff (streams) | SD of paired diffs (streams) | SD ratio streams/default |"
    )
    print("|---|---|---|---|---|---|")
    table = {}
    for label in INTERVENTIONS:
        if label == "baseline":
            continue
        row = {}
        for streams in (False, True):
            base, ours = losses[("baseline", streams)], losses[(label, streams)]
            differences = [base[seed] - ours[seed] for seed in sorted(base)]
            row[streams] = (statistics.fmean(differences), statistics.stdev(differences))
        ratio = row[True][1] / row[False][1] if row[False][1] > 0 else math.inf
        table[label] = {"default": row[False], "streams": row[True], "ratio": ratio}
        print(
            f"| {label} | {row[False][0]:+.4f} | {row[False][1]:.4f} | {row[True][0]:+.4f} | {row[True][1]:.4f} | {ratio:.2f} |"
        )
    baseline_sd = {mode: statistics.stdev(losses[("baseline", mode)].values()) for mode in (False, True)}
    print(f"\nBaseline seed SD: {baseline_sd[False]:.4f} (default), {baseline_sd[True]:.4f} (streams)")
    print(
        json.dumps(
            {
                "table": table,
                "baseline_sd": {"default": baseline_sd[False], "streams": baseline_sd[True]},
                "losses": {f"{label}|{'streams' if s else 'default'}": v for (label, s), v in losses.items()},
                "minutes": minutes,
            }
        )
    )


if __name__ == "__main__":
    main()
