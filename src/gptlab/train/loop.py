"""The training loop: setup -> fit (step, validate, checkpoint) -> summary.

Each optimizer step reads as a person would describe it: set the learning rate; run forward and
backward over the microbatches; unscale and measure the gradients; clip them; step, unless the loss
or a gradient is non-finite. The skip is decided on the device; every log_interval steps the step
values are read back at once and each step is recorded; then validate and checkpoint when due.
"""

from __future__ import annotations

import gc
import json
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from gptlab.config import RESUME_SAFE_TRAIN_KEYS, RunConfig, load_run_config, write_resolved_config
from gptlab.data.batches import BatchReader, plan_training
from gptlab.data.locate import locate_dataset
from gptlab.data.tokens import TokenDataset
from gptlab.errors import BadFile, UserError
from gptlab.evaluate.loss import EvalSlice, eval_slice_for, evaluate_batch_losses
from gptlab.files import atomic_write_text
from gptlab.model import parameter_counts
from gptlab.notify.events import CheckpointWritten, Failed, Finished, Started, Stopped
from gptlab.notify.training import TrainingNotifier
from gptlab.random_streams import init_with_streams
from gptlab.rundir import CHECKPOINTS, METRICS, MODEL_FILE, TRAIN_FILE, lock_run
from gptlab.runtime.checkpoint import (
    Checkpoint,
    find_checkpoint,
    find_resumable_checkpoint,
    gather_rng_states,
    initial_weights,
    list_checkpoints,
    not_checkpoints,
    remove_stale_checkpoint_staging,
    restore_rng_state,
    save_sharded_resume_state,
    set_aside_later_checkpoints,
    set_aside_leftovers,
    snapshot_checkpoint,
    step_of,
)
from gptlab.runtime.precision import (
    PrecisionChoice,
    choose_precision,
    clip_to_norm,
    configure_precision,
    global_grad_norm,
)
from gptlab.train import distributed, sharding
from gptlab.train.cadence import Cadence
from gptlab.train.charts import draw_run_charts
from gptlab.train.checkpoint_writer import CheckpointWriter
from gptlab.train.host import available_memory_bytes, keep_freed_memory_for_reuse
from gptlab.train.loggers import MetricLoggers
from gptlab.train.optim import build_optimizer, learning_rate_at, set_learning_rate
from gptlab.train.progress import (
    ESTIMATE_AFTER_STEPS,
    finish_summary,
    log_estimate,
    log_header,
    peak_memory,
    record_step,
    show_progress,
    show_validation,
)
from gptlab.train.record import IntervalStats, MetricsFile, RunLog, format_summary, progress_bar
from gptlab.train.routing import record_routing
from gptlab.train.state import RunningTotals, Training
from gptlab.weights import build_model, load_book_safetensors
from gptlab.words import counted


class TrainingStopped(UserError):
    """Training cannot usefully go on (too many non-finite steps in a row); the last checkpoint is kept."""

    exit_code = 3


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and every CUDA device), as the ddp-base-model-from-scratch harness seeds before building the model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _initial_weights(run_dir: Path, init_from: str) -> Path:
    """train.json's init_from -> a model.safetensors: the file itself, a checkpoint folder's, or a run's latest."""
    found = initial_weights(Path(init_from) if Path(init_from).is_absolute() else Path(run_dir) / init_from)
    if found is not None:
        return found
    raise UserError(
        f"{Path(run_dir) / TRAIN_FILE}: init_from: '{init_from}' is neither a model.safetensors, a checkpoint folder, nor a run with checkpoints"
    )


def _validation_slice(run_config: RunConfig, dataset: TokenDataset) -> Optional[EvalSlice]:
    train = run_config.train
    if train.validation_batches == 0 or not dataset.has_split("validation"):
        return None
    split = dataset.split("validation")
    full = eval_slice_for(
        split, "validation", train.start_val_token, train.microbatch_size, run_config.model.context_length
    )
    return EvalSlice(
        "validation",
        train.start_val_token,
        min(train.validation_batches, full.batches),
        full.batch_size,
        full.context_length,
    )


