"""A faithful, minimal replica of the users' current training harness (shared/USERS-FILES.md), built on the
real book `GPTModel` from the llms-from-scratch package, used as the reference gptlab must reproduce. Their
model.json and train.json are `gptlab.presets.USERS_MODEL` and `USERS_TRAIN`."""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from llms_from_scratch.ch04 import GPTModel
from safetensors.torch import load_file
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


def users_harness_losses(dataset_dir, model_config: dict, train_config: dict, world_size: int = 1) -> list[float]:
    """Per-step mean training loss of the users' harness in fp32 (use_amp false), on one process."""
    seed = train_config.get("random_seed", 42)
    random.seed(seed)
    torch.manual_seed(seed)
    model = GPTModel(model_config)
    if model_config.get("tie_weights"):
        model.out_head.weight = model.tok_emb.weight
    model.train()
    learning_rate = train_config.get("learning_rate", 0.0004)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, weight_decay=train_config.get("weight_decay", 0.1)
    )

    microbatch, context = train_config["microbatch_size"], model_config["context_length"]
    accumulation = train_config.get("gradient_accumulation_steps", 1)
    global_batch = world_size * microbatch * accumulation * context
    start = train_config.get("start_train_token", 0)
    tokens = load_file(f"{dataset_dir}/train.safetensors")["tokens"].to(torch.int64)
    wanted = train_config["min_train_tokens"]
    count = (
        (len(tokens) - start - 1) // global_batch if wanted == -1 else math.ceil(wanted / global_batch)
    ) * global_batch
    window = tokens[start : start + count + 1]
    inputs = window[:-1].reshape(-1, microbatch, context)
    targets = window[1:].reshape(-1, microbatch, context)
    total_steps = len(inputs) // world_size // accumulation

    scheduler = None
    if train_config.get("schedule_learning_rate"):
        warmup = total_steps * train_config.get("warmup_period_percent", 0) // 100
        scheduler = SequentialLR(
            optimizer,
            [
                LinearLR(optimizer, start_factor=1e-5, end_factor=1.0, total_iters=warmup),
                CosineAnnealingLR(optimizer, T_max=total_steps - warmup, eta_min=learning_rate / 10),
            ],
            milestones=[warmup],
        )

    losses = []
    for step in range(total_steps):
        step_loss = 0.0
        for micro in range(accumulation):
            item = (step * accumulation + micro) * world_size + 0
            logits = model(inputs[item])
            loss = F.cross_entropy(logits.flatten(0, 1), targets[item].flatten()) / accumulation
            loss.backward()
            step_loss += loss.item()
        max_norm = train_config.get("clipping_max_norm")
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
            optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        losses.append(step_loss)
    return losses
