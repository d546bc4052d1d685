"""Sampling text: the users' smoke test (top-k, then temperature, then a multinomial draw)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from gptlab.model import GPT
from gptlab.rundir import DEFAULT_CHECKPOINT


@torch.no_grad()
def generate_tokens(
    model: GPT,
    prompt_ids: list[int],
    new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = 25,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
) -> list[int]:
    """Extend `prompt_ids` by `new_tokens` tokens. Temperature 0 is greedy decoding."""
    was_training = model.training
    model.eval()
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    context = model.config.context_length
    try:
        for _ in range(new_tokens):
            logits = model(ids[:, -context:])[:, -1, :].float()  # (1, V)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                if top_k is not None and top_k < logits.shape[-1]:
                    kth_largest = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth_largest, float("-inf"))
                probabilities = torch.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probabilities.cpu(), 1, generator=generator).to(ids.device)
            ids = torch.cat([ids, next_id], dim=1)
    finally:
        model.train(was_training)
    return ids[0].tolist()


DEFAULT_PROMPT = "Every effort moves you"


def generate_from_run(
    run_dir,
    prompt: str = DEFAULT_PROMPT,
    new_tokens: int = 20,
    temperature: float = 1.0,
    top_k: Optional[int] = 25,
    seed: Optional[int] = None,
    checkpoint: str = DEFAULT_CHECKPOINT,
) -> dict:
    """The users' smoke test on a run's checkpoint; with a seed the text is the same every time."""
    from gptlab.errors import UserError
    from gptlab.runtime.runs import open_trained_run
    from gptlab.tokenizer import decode, encode

    if not (math.isfinite(temperature) and temperature >= 0):
        raise UserError(f"--temperature: {temperature} is not allowed: use 0 (greedy) or a positive finite number")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k: {top_k} is not allowed: use a positive number of candidates")
    if new_tokens < 0:
        raise UserError(f"--max-new-tokens: {new_tokens} is not allowed: use 0 or more")
    trained = open_trained_run(run_dir, checkpoint)
    prompt_ids = encode(prompt)
    if not prompt_ids:
        raise UserError("--prompt: empty; give at least one character of text")
    vocab_size = trained.config.model.vocab_size
    if max(prompt_ids) >= vocab_size:
        raise UserError(
            f"--prompt: its GPT-2 token id {max(prompt_ids)} is outside this model's vocabulary [0, {vocab_size}) "
            f"(model.json vocab_size); use text whose tokens the model knows"
        )
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ids = generate_tokens(trained.model, prompt_ids, new_tokens, temperature, top_k, generator)
    return {
        "run": str(run_dir),
        "checkpoint": trained.checkpoint.name,
        "prompt": prompt,
        "text": decode(ids),
        "token_ids": ids,
        "temperature": temperature,
        "top_k": top_k,
        "seed": seed,
    }
