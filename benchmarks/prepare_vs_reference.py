"""`gptlab prepare` against the users' FineWeb script (`prepare_reference.py`) on the same parquet, in one run.

The input is at least --megabytes of parquet shards (snappy, no dictionary encoding, as FineWeb's
shards are) built from the embedded Brown Corpus repeated. Each variant runs in a fresh process; wall
time covers the whole command (start-up, reading, tokenising, writing), and peak RSS is the largest sum
of resident memory over the process and its children (gptlab's workers), sampled every 50 ms. gptlab
runs with `--split-rule rows:99`, the reference's split, and the benchmark checks that both wrote the
same tokens. gptlab with 2 workers is also run on twice the input, to show its memory does not grow.

    python benchmarks/prepare_vs_reference.py                   # 200 MB, then 400 MB for gptlab
    python benchmarks/prepare_vs_reference.py --megabytes 20 --json /tmp/prepare_bench.json

Targets: gptlab with 2 workers at least 1.8x the reference's tokens/s; peak RSS at most a fifth of the
reference's, and flat when the input doubles.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import safe_open

HERE = Path(__file__).resolve().parent
ROWS_PER_SHARD_GROUP = 1000


def build_parquet(folder: Path, megabytes: float) -> dict:
    """Shards of the Brown Corpus repeated until the folder holds at least `megabytes` of parquet."""
    from gptlab.data.sources import SourceOptions, open_source

    documents = [text for text in open_source("brown", SourceOptions()).rows(0) if text]
    folder.mkdir(parents=True, exist_ok=True)
    total, shard, rows = 0, 0, 0
    while total < megabytes * 1e6:
        path = folder / f"{shard:03}_00000.parquet"
        table = pa.table({"text": documents * 4, "id": [f"<urn:brown:{shard}:{i}>" for i in range(4 * len(documents))]})
        pq.write_table(table, path, compression="snappy", use_dictionary=False, row_group_size=ROWS_PER_SHARD_GROUP)
        total += path.stat().st_size
        rows += table.num_rows
        shard += 1
    return {"shards": shard, "bytes": total, "rows": rows}


def doubled(folder: Path, into: Path) -> None:
    """The same shards twice (symbolic links: twice the input, no extra disk)."""
    into.mkdir(parents=True, exist_ok=True)
    for copy in range(2):
        for shard in sorted(folder.glob("*.parquet")):
            (into / f"{copy}-{shard.name}").symlink_to(shard.resolve())


def _tree_rss_bytes(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total


def measure(command: list[str]) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss_bytes(process.pid))
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    output = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {shlex.join(command)}\n{output}")
    return {"seconds": seconds, "peak_rss_bytes": peak, "command": shlex.join(command)}


def token_digest(directory: Path) -> tuple[int, str]:
    """Token count and SHA-256 of train then validation tokens, read a block at a time."""
    digest, count = hashlib.sha256(), 0
    for name in ("train", "validation"):
        with safe_open(str(directory / f"{name}.safetensors"), framework="numpy") as handle:
            tokens = handle.get_slice("tokens")
            length = tokens.get_shape()[0]
            for start in range(0, length, 1 << 24):
                digest.update(
                    np.ascontiguousarray(tokens[start : min(start + (1 << 24), length)], dtype=np.uint16).tobytes()
                )
            count += length
    return count, digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=200, help="Parquet input size (at least).")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/gptlab-prepare-bench"), help="Scratch folder (removed first)."
    )
    parser.add_argument("--no-double", action="store_true", help="Skip gptlab on twice the input.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    source = args.work / "parquet"
    built = build_parquet(source, args.megabytes)
    print(
        f"input: {built['shards']} shards, {built['bytes'] / 1e6:.0f} MB of parquet, {built['rows']:,} rows", flush=True
    )
    gptlab = [sys.executable, "-m", "gptlab", "prepare"]
    variants = [
        (
            "reference (users' script)",
            [
                sys.executable,
                str(HERE / "prepare_reference.py"),
                str(source),
                str(args.work / "reference"),
                "--cache-dir",
                str(args.work / "hf-cache"),
            ],
            args.work / "reference",
            built["bytes"],
        ),
        (
            "gptlab, 1 worker",
            [
                *gptlab,
                str(source),
                str(args.work / "gptlab-1"),
                "--split-rule",
                "rows:99",
                "--workers",
                "1",
                "--no-progress",
            ],
            args.work / "gptlab-1",
            built["bytes"],
        ),
        (
            "gptlab, 2 workers",
            [
                *gptlab,
                str(source),
                str(args.work / "gptlab-2"),
                "--split-rule",
                "rows:99",
                "--workers",
                "2",
                "--no-progress",
            ],
            args.work / "gptlab-2",
            built["bytes"],
        ),
    ]
    if not args.no_double:
        doubled(source, args.work / "parquet-x2")
        variants.append(
            (
                "gptlab, 2 workers, input doubled",
                [
                    *gptlab,
                    str(args.work / "parquet-x2"),
                    str(args.work / "gptlab-2-x2"),
                    "--split-rule",
                    "rows:99",
                    "--workers",
                    "2",
                    "--no-progress",
                ],
                args.work / "gptlab-2-x2",
                2 * built["bytes"],
            )
        )
    results = []
    for name, command, out, input_bytes in variants:
        result = measure(command)
        tokens, digest = token_digest(out)
        result.update(
            name=name,
            tokens=tokens,
            tokens_sha256=digest,
            input_bytes=input_bytes,
            tokens_per_second=tokens / result["seconds"],
            load_average_after=os.getloadavg()[0],
        )
        results.append(result)
        print(
            f"{name}: {tokens:,} tokens in {result['seconds']:.1f} s = {result['tokens_per_second']:,.0f} tokens/s, "
            f"peak RSS {result['peak_rss_bytes'] / 2**20:,.0f} MiB (load {result['load_average_after']:.1f})",
            flush=True,
        )
        if out.name.startswith("gptlab") and out.name != "gptlab-2-x2":
            shutil.rmtree(out)  # keep the disk use of the run small
        elif out.name == "gptlab-2-x2":
            shutil.rmtree(out)
    same = len({r["tokens_sha256"] for r in results[:3]}) == 1
    reference = results[0]
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(
        f"\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu}, {os.cpu_count()} cores; gptlab and the reference wrote "
        f"{'the same' if same else 'DIFFERENT'} tokens\n"
    )
    print("| what | input | tokens | seconds | tokens/s | vs reference | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['name']} | {r['input_bytes'] / 1e6:.0f} MB | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens_per_second']:,.0f} | "
            f"{r['tokens_per_second'] / reference['tokens_per_second']:.2f}x | {r['peak_rss_bytes'] / 2**20:,.0f} MiB "
            f"({r['peak_rss_bytes'] / reference['peak_rss_bytes']:.2f}x) |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"cpu": cpu, "cores": os.cpu_count(), "same_tokens": same, "input": built, "results": results}, indent=2
            )
        )
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
