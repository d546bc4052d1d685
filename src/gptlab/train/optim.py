"""AdamW parameter groups and learning-rate schedules.

Every schedule is a pure function of the step, so resuming needs only the step number.
"""

from __future__ import annotations

import math

import torch

from gptlab.config import TrainConfig

USERS_WARMUP_START_FACTOR = 1e-5  # the users' LinearLR start_factor
USERS_FINAL_FACTOR = 0.1  # the users' cosine eta_min = lr / 10


def parameter_groups(model: torch.nn.Module, weight_decay: float, which: str) -> list[dict]:
    """'all': one group, every parameter decayed (the ddp-base-model-from-scratch harness). 'matrices': decay only 2-D weight
    matrices that are not embeddings, as GPT-2 did; biases, LayerNorm parameters and embeddings are not."""
    parameters = list(dict(model.named_parameters()).items())  # a tied tensor appears once
    if which == "all":
        return [{"params": [p for _, p in parameters], "weight_decay": weight_decay}]
    embeddings = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    decayed = [p for _, p in parameters if p.dim() == 2 and id(p) not in embeddings]
    decayed_ids = {id(p) for p in decayed}
    kept = [p for _, p in parameters if id(p) not in decayed_ids]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    groups = parameter_groups(model, config.weight_decay, config.weight_decay_params)
    # The fused kernel is one pass over all parameters (on this 2-core CPU it was 4x faster than foreach), and
    # it can skip a step on the device, from a found_inf flag, without the host looking at the gradients.
    try:
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.betas, eps=config.eps, fused=True)
    except RuntimeError:  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.betas, eps=config.eps, foreach=True)


def warmup_steps_for(config: TrainConfig, total_steps: int) -> int:
    if config.warmup_steps is not None:
        return min(config.warmup_steps, total_steps)
    return int(total_steps * config.warmup_period_percent // 100)


def learning_rate_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """The learning rate used by optimizer step `step` (0-based) of `total_steps`."""
    peak = config.learning_rate
    warmup = warmup_steps_for(config, total_steps)
    schedule = config.effective_schedule
    if schedule == "users-cosine":
        # torch's SequentialLR(LinearLR(1e-5 -> 1 over warmup), CosineAnnealingLR(T_max=rest, eta_min=lr/10)).
        if step < warmup:
            return peak * (USERS_WARMUP_START_FACTOR + (1 - USERS_WARMUP_START_FACTOR) * step / warmup)
        floor = peak * USERS_FINAL_FACTOR
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (peak - floor) * (1 + math.cos(math.pi * progress)) / 2
    if step < warmup:
        return peak * (step + 1) / warmup
    floor = peak * config.min_lr_ratio
    last = total_steps - 1
    if schedule == "constant":
        return peak
    if schedule == "wsd":
        decay_steps = max(1, round(total_steps * config.decay_period_percent / 100))
        decay_start = max(warmup, last - decay_steps)
        if step <= decay_start:
            return peak
        return peak + (floor - peak) * (step - decay_start) / max(1, last - decay_start)
    progress = (step - warmup) / max(1, last - warmup)  # 0 after warm-up, 1 at the last step
    if schedule == "linear":
        return peak + (floor - peak) * progress
    if schedule == "cosine":
        return floor + (peak - floor) * (1 + math.cos(math.pi * progress)) / 2
    raise ValueError(f"unknown schedule {schedule}")


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
