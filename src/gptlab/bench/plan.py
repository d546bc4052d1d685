"""`gptlab train RUN_DIR --dry-run`: what a run will do and what it needs, before a GPU is rented.

Nothing here writes a file or touches a device. The plan validates both config files and the dataset,
counts the steps, tokens, checkpoints and validations the training loop will make (the loop's own rules,
`gptlab.train.loop.fit`), and estimates per GPU the peak memory at the run's precision and microbatch,
which common cards it fits, and how long and how much it would take on each. The memory formula and its
assumptions are in docs/planning.md; parameter counts come from `gptlab.model.parameter_counts` alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from gptlab.bench.memory import format_bytes
from gptlab.config import ModelConfig, RunConfig, TrainConfig, load_run_config
from gptlab.data.batches import BatchPlan, plan_training
from gptlab.data.locate import default_datasets_dir, find_local_dataset, is_hub_id
from gptlab.errors import UserError
from gptlab.flops import flops_per_token, lookup_peak_tflops
from gptlab.linear_cross_entropy import DEFAULT_CHUNK_TOKENS
from gptlab.model import parameter_counts
from gptlab.rundir import MODEL_FILE, TRAIN_FILE
from gptlab.train.cadence import Cadence

# The stated model FLOPs utilisation used when no `gptlab bench --json` file is given: what a compiled bf16
# GPT-2-small step of gptlab reaches on an H200 is about 0.3 to 0.45 (docs/performance.md, ANCHORS.md).
DEFAULT_MFU = 0.35


@dataclass(frozen=True)
class Card:
    """A GPU people rent: memory in bytes (decimal GB, as sold), its datasheet row, and an assumed price."""

    name: str
    memory_bytes: int
    device_name: str  # matched against bench.flops.PEAK_TFLOPS like torch.cuda.get_device_name()
    usd_per_hour: float  # one GPU, on demand; an assumption stated in docs/planning.md, not a quote


# On-demand list prices per GPU-hour seen at cloud GPU providers in 2025 (Lambda for the data-centre cards,
# community clouds for the RTX cards); plans print them beside the cost so a reader can redo the sum.
CARDS: tuple[Card, ...] = (
    Card("A100 40GB", 40 * 10**9, "NVIDIA A100-SXM4-40GB", 1.29),
    Card("A100 80GB", 80 * 10**9, "NVIDIA A100-SXM4-80GB", 1.79),
    Card("H100 80GB", 80 * 10**9, "NVIDIA H100 80GB HBM3", 2.99),
    Card("H200 141GB", 141 * 10**9, "NVIDIA H200", 3.79),
    Card("RTX 3090 24GB", 24 * 10**9, "NVIDIA GeForce RTX 3090", 0.22),
    Card("RTX 4090 24GB", 24 * 10**9, "NVIDIA GeForce RTX 4090", 0.34),
)
# Share of a card's memory a run may plan to fill: the CUDA context, NCCL buffers and the caching allocator's
# fragmentation take the rest.
USABLE_MEMORY_FRACTION = 0.9


def gpu_precision(train: TrainConfig) -> tuple[str, str]:
    """(precision, why) the run gets on a current NVIDIA GPU, by the rules of runtime/precision.py."""
    if train.precision == "auto":
        return "bf16", "precision 'auto' on a GPU with bf16"
    if train.precision is not None:
        return train.precision, f"precision '{train.precision}'"
    if train.use_amp is not None:
        return train.effective_precision, f"use_amp {json.dumps(train.use_amp)}"
    return "fp16", "no precision or use_amp: fp16 on GPUs, as the ddp-base-model-from-scratch harness"


def estimate_memory(
    model: ModelConfig, train: TrainConfig, precision: str, world_size: int, device_type: str = "cuda"
) -> dict[str, int]:
    """Peak bytes of one GPU's training step, part by part (docs/planning.md gives the formula).

    Weights, gradients and AdamW's two moments stay float32 in every precision (autocast casts on the fly
    and caches a 2-byte copy of each weight for the forward pass); DDP keeps one more float32 copy of the
    gradients in its buckets. Activations saved for backward follow Korthikanti et al. (2022) for a pre-LN
    block with fused attention (no T x T scores kept): per layer 15 tensors of B x T x C elements at compute
    width (each LayerNorm output cast for its matmul, Q, K, V, the attention output and its reshaped copy,
    the MLP's 4C-wide input and GELU output), the two LayerNorm inputs in float32 and two 1-byte dropout
    masks. The output head holds B x T x V logits, their float32 log-probabilities and the gradient, or with
    fused_cross_entropy one chunk of them. Checked against the CPU's measured peak in tests/test_plan.py.
    """
    fast = train.fast_paths(device_type)
    counts = parameter_counts(model, vocab_multiple=fast["pad_vocab_multiple"])
    padded_vocab = -(-model.vocab_size // fast["pad_vocab_multiple"]) * fast["pad_vocab_multiple"]
    half = precision in ("fp16", "bf16")
    element = 2 if half else 4
    tokens = train.microbatch_size * model.context_length
    width = model.emb_dim
    masks = 2 if model.drop_rate > 0 else 0
    # Compiled on a GPU, a half-precision step kept float32-wide activations: on an H200 (torch 2.11) GPT-2 small
    # at microbatch 12 peaked at 9.75 GiB compiled in bf16 and 9.31 GiB compiled in fp32, while eager bf16 stayed
    # ~35% under eager fp32 (docs/performance.md, "GPU: the first measurement"). Counted at compute width, a
    # compiled bf16 plan was 25% under the measured peak; at float32 width it is 8% over, as eager plans are.
    saved = 4 if half and fast["compile"] and device_type == "cuda" else element
    per_layer = (
        tokens * width * (15 * saved + 2 * 4 + masks)
    )  # 15 C-wide tensors at compute width (float32 when compiled, above), 2 float32 LayerNorm inputs
    if device_type == "cpu" and model.drop_rate > 0:
        # A CPU has no fused attention kernel with dropout: the math path keeps the T x T weights, mask and dropped weights.
        per_layer += train.microbatch_size * model.n_heads * model.context_length**2 * (2 * element + 1)
    if fast["fused_cross_entropy"]:
        # One chunk's float32 logits and its gradient at compute width, the head's float32 gradient computed in the
        # forward pass (and its compute-width copy), and dL/dhidden: linear_cross_entropy.py.
        head = (
            DEFAULT_CHUNK_TOKENS * padded_vocab * (4 + (element if half else 0))
            + padded_vocab * width * (4 + (element if half else 0))
            + tokens * width * 4
        )
    else:
        # Logits at compute width, their float32 log-probabilities and the gradient flowing back (one of them
        # only in fp32, where the logits are already float32).
        head = tokens * padded_vocab * ((element if half else 0) + 4 + 4)
    activations = model.n_layers * per_layer
    if train.activation_checkpointing:
        # Each block keeps only its float32 input; one block's activations exist again while it is recomputed.
        activations = model.n_layers * tokens * width * 4 + per_layer
    sharded = train.parallelism == "fsdp" and world_size > 1
    shards = world_size if sharded else 1
    parts = {
        "weights": counts.total * 4 // shards,
        "gradients": counts.total * 4 // shards,
        "adamw_state": counts.total * 8 // shards,
        "autocast_weight_copies": counts.total * 2 if half and not sharded else 0,
        "ddp_gradient_buckets": counts.total * 4 if world_size > 1 and not sharded else 0,
        "fsdp_gathered_weights": _fsdp_gathered_bytes(model, counts.total, padded_vocab, element) if sharded else 0,
        "activations": activations + tokens * width * 4 * 2,  # blocks, embeddings and the final LayerNorm
        "output_head": head,
    }
    parts["total"] = sum(parts.values())
    return parts


def _fsdp_gathered_bytes(model: ModelConfig, total: int, padded_vocab: int, element: int) -> int:
    """FSDP's unsharded buffers at a time: two blocks (the one computing and the next one prefetched) and the
    root's embeddings and head, which stay gathered from the forward to the backward pass; each as weights at
    compute width and as an unsharded float32 gradient before its reduce-scatter."""
    root = padded_vocab * model.emb_dim * (1 if model.tie_weights else 2) + model.context_length * model.emb_dim
    block = (total - root) // model.n_layers
    return (2 * block + root) * (element + 4)


def _bench_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--bench {path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"--bench {path}: not a `gptlab bench --json` file ({error})") from None
    if not isinstance(data, dict) or "columns" in data or not isinstance(data.get("tokens_per_second"), (int, float)):
        raise UserError(
            f"--bench {path}: expected the output of one `gptlab bench RUN_DIR --json` (not --compare or --find-max-microbatch)"
        )
    return data


def _bench_differences(bench: dict[str, Any], config: RunConfig, precision: str) -> list[str]:
    """What the benchmarked configuration does not share with the planned one (its tokens/s then mislead)."""
    saved = bench.get("config", {})
    differing = [
        f"model.{key}"
        for key, value in config.model.model_dump(mode="json").items()
        if saved.get("model", {}).get(key, value) != value
    ]
    if bench.get("microbatch_size") != config.train.microbatch_size:
        differing.append("microbatch_size")
    if bench.get("precision") != precision:
        differing.append("precision")
    return differing


def _dataset_plan(
    config: RunConfig, run_dir: Path, datasets_dir: Optional[Path], world_size: int
) -> tuple[dict[str, Any], Optional[BatchPlan]]:
    train, model = config.train, config.model
    source = str(run_dir / TRAIN_FILE)
    dataset = find_local_dataset(train.dataset, run_dir, datasets_dir)
    if dataset is None:
        datasets_dir = Path(datasets_dir) if datasets_dir is not None else default_datasets_dir()
        if not is_hub_id(train.dataset):
            raise UserError(
                f"{source}: dataset: '{train.dataset}' is neither a token dataset directory (relative to the run directory "
                f"or the working directory) nor a Hugging Face dataset id; make one with `gptlab prepare SOURCE DIR`"
            )
        return {
            "dataset": train.dataset,
            "status": f"would download {train.dataset} into {datasets_dir / train.dataset}",
        }, None
    info: dict[str, Any] = {
        "dataset": train.dataset,
        "status": f"found at {dataset.directory}",
        "splits": {
            name: len(dataset.split(name)) for name in ("train", "validation", "test") if dataset.has_split(name)
        },
    }
    tokenizer_vocab = dataset.meta.get("tokenizer", {}).get("vocab_size", model.vocab_size)
    if tokenizer_vocab > model.vocab_size:
        raise UserError(
            f"{run_dir / MODEL_FILE}: vocab_size: {model.vocab_size} is smaller than the dataset's tokenizer ({tokenizer_vocab})"
        )
    plan = plan_training(
        dataset.split("train"),
        start_token=train.start_train_token,
        min_tokens=train.min_train_tokens,
        microbatch_size=train.microbatch_size,
        context_length=model.context_length,
        accumulation_steps=train.gradient_accumulation_steps,
        world_size=world_size,
        source=source,
    )
    info["has_validation_split"] = dataset.has_split("validation")
    return info, plan


def plan_run(
    run_dir: Path,
    *,
    world_size: int = 1,
    datasets_dir: Optional[Path] = None,
    overrides: Optional[dict] = None,
    bench_file: Optional[Path] = None,
    mfu: Optional[float] = None,
) -> dict[str, Any]:
    """The dry-run plan of RUN_DIR on `world_size` GPUs, as JSON-ready data. Reads files only."""
    if world_size < 1:
        raise UserError(f"--world-size {world_size}: must be at least 1")
    if mfu is not None and not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu}: must be a fraction in (0, 1], e.g. 0.35")
    run_dir = Path(run_dir)
    config = load_run_config(run_dir, overrides)
    model, train = config.model, config.train
    bench = _bench_result(bench_file) if bench_file is not None else None
    dataset, batch_plan = _dataset_plan(config, run_dir, datasets_dir, world_size)
    global_batch = world_size * train.microbatch_size * train.gradient_accumulation_steps * model.context_length
    if batch_plan is not None:
        steps: Optional[int] = batch_plan.total_steps
    elif train.min_train_tokens == -1:
        steps = None  # every whole global batch of a dataset not yet downloaded
    else:
        steps = math.ceil(train.min_train_tokens / global_batch)
    tokens = steps * global_batch if steps is not None else None
    validates = train.validation_batches > 0 and dataset.get("has_validation_split", True)
    cadence = Cadence(steps, train.checkpoint_interval, train.validation_interval) if steps is not None else None
    checkpoints = cadence.checkpoints() if cadence is not None else None
    if cadence is None or not validates:
        validations = None if cadence is None else 0
    else:
        validations = cadence.validations()

    precision, precision_why = gpu_precision(train)
    counts = parameter_counts(model)
    flops = flops_per_token(model)
    memory = estimate_memory(model, train, precision, world_size)
    stated_mfu = mfu if mfu is not None else (bench.get("mfu") if bench and bench.get("mfu") else DEFAULT_MFU)
    mfu_source = (
        "--mfu"
        if mfu is not None
        else ("measured by the --bench file" if bench and bench.get("mfu") else "stated default")
    )
    bench_differs = _bench_differences(bench, config, precision) if bench else []
    cards = []
    for card in CARDS:
        peak = lookup_peak_tflops(card.device_name, precision)
        row: dict[str, Any] = {
            "card": card.name,
            "memory_bytes": card.memory_bytes,
            "fits": memory["total"] <= card.memory_bytes * USABLE_MEMORY_FRACTION,
            "peak_tflops": peak[0] if peak else None,
            "usd_per_gpu_hour": card.usd_per_hour,
        }
        per_gpu_tokens_per_second, basis = None, None
        if bench and lookup_peak_tflops(bench.get("device_name", ""), precision) == peak and peak is not None:
            per_gpu_tokens_per_second, basis = bench["tokens_per_second"], f"measured by --bench {bench_file}"
        elif peak is not None:
            per_gpu_tokens_per_second, basis = (
                stated_mfu * peak[0] * 1e12 / flops,
                f"{peak[1]} at MFU {stated_mfu:.2f} ({mfu_source})",
            )
        row["tokens_per_second"] = round(per_gpu_tokens_per_second * world_size) if per_gpu_tokens_per_second else None
        row["basis"] = basis
        if per_gpu_tokens_per_second and tokens is not None:
            hours = tokens / (per_gpu_tokens_per_second * world_size) / 3600
            row["hours"] = round(hours, 3)
            row["usd"] = round(hours * card.usd_per_hour * world_size, 2)
        else:
            row["hours"] = row["usd"] = None
        cards.append(row)
    return {
        "run_dir": str(run_dir),
        "world_size": world_size,
        "writes_nothing": True,
        "dataset": dataset,
        "steps": steps,
        "tokens": tokens,
        "global_batch_tokens": global_batch,
        "global_batch": {
            "world_size": world_size,
            "microbatch_size": train.microbatch_size,
            "gradient_accumulation_steps": train.gradient_accumulation_steps,
            "context_length": model.context_length,
        },
        "checkpoints": checkpoints,
        "checkpoint_interval": train.checkpoint_interval,
        "validations": validations,
        "validation_interval": train.validation_interval,
        "validation_batches": train.validation_batches,
        "parameters": asdict(counts),
        "flops_per_token": flops,
        "total_flops": flops * tokens if tokens is not None else None,
        "precision": precision,
        "precision_reason": precision_why,
        "memory_per_gpu": memory,
        "mfu": stated_mfu,
        "mfu_source": mfu_source,
        "bench_differs_in": bench_differs,
        "cards": cards,
    }


def _count(value: Optional[int]) -> str:
    return f"{value:,}" if value is not None else "unknown until the dataset is downloaded"


def format_plan(plan: dict[str, Any]) -> list[str]:
    """The plan as the lines `gptlab train --dry-run` prints."""
    batch = plan["global_batch"]
    memory = plan["memory_per_gpu"]
    params = plan["parameters"]
    lines = [
        f"Dry run of {plan['run_dir']} on {plan['world_size']} GPU(s); nothing is written.",
        f"  dataset      {plan['dataset']['dataset']}: {plan['dataset']['status']}",
    ]
    lines += [
        f"  global batch {plan['global_batch_tokens']:,} tokens = world {batch['world_size']} x microbatch {batch['microbatch_size']} "
        f"x accumulation {batch['gradient_accumulation_steps']} x context {batch['context_length']:,}",
        f"  steps        {_count(plan['steps'])}",
        f"  tokens       {_count(plan['tokens'])}",
        f"  checkpoints  {_count(plan['checkpoints'])}"
        + (
            f" (every {plan['checkpoint_interval']:,} steps from step 0, and the last)"
            if plan["checkpoint_interval"]
            else " (at the last step)"
        ),
        f"  validations  {_count(plan['validations'])}"
        + (f" of {plan['validation_batches']} microbatches" if plan["validations"] else ""),
        f"  parameters   {params['total']:,} ({params['matmul']:,} in matmuls per token)",
        f"  FLOPs        {plan['flops_per_token']:,} per token"
        + (f", {plan['total_flops']:.3e} in all" if plan["total_flops"] else ""),
        f"  precision    {plan['precision']} ({plan['precision_reason']})",
        f"  memory/GPU   {format_bytes(memory['total'])} estimated peak: weights {format_bytes(memory['weights'])}, gradients "
        f"{format_bytes(memory['gradients'])}, AdamW {format_bytes(memory['adamw_state'])}"
        + (
            f", autocast copies {format_bytes(memory['autocast_weight_copies'])}"
            if memory["autocast_weight_copies"]
            else ""
        )
        + (f", DDP buckets {format_bytes(memory['ddp_gradient_buckets'])}" if memory["ddp_gradient_buckets"] else "")
        + (
            f", FSDP gathered blocks {format_bytes(memory['fsdp_gathered_weights'])}"
            if memory.get("fsdp_gathered_weights")
            else ""
        )
        + f", activations {format_bytes(memory['activations'])}, output head {format_bytes(memory['output_head'])} (docs/planning.md)",
    ]
    if plan["bench_differs_in"]:
        lines.append(
            f"  warning      the --bench file measured a different {', '.join(plan['bench_differs_in'])}; its tokens/s may not hold"
        )
    lines.append(f"  {'card':<14} {'fits':<5} {'tokens/s':>12} {'time':>10} {'cost':>10}  basis")
    for row in plan["cards"]:
        time_text = f"{row['hours']:.1f} h" if row["hours"] is not None else "n/a"
        cost_text = f"${row['usd']:,.0f}" if row["usd"] is not None else "n/a"
        speed = f"{row['tokens_per_second']:,}" if row["tokens_per_second"] else "n/a"
        basis = (row["basis"] or "no datasheet peak") + f"; ${row['usd_per_gpu_hour']:.2f}/GPU-hour assumed"
        lines.append(
            f"  {row['card']:<14} {'yes' if row['fits'] else 'no':<5} {speed:>12} {time_text:>10} {cost_text:>10}  {basis}"
        )
    return lines