def setup(
    run_dir: Path,
    datasets_dir: Optional[Path] = None,
    overrides: Optional[dict] = None,
    resume: Optional[str] = None,
    show_progress: bool = True,
) -> Training:
    run_dir = Path(run_dir)
    run_config = load_run_config(run_dir, overrides)
    model_config, train_config = run_config.model, run_config.train
    dist_context = distributed.from_environment()
    notifier = TrainingNotifier.for_run(
        run_dir, train_config.notify, train_config.machine, dist_context.is_main, RunLog(run_dir).line
    )  # missing secrets fail here, on every rank
    device = distributed.pick_device(train_config.device, dist_context)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{run_dir / TRAIN_FILE}: device: 'cuda' was asked for but torch sees no CUDA device")
    if resume is None and list_checkpoints(run_dir):
        raise UserError(
            f"{run_dir}: already has checkpoints; continue it with `gptlab train {run_dir} --resume latest`, or train in a new run directory"
        )
    distributed.start(dist_context, device)

    # Rank 0 downloads a missing dataset; the others wait for it, then open the same files.
    if dist_context.is_main:
        dataset = locate_dataset(train_config.dataset, run_dir, datasets_dir)
    distributed.barrier(dist_context)
    if not dist_context.is_main:
        dataset = locate_dataset(train_config.dataset, run_dir, datasets_dir, download=False)
    plan = plan_training(
        dataset.split("train"),
        start_token=train_config.start_train_token,
        min_tokens=train_config.min_train_tokens,
        microbatch_size=train_config.microbatch_size,
        context_length=model_config.context_length,
        accumulation_steps=train_config.gradient_accumulation_steps,
        world_size=dist_context.world_size,
        source=str(run_dir / TRAIN_FILE),
    )
    if dataset.meta.get("tokenizer", {}).get("vocab_size", model_config.vocab_size) > model_config.vocab_size:
        raise UserError(
            f"{run_dir / MODEL_FILE}: vocab_size: {model_config.vocab_size} is smaller than the dataset's tokenizer ({dataset.meta['tokenizer']['vocab_size']})"
        )
    for name in ("train", "validation"):
        if name == "train" or (train_config.validation_batches > 0 and dataset.has_split(name)):
            dataset.split(name).check_vocabulary(model_config.vocab_size)

    if device.type == "cpu":
        keep_freed_memory_for_reuse()
    precision_choice = _choose_run_precision(run_dir, run_config, device, dist_context, resume)
    precision = configure_precision(precision_choice.name, device, str(run_dir / TRAIN_FILE))
    seed_everything(train_config.random_seed)
    fast_paths = train_config.fast_paths(device.type)
    _refuse_a_model_too_large(run_dir, model_config, device, fast_paths["pad_vocab_multiple"])
    model = build_model(
        model_config,
        "cpu" if train_config.random_streams else device,
        initialise=not train_config.random_streams,
        vocab_multiple=fast_paths["pad_vocab_multiple"],
        fused_loss=fast_paths["fused_cross_entropy"],
    )
    if train_config.random_streams:
        init_with_streams(model, train_config.random_seed)
        model = model.to(device)
    if train_config.init_from is not None and resume is None:
        load_book_safetensors(model, _initial_weights(run_dir, train_config.init_from))
    if train_config.activation_checkpointing:
        sharding.checkpoint_activations(model)
    if train_config.parallelism == "fsdp" and dist_context.active and precision.scaler is not None:
        precision = sharding.with_sharded_scaler(precision)  # fp16: every rank backs off on any rank's overflow
    trained_model = distributed.wrap(model, dist_context, device, train_config.parallelism, precision.name)
    optimizer = build_optimizer(model, train_config, device)  # after sharding: FSDP replaces the parameters
    if fast_paths["compile"]:
        trained_model = torch.compile(trained_model)
    log = RunLog(run_dir, enabled=dist_context.is_main)
    run = Training(
        run_dir=run_dir,
        config=run_config,
        dist=dist_context,
        device=device,
        dataset=dataset,
        model=model,
        trained_model=trained_model,
        optimizer=optimizer,
        precision=precision,
        precision_reason=precision_choice.reason,
        fast_paths=fast_paths,
        notifier=notifier,
        plan=plan,
        reader=BatchReader(dataset.split("train"), plan, device, vocab_size=model_config.vocab_size),
        validation=_validation_slice(run_config, dataset),
        log=log,
        metrics=MetricsFile(run_dir / METRICS, enabled=dist_context.is_main),
        show_progress=show_progress
        and dist_context.is_main
        and sys.stderr.isatty(),  # without a terminal, log lines instead
        dataset_fingerprint=dataset.fingerprint(),
    )
    if dist_context.is_main:
        remove_stale_checkpoint_staging(run_dir)
    if resume is not None:
        _restore(run, resume)
    moved = None
    if resume is None and dist_context.is_main:
        write_resolved_config(run_dir, run_config, dataset.directory)
        moved = set_aside_leftovers(run_dir)  # an earlier start stopped before its first checkpoint
    log_header(run)
    if moved is not None:
        aside, names = moved
        run.log.line(f"Moved {' and '.join(names)} of an earlier start without checkpoints to {aside}")
    if dist_context.is_main:
        run.loggers = MetricLoggers(train_config.loggers, run_dir, run_config, run.start_step, warn=run.log.line)
    return run


