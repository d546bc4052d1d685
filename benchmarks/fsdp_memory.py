"""Bytes each rank holds for weights, gradients and AdamW state under DDP and under FSDP, with two torchrun
processes on this CPU (gloo), after three training steps of a 4-block GPT-2-shaped model; and tokens/s.

The bytes are counted from the tensors themselves (each storage once; a DTensor by its local shard), so they
do not depend on the machine's load; tokens/s does (label it "under contention" on a shared machine).

Run: python benchmarks/fsdp_memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch

MODEL = dict(vocab_size=50257, context_length=128, emb_dim=256, n_heads=4, n_layers=4, drop_rate=0.0)
MICROBATCH, STEPS = 4, 3


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def held_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    def total(tensors) -> int:
        seen, size = set(), 0
        for tensor in tensors:
            storage = _local(tensor).untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                size += storage.nbytes()
        return size

    parameters = list(model.parameters())
    state = [value for per in optimizer.state.values() for value in per.values() if torch.is_tensor(value)]
    return {
        "weights": total(parameters),
        "gradients": total(p.grad for p in parameters if p.grad is not None),
        "adamw_state": total(v for v in state if v.dim() > 0),
    }


def worker(parallelism: str) -> None:
    import torch.distributed as dist

    from gptlab.config import ModelConfig
    from gptlab.model import GPT
    from gptlab.train import sharding

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = GPT(ModelConfig(**MODEL))
    trained = (
        sharding.shard(model, "fp32") if parallelism == "fsdp" else torch.nn.parallel.DistributedDataParallel(model)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(rank)
    started = None
    for step in range(STEPS + 1):
        if step == 1:
            started = time.perf_counter()  # the first step allocates; time the others
        tokens = torch.randint(0, MODEL["vocab_size"], (MICROBATCH, MODEL["context_length"] + 1), generator=generator)
        trained(tokens[:, :-1], tokens[:, 1:]).backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    result = held_bytes(model, optimizer)
    result["total"] = sum(result.values())
    result["tokens_per_second"] = round(STEPS * MICROBATCH * MODEL["context_length"] * world / seconds)
    if rank == 0:
        print(json.dumps({"parallelism": parallelism, "rank": rank, **result}))
    dist.destroy_process_group()


def main() -> None:
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    results = {}
    for parallelism in ("ddp", "fsdp"):
        out = subprocess.run(
            [torchrun, "--standalone", "--nproc_per_node=2", __file__, "--worker", parallelism],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        ).stdout
        results[parallelism] = json.loads(out.strip().splitlines()[-1])
    for parallelism, row in results.items():
        print(
            f"{parallelism:5} rank 0 holds {row['total'] / 2**20:7.1f} MiB (weights {row['weights'] / 2**20:.1f}, gradients "
            f"{row['gradients'] / 2**20:.1f}, AdamW {row['adamw_state'] / 2**20:.1f}); {row['tokens_per_second']:,} tokens/s"
        )
    print(f"FSDP / DDP: {results['fsdp']['total'] / results['ddp']['total']:.2f}x the bytes per rank")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
