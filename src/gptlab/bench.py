"""Timing training steps of a run's real configuration on synthetic tokens."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from gptlab.config import ModelConfig, TrainConfig
from gptlab.train.host import keep_freed_memory_for_reuse
from gptlab.train.optim import build_optimizer
from gptlab.train.precision import configure_precision
from gptlab.weights import build_model


def seconds_per_step(model_config: ModelConfig, train_config: TrainConfig, steps: int = 3, warmup_steps: int = 1,
                     device: torch.device | str = "cpu") -> float:
    """Mean wall time of one optimizer step (all microbatches) after `warmup_steps` untimed ones."""
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory_for_reuse()
    precision = configure_precision(train_config.effective_precision, device)
    model = build_model(model_config.model_copy(update={"init": "gpt2"}), device)
    optimizer = build_optimizer(model, train_config, device)
    generator = torch.Generator().manual_seed(0)
    shape = (train_config.microbatch_size, model_config.context_length)
    inputs = torch.randint(0, model_config.vocab_size, shape, generator=generator).to(device)
    targets = torch.randint(0, model_config.vocab_size, shape, generator=generator).to(device)
    elapsed = 0.0
    for step in range(warmup_steps + steps):
        started = time.perf_counter()
        for _ in range(train_config.gradient_accumulation_steps):
            with precision.autocast():
                logits = model(inputs)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()) / train_config.gradient_accumulation_steps
            (precision.scaler.scale(loss) if precision.scaler is not None else loss).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup_steps:
            elapsed += time.perf_counter() - started
    return elapsed / steps