PARAMETER_BYTES = 16  # per parameter, in every precision: float32 weights and gradients, AdamW's two moments


def _refuse_a_model_too_large(run_dir: Path, config: Any, device: torch.device, vocab_multiple: int) -> None:
    """Refuse, before a byte is allocated, a model whose weights, gradients and AdamW state alone exceed the
    memory left on the device (the same parts `gptlab plan` counts; activations come on top), instead of
    building it for minutes and then being killed."""
    parameters = parameter_counts(config, vocab_multiple=vocab_multiple).total
    needed = parameters * PARAMETER_BYTES
    if device.type == "cuda":
        available, where = torch.cuda.mem_get_info(device)[0], f"free on {device}"
    else:
        available, where = available_memory_bytes(), "available on this machine"
    if available is not None and needed > available:
        raise UserError(
            f"{run_dir / MODEL_FILE}: the model's weights, gradients and AdamW state need {needed / 2**30:,.1f} GiB "
            f"({parameters:,} parameters x {PARAMETER_BYTES} bytes) but {available / 2**30:,.1f} GiB are {where}; "
            f"`gptlab train {run_dir} --dry-run` gives the whole estimate"
        )


def _choose_run_precision(
    run_dir: Path,
    run_config: RunConfig,
    device: torch.device,
    dist_context: distributed.Distributed,
    resume: Optional[str],
) -> PrecisionChoice:
    """train.json's precision for this machine; a resumed run keeps the one its checkpoint recorded when chosen automatically."""
    train = run_config.train
    chosen_per_machine = train.precision == "auto" or train.precision_is_default
    if resume is not None and chosen_per_machine:
        recorded = find_checkpoint(run_dir, resume).meta.get("precision")
        if recorded is not None:
            return PrecisionChoice(recorded, "as recorded by the checkpoint this run resumes from")
    choice = choose_precision(train, device, run_config.model.emb_dim)
    if choice.per_machine:  # every rank votes, whatever it chose: bf16 only where all ranks chose it
        bf16_everywhere = distributed.all_ranks_agree(choice.name == "bf16", dist_context, device)
        if choice.name == "bf16" and not bf16_everywhere:
            fallback = "fp16" if device.type == "cuda" else "fp32"
            return PrecisionChoice(
                fallback, f"not every rank chose bf16 (here: {choice.reason}), so all take {fallback}"
            )
    return choice


def _restore(run: Training, which: str) -> None:
    checkpoint = find_resumable_checkpoint(run.run_dir, which)
    saved = checkpoint.config
    current = run.config.to_json_dict()
    differing_model = sorted(key for key in current["model"] if saved["model"].get(key) != current["model"][key])
    if differing_model:
        raise UserError(
            f"{run.run_dir / MODEL_FILE}: differs from checkpoint {checkpoint.name} in {', '.join(differing_model)}; resume with the model it was trained with"
        )
    differing_train = sorted(key for key in current["train"] if saved["train"].get(key) != current["train"][key])
    unsafe = [key for key in differing_train if key not in RESUME_SAFE_TRAIN_KEYS]
    if unsafe == ["min_train_tokens"]:
        _check_extension(run, checkpoint, saved["train"]["min_train_tokens"])
        unsafe = []
    recorded = checkpoint.meta.get("dataset_fingerprint")
    if recorded is not None and recorded != run.dataset_fingerprint:
        raise UserError(
            f"{run.dataset.directory}: is not the dataset checkpoint {checkpoint.name} trained on (its fingerprint was "
            f"{recorded}, the folder's is now {run.dataset_fingerprint}: it was prepared again); resume only on the "
            "same tokens, or start a new run (init_from takes this run's weights)"
        )
    state = checkpoint.load_training_state()
    saved_world = _check_world_size(run, checkpoint, saved["train"], state)
    if unsafe == ["gradient_accumulation_steps"] and saved_world != run.dist.world_size:
        unsafe = []  # the same global batch on another world size: _check_world_size has allowed it
    if unsafe:
        raise UserError(
            f"{run.run_dir / TRAIN_FILE}: differs from checkpoint {checkpoint.name} in {', '.join(unsafe)}, which would change "
            f"what is trained; only {', '.join(sorted(RESUME_SAFE_TRAIN_KEYS))} may change on resume"
        )
    if checkpoint.sharded:  # every rank reads its part of the weights and AdamW state, at this world size
        checkpoint.load_resume_state(run.model, run.optimizer)
    elif sharding.is_sharded(run.model):  # every rank reads the full files and keeps its shards
        plain = sharding.plain_model(run.model)
        checkpoint.load_model(plain)
        sharding.load_full_weights(run.model, plain)
        sharding.load_full_optimizer_state(run.model, run.optimizer, checkpoint.optimizer_state())
    else:
        checkpoint.load_model(run.model)
        checkpoint.load_optimizer(run.optimizer)
    checkpoint.load_scaler(run.precision.scaler)
    run.start_step = int(state["step"]) + 1
    run.totals = RunningTotals.from_state(state["totals"])
    run.interval = IntervalStats.from_state(state["interval"]) if "interval" in state else IntervalStats()
    per_rank = state["rng"]
    restore_rng_state(per_rank[run.dist.rank % len(per_rank)] if isinstance(per_rank, list) else per_rank)
    aside = None
    if run.dist.is_main:
        aside = set_aside_later_checkpoints(run.run_dir, checkpoint)
        _truncate_metrics(run.run_dir / METRICS, last_step=int(state["step"]))
    run.log.line(
        f"Resuming from {checkpoint.name} at step {run.start_step}"
        + (f" (changed: {', '.join(differing_train)})" if differing_train else "")
    )
    ignored = not_checkpoints(run.run_dir)
    if ignored and run.dist.is_main:
        run.log.line(
            f"Note: ignored in {CHECKPOINTS}/, not named <UTC time>-iteration-<step> like a checkpoint: {', '.join(ignored)}"
        )
    if recorded is None:
        run.log.line(
            f"Note: {checkpoint.name} has no dataset fingerprint (written by an older gptlab), so the data could not "
            "be checked to be the tokens it trained on"
        )
    if aside is not None:
        run.log.line(
            f"Note: {checkpoint.name} is older than the run's newest checkpoint: this resume starts a new line of history; "
            f"the later checkpoints and the old {METRICS} were moved, not deleted, into {aside}"
        )


def _check_world_size(run: Training, checkpoint: Checkpoint, saved_train: dict[str, Any], state: dict[str, Any]) -> int:
    """The number of processes the checkpoint was trained on. Another number resumes only with the same global
    batch (processes x gradient_accumulation_steps), so that every step reads the same tokens and the schedule
    the same length; it is then said in train.log that the run is no longer bit-identical to an uninterrupted one."""
    saved_world = checkpoint.meta.get("world_size")
    if not isinstance(saved_world, int):  # written before meta.json recorded it: one RNG state per rank
        saved_world = len(state["rng"]) if isinstance(state["rng"], list) else 1
    world, accumulation = run.dist.world_size, run.config.train.gradient_accumulation_steps
    if saved_world == world:
        return saved_world
    saved_accumulation = saved_train.get("gradient_accumulation_steps", 1)
    microbatches = saved_world * saved_accumulation
    if world * accumulation != microbatches:
        how = (
            f"set gradient_accumulation_steps to {microbatches // world} (--set train.gradient_accumulation_steps={microbatches // world})"
            if microbatches % world == 0
            else f"resume on a number of processes that divides {microbatches}"
        )
        raise UserError(
            f"{run.run_dir / TRAIN_FILE}: gradient_accumulation_steps: checkpoint {checkpoint.name} trained on {saved_world} "
            f"processes x {saved_accumulation}, so {world} x {accumulation} would change the global batch and the tokens each "
            f"step reads; {how}, or resume on {saved_world} processes"
        )
    run.log.line(
        f"Note: resuming on {world} processes a run trained on {saved_world} (gradient_accumulation_steps {saved_accumulation} "
        f"-> {accumulation}): every step reads the same tokens, but gradients are summed in another order and the ranks' "
        "random streams (dropout) are not the ones they had, so the run is no longer bit-identical to an uninterrupted one"
    )
    return saved_world


def _check_extension(run: Training, checkpoint: Checkpoint, old_tokens: int) -> None:
    """A run resumed with another min_train_tokens (a finished run extended, say) continues only if every step
    already taken had the learning rate the new length gives it: a constant rate, a fixed warmup_steps, a
    'wsd' decay that had not begun. A schedule that spans the run's length would have had other rates, so
    the resume would not be the run it claims to be: refused, with init_from offered instead."""
    train = run.config.train
    done = step_of(checkpoint.path)
    before = plan_training(
        run.dataset.split("train"),
        start_token=train.start_train_token,
        min_tokens=old_tokens,
        microbatch_size=train.microbatch_size,
        context_length=run.config.model.context_length,
        accumulation_steps=train.gradient_accumulation_steps,
        world_size=run.dist.world_size,
        source=str(run.run_dir / TRAIN_FILE),
    ).total_steps
    old_train, now = train.model_copy(update={"min_train_tokens": old_tokens}), run.plan.total_steps
    where = f"{run.run_dir / TRAIN_FILE}: min_train_tokens: {old_tokens:,} -> {train.min_train_tokens:,} on resume"
    if now <= done:
        raise UserError(
            f"{where}: {counted(now, 'step')}, but {checkpoint.name} has already taken {counted(done + 1, 'step')}; "
            "resume with a larger value"
        )
    for step in range(done + 1):
        old_rate, new_rate = learning_rate_at(step, before, old_train), learning_rate_at(step, now, train)
        if old_rate != new_rate:
            raise UserError(
                f"{where}: the '{train.effective_schedule}' learning-rate schedule spans the run's length, so step "
                f"{step} would have had learning rate {new_rate:.4g}, not the {old_rate:.4g} it had; to train further, "
                f'start a new run from these weights with `"init_from": "{checkpoint.path}"` in its train.json '
                "(or use a constant schedule, fixed warmup_steps, or 'wsd' resumed before its decay)"
            )
    if run.dist.is_main:  # what the run trains with from here on (the resumed checkpoints record it too)
        write_resolved_config(run.run_dir, run.config, run.dataset.directory)
    run.log.line(
        f"Extending the run from {counted(before, 'step')} to {counted(now, 'step')} (min_train_tokens "
        f"{old_tokens:,} -> {train.min_train_tokens:,}): the steps already taken keep their learning rates"
    )


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records of steps after the checkpoint: the resumed run will record them again."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if number == len(lines):
                continue  # torn by a kill mid-append: it recorded a step after the checkpoint anyway
            raise BadFile(f"{path}: line {number} is not a JSON record; remove or repair it, then resume again")
        if record.get("step", -1) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def forward_backward(run: Training, step: int) -> torch.Tensor:
    """Loss of one optimizer step, averaged over its microbatches, with gradients accumulated.

    Each backward is of loss / accumulation steps, so the summed gradient is that of one large batch.
    """
    accumulation = run.plan.accumulation_steps
    loss_sum = torch.zeros((), device=run.device)
    for micro_step in range(accumulation):
        inputs, targets = run.reader.read(step, micro_step, run.dist.rank)
        with distributed.gradient_sync(run.trained_model, sync=micro_step == accumulation - 1):
            with run.precision.autocast():
                # router_loss: the mixture-of-experts balance and z-losses, when model.json asks for them
                loss, router_loss = run.trained_model(inputs, targets, with_router_loss=True)
                loss = loss / accumulation
            objective = loss if router_loss is None else loss + router_loss / accumulation
            scaled = run.precision.scaler.scale(objective) if run.precision.scaler is not None else objective
            scaled.backward()
        loss_sum += loss.detach()
    return loss_sum


def optimizer_step(run: Training, loss: torch.Tensor, stop_requested: bool = False) -> torch.Tensor:
    """Unscale, measure, clip, and apply the step unless the loss or a gradient is non-finite, all on the device.

    Returns the step's values as one device tensor [loss, grad norm, clipped, skipped, stop votes], read back
    by `read_back` every log_interval steps: with the fused optimizer nothing here waits for the device.
    The loss, the gradient norm and whether this process was asked to stop travel together in one
    all-reduce, so every rank computes the same values and takes the same decisions.
    """
    parameters = [p for group in run.optimizer.param_groups for p in group["params"]]
    scaler = run.precision.scaler
    if scaler is not None:
        scaler.unscale_(run.optimizer)
    sharded = sharding.is_sharded(run.trained_model)
    grad_norm = (sharding.global_grad_norm if sharded else global_grad_norm)(parameters).to(loss.device)
    # The gradient norm is already identical on every rank (DDP averaged the gradients, FSDP summed the shards'
    # squares); the loss is averaged for logging.
    shared = torch.stack([loss.float(), grad_norm.float(), torch.tensor(float(stop_requested), device=loss.device)])
    mean_loss, norm, stop_votes = distributed.mean_across_ranks(shared, run.dist)
    skipped = ~(torch.isfinite(mean_loss) & torch.isfinite(norm))
    max_norm = run.config.train.clipping_max_norm
    clipped = (norm > max_norm) & ~skipped if max_norm is not None else torch.zeros_like(skipped)
    if max_norm is not None:
        # a no-op below max_norm: the coefficient is clamped to 1
        (sharding.clip_to_norm if sharded else clip_to_norm)(parameters, max_norm, norm)
    if run.optimizer.defaults.get("fused"):
        run.optimizer.found_inf = skipped.float()  # the fused kernel leaves weights and moments alone when set
        run.optimizer.step()
    elif not bool(skipped):  # the one host synchronisation of this path
        run.optimizer.step()
    if scaler is not None:
        scaler.update()  # after unscale_ the scaler's only task left: lower its scale after an overflow
    run.optimizer.zero_grad(set_to_none=True)
    return torch.stack([mean_loss, norm, clipped.float(), skipped.float(), stop_votes])


def read_back(values: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Step values from the device, in one transfer (one host synchronisation for all of them)."""
    if not values:
        return []
    rows = torch.stack(values).tolist()
    return [
        {"loss": loss, "grad_norm": norm, "clipped": clipped > 0, "skipped": skipped > 0, "stop": stop > 0}
        for loss, norm, clipped, skipped, stop in rows
    ]


def validate(run: Training) -> Optional[float]:
    """Validation loss on the same batches every time; each rank takes every world_size-th batch."""
    if run.validation is None:
        return None
    started = time.perf_counter()
    # A sharded forward is a collective: every rank runs every batch (the sums below then count each world_size times).
    first, stride = (0, 1) if sharding.is_sharded(run.model) else (run.dist.rank, run.dist.world_size)
    batch_losses = evaluate_batch_losses(
        run.model,
        run.dataset.split("validation"),
        run.validation,
        run.precision,
        run.device,
        first=first,
        stride=stride,
    )
    total = torch.stack(
        [batch_losses.sum(), torch.tensor(float(batch_losses.numel()), dtype=torch.float64, device=run.device)]
    )
    loss_sum, count = (distributed.mean_across_ranks(total, run.dist) * run.dist.world_size).tolist()
    run.totals.validation_seconds += time.perf_counter() - started  # kept apart from train_seconds, as compile time is
    return loss_sum / count


def fit(run: Training) -> dict[str, Any]:
    """Train from `run.start_step` to the end, or until SIGTERM/SIGINT asks to stop (then checkpoint and return).

    Step values stay on the device and are read back every `log_interval` steps and before any
    validation or checkpoint; each is then recorded as its own metrics line.
    """
    train_config, plan, totals = run.config.train, run.plan, run.totals
    last_step = plan.total_steps - 1
    cadence = Cadence(plan.total_steps, train_config.checkpoint_interval, train_config.validation_interval)
    read_interval = run.fast_paths["log_interval"]
    bar = progress_bar(plan.total_steps, run.start_step, run.show_progress)
    stop_request = StopRequest()
    started = time.perf_counter()
    train_seconds_at_start = totals.train_seconds
    run.start_timed_steps = totals.timed_steps
    pending: list[tuple[int, float, float, torch.Tensor]] = []  # (step, learning rate, elapsed, device values)
    writer = CheckpointWriter(run.run_dir, train_config.keep_checkpoints, _saves_in_background(run))
    try:
        stop_request.install()
        for step in range(run.start_step, plan.total_steps):
            writer.poll()  # a background save that failed stops training here, with its one line
            step_clock = time.perf_counter()
            learning_rate = learning_rate_at(step, plan.total_steps, train_config)
            set_learning_rate(run.optimizer, learning_rate)
            loss = forward_backward(run, step)
            pending.append(
                (step, learning_rate, time.perf_counter() - started, optimizer_step(run, loss, stop_request.requested))
            )
            read_due = (
                cadence.checkpoint_due(step)
                or cadence.validation_due(step, checkpoint_due=False)
                or (step + 1 - run.start_step) % read_interval == 0
            )
            outcomes = read_back([values for *_, values in pending]) if read_due else []
            if run.fast_paths["compile"] and totals.compile_seconds is None:
                totals.compile_seconds = time.perf_counter() - step_clock  # the first step compiles; kept apart
            else:
                totals.train_seconds += time.perf_counter() - step_clock
                totals.timed_steps += 1
            bar.update(1)
            if not read_due:
                continue

            for (recorded_step, rate, elapsed, _), outcome in zip(pending, outcomes):
                record_step(run, recorded_step, rate, outcome, elapsed)
                if totals.consecutive_skipped >= train_config.max_consecutive_skipped_steps:
                    run.metrics.flush()
                    raise TrainingStopped(
                        f"{run.run_dir}: stopped at step {recorded_step}: {totals.consecutive_skipped} steps in a row had non-finite gradients or loss "
                        f"(max_consecutive_skipped_steps = {train_config.max_consecutive_skipped_steps}); the last checkpoint is untouched. "
                        f"Try a lower learning_rate, clipping_max_norm, or precision 'bf16'"
                    )
            pending = []
            record_routing(run, step)
            stop = any(outcome["stop"] for outcome in outcomes)
            show_progress(run, bar, step, learning_rate, outcomes[-1], train_seconds_at_start)
            if run.start_step + ESTIMATE_AFTER_STEPS <= step < run.start_step + ESTIMATE_AFTER_STEPS + read_interval:
                run.notifier.started(_started_event(run, log_estimate(run, step, train_seconds_at_start)))

            checkpoint_due = cadence.checkpoint_due(step, stop)
            validation_due = cadence.validation_due(step, checkpoint_due)
            if validation_due:
                totals.last_validation_loss = validate(run)
                if totals.last_validation_loss is not None:
                    run.metrics.annotate_last(validation_loss=totals.last_validation_loss)
                    show_validation(run, step, totals.last_validation_loss)
            if checkpoint_due:
                _checkpoint(run, step, learning_rate, writer)
            run.metrics.flush()
            if checkpoint_due:
                _redraw_charts(run, final=step == last_step or stop)
            if stop and step != last_step:
                _wait_for_saves(run, writer)  # the checkpoint just taken, and so the resume, are on disk
                run.log.line(
                    f"Stopped by {stop_request.signal_name or 'another rank'} after step {step}; checkpoint written. "
                    f"Resume with: gptlab train {run.run_dir} --resume latest"
                )
                return {"interrupted": True, "stopped_after_step": step, "signal": stop_request.signal_name}
        _wait_for_saves(run, writer)
    except KeyboardInterrupt:  # a second Ctrl-C: at once, without waiting for a save in flight
        raise
    except BaseException:
        failed_too = writer.wait_quietly()  # a save in flight is finished and kept; the first failure is reported
        if failed_too is not None:
            run.log.line(f"The checkpoint being written failed as well: {str(failed_too).splitlines()[0]}")
        raise
    finally:
        stop_request.restore()
        bar.close()
        run.metrics.flush()
    return finish_summary(run)


def _saves_in_background(run: Training) -> bool:
    """train.json's background_checkpoints; absent: on, but a sharded (FSDP) run writes what it gathered at once."""
    chosen = run.config.train.background_checkpoints
    return chosen if chosen is not None else not sharding.is_sharded(run.model)


def _wait_for_saves(run: Training, writer: CheckpointWriter) -> None:
    """Wait for the save in flight (counted as time the loop was blocked by checkpoints)."""
    started = time.perf_counter()
    writer.wait()
    run.totals.checkpoint_blocked_seconds += time.perf_counter() - started


def _started_event(run: Training, estimate: str) -> Started:
    return Started(
        start_step=run.start_step,
        total_steps=run.plan.total_steps,
        global_batch_tokens=run.plan.global_batch_tokens,
        parameters=run.model.parameter_count(),
        precision=run.precision.name,
        world_size=run.dist.world_size,
        device_type=run.device.type,
        estimate=estimate,
    )


def _checkpoint_event(run: Training, step: int) -> CheckpointWritten:
    totals, cost_per_hour = run.totals, run.config.train.cost_per_hour
    seconds = totals.train_seconds
    return CheckpointWritten(
        step=step,
        total_steps=run.plan.total_steps,
        train_loss=totals.last_train_loss,
        validation_loss=totals.last_validation_loss,
        tokens_per_second=totals.timed_steps * run.plan.global_batch_tokens / seconds if seconds > 0 else None,
        cost_so_far=seconds / 3600 * cost_per_hour if cost_per_hour is not None else None,
    )


CHART_SECONDS = 30.0  # charts are redrawn at a checkpoint at most this often (and always at the end)


def _redraw_charts(run: Training, final: bool) -> None:
    """loss-chart.png, grad-norm-chart.png and learning-rate-chart.png in the run directory, as the ddp-base-model-from-scratch harness drew them.

    Drawing takes about a second; with checkpoints every few seconds it would cost more than training,
    so it is rate-limited, and drawn whole at the end."""
    if not run.dist.is_main or (not final and time.perf_counter() - run.charts_drawn_at < CHART_SECONDS):
        return
    draw_run_charts(run.run_dir)
    run.charts_drawn_at = time.perf_counter()


class StopRequest:
    """SIGTERM or SIGINT asks the loop to finish the current step, checkpoint and exit cleanly (cloud
    preemption); a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _checkpoint(run: Training, step: int, learning_rate: float, writer: CheckpointWriter) -> None:
    """Take the checkpoint of `step`: the state is copied to the host and handed to `writer` (every rank takes
    part in the collectives; only rank 0 writes). The time until training can go on is the time the loop was
    blocked by it, a save still in flight included."""
    blocked_since = time.perf_counter()
    train_config, totals = run.config.train, run.totals
    stats = run.interval.summary(clipping=train_config.clipping_max_norm is not None)
    by_validation = train_config.best_by == "validation" and totals.last_validation_loss is not None
    metric = totals.last_validation_loss if by_validation else stats["avg_train_loss"]
    is_best = metric is not None and (totals.best_metric is None or metric < totals.best_metric)
    if is_best:
        totals.best_metric = metric
    run.interval = IntervalStats()
    rng_per_rank = gather_rng_states(run.dist)  # a collective: every rank takes part
    model, resume_state = run.model, None
    if sharding.is_sharded(run.model):  # collectives too: each rank writes its shards; the full weights to rank 0
        resume_state = save_sharded_resume_state(run.run_dir, step, run.model, run.optimizer, run.dist.is_main)
        model = sharding.gathered_model(run.model, run.dist.rank)
    if run.dist.is_main:
        meta = {
            "learning_rate": learning_rate,
            **stats,
            "global_step": step,
            "validation_loss": totals.last_validation_loss,
            "best_by": "validation" if by_validation else "train",
            "tokens_seen": (step + 1) * run.plan.global_batch_tokens,
            "skipped_steps": totals.skipped_steps,
            "clipped_steps": totals.clipped_steps,
            "peak_learning_rate": totals.peak_learning_rate,
            "precision": run.precision.name,
            "schedule": train_config.effective_schedule,
            "peak_memory_bytes": peak_memory(run.device),
            "torch_version": torch.__version__,
            "effective_config": run.config.to_json_dict(),
            "dataset_fingerprint": run.dataset_fingerprint,
            "world_size": run.dist.world_size,
        }
        if run.last_routing is not None:
            meta["routing"] = run.last_routing
        training_state = {
            "step": step,
            "totals": totals.to_state(),
            "interval": run.interval.to_state(),
            "rng": rng_per_rank,
        }
        event = _checkpoint_event(run, step)
        writer.wait()  # one save at most in flight, so one snapshot at most in host memory
        snapshot_started = time.perf_counter()
        snapshot = snapshot_checkpoint(
            step,
            model,
            run.optimizer,
            run.precision.scaler,
            training_state,
            meta,
            run.config.to_json_dict(),
            is_best,
            resume_state=resume_state,
            copy=writer.background,
        )

        def written(seconds: float) -> None:  # called once the checkpoint is on disk, `latest` moved and pruned
            totals.checkpoint_save_seconds += seconds
            run.notifier.checkpoint(event)

        writer.save(snapshot, time.perf_counter() - snapshot_started, on_written=written)
        del snapshot
    distributed.barrier(run.dist)  # after the snapshot: no rank waits for the background write
    totals.checkpoint_blocked_seconds += time.perf_counter() - blocked_since


def train_run(
    run_dir: Path,
    datasets_dir: Optional[Path] = None,
    overrides: Optional[dict] = None,
    resume: Optional[str] = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train the run in `run_dir` from its model.json and train.json; returns the summary."""
    with lock_run(run_dir, "gptlab train" + (f" --resume {resume}" if resume is not None else "")):
        return _train_locked(run_dir, datasets_dir, overrides, resume, show_progress)


def _train_locked(
    run_dir: Path,
    datasets_dir: Optional[Path],
    overrides: Optional[dict],
    resume: Optional[str],
    show_progress: bool,
) -> dict[str, Any]:
    try:
        run = setup(run_dir, datasets_dir, overrides, resume, show_progress)
        try:
            result = fit(run)
        except BaseException as error:
            run.notifier.failed(Failed(error, gave_up=isinstance(error, TrainingStopped)))
            raise
        finally:
            run.loggers.close()  # after a stop or a failure; after the last step finish_summary has finished them
        if result.get("interrupted"):
            run.notifier.stopped(Stopped(result["stopped_after_step"], result.get("signal") or "another rank"))
        else:
            run.notifier.finished(Finished(format_summary(result)))
        # Every rank leaves together: a rank that tears gloo down while another still works with it can abort
        # ("terminate called without an active exception"). Only after success: after a failure it could hang.
        distributed.barrier(run.dist)
        return result
    finally:
        # The DDP wrapper (its reducer holds gloo work) goes before the process group it uses: destroyed
        # after it, at interpreter exit, it could abort the process.
        run = None
        gc.collect()
        distributed.stop()
