"""The model card (`README.md`) of an export: what the model is, what it saw, how well it does, how to load it.

Every fact comes from the run's own files (resolved config, checkpoint meta, summary.json) or from an
evaluation and sample made at export time; anything the run did not record is written as "not recorded".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from gptlab.config import RunConfig

NOT_RECORDED = "not recorded"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class CardFacts:
    config: RunConfig
    checkpoint_name: str
    checkpoint_meta: dict[str, Any]
    parameters: int
    summary: Optional[dict[str, Any]]  # RUN_DIR/summary.json, when training finished under gptlab
    eval_result: Optional[dict[str, Any]]  # as `gptlab eval --json` prints it
    sample_prompt: str
    sample_text: str
    sample_seed: int
    repo_id: Optional[str] = None


def _number(value: Any, digits: int = 0) -> str:
    if value is None:
        return NOT_RECORDED
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _summary_value(facts: CardFacts, key: str) -> Any:
    return facts.summary.get(key) if facts.summary else None


def _hardware(facts: CardFacts) -> str:
    summary = facts.summary or {}
    parts = []
    if summary.get("machine"):
        parts.append(str(summary["machine"]))
    device_name = (summary.get("environment") or {}).get("device_name")
    if summary.get("device"):
        parts.append(f"device {summary['device']}" + (f" ({device_name})" if device_name else ""))
    if summary.get("world_size"):
        parts.append(f"{summary['world_size']} process(es)")
    return ", ".join(parts) or NOT_RECORDED


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return NOT_RECORDED
    hours, rest = divmod(float(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{int(hours)} h " if hours else "") + (f"{int(minutes)} min " if hours or minutes else "") + f"{secs:.0f} s"


def _test_loss(facts: CardFacts) -> str:
    result = facts.eval_result
    if not result or result.get("loss") is None:
        return f"{NOT_RECORDED} (run `gptlab eval --save` on this checkpoint, or give `--eval-result` or `--evaluate` to `gptlab export`)"
    where = (f"{result.get('split', '?')} split, {_number(result.get('tokens'))} tokens from token {_number(result.get('start_token'))}, "
             f"batch size {result.get('batch_size', '?')}, {result.get('precision', '?')}")
    return f"{result['loss']:.4f} nats per token (mean cross-entropy; {where}; dataset `{result.get('dataset', '?')}`)"


def _front_matter(facts: CardFacts) -> str:
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- gpt2", "- gptlab", "- text-generation"]
    if _HUB_ID.match(facts.config.train.dataset):
        lines += ["datasets:", f"- {facts.config.train.dataset}"]
    return "\n".join(lines + ["---"])


def model_card(facts: CardFacts) -> str:
    model, train = facts.config.model, facts.config.train
    meta = facts.checkpoint_meta or {}
    imported_from = meta.get("imported_from")
    tokens_seen = meta.get("tokens_seen", _summary_value(facts, "tokens_seen"))
    zero_biases = 0 if model.qkv_bias else 3 * model.emb_dim * model.n_layers
    name = facts.repo_id or "path/to/this/folder"
    max_new = max(1, min(20, model.context_length - 5))
    summary = facts.summary or {}
    cost = summary.get("cost")
    cost_text = f"${cost:,.2f} at ${summary.get('cost_per_hour')}/hour" if cost is not None else NOT_RECORDED
    origin = (f"Weights imported from `{imported_from}` with `gptlab import-hf`; their training was not recorded by gptlab."
              if imported_from else f"Trained from scratch with gptlab (checkpoint `{facts.checkpoint_name}`).")
    architecture = [
        "| | |", "|---|---|",
        "| architecture | GPT-2 (`GPT2LMHeadModel`): pre-LayerNorm decoder, learned positions, tanh GELU |",
        f"| parameters | {facts.parameters:,}" + (f" (+ {zero_biases:,} zero-valued Q/K/V biases that GPT-2's format requires)" if zero_biases else "") + " |",
        f"| layers / width / heads | {model.n_layers} / {model.emb_dim} / {model.n_heads} |",
        f"| context length | {model.context_length} tokens |",
        f"| vocabulary | {model.vocab_size:,} (GPT-2 byte-pair encoding) |",
        f"| output head | {'tied to the token embedding' if model.tie_weights else 'untied (`tie_word_embeddings: false`)'} |",
        f"| Q/K/V bias | {'yes' if model.qkv_bias else 'no (stored as zeros)'} |",
        f"| dropout (training) | {model.drop_rate} |",
    ]
    training = [
        "| | |", "|---|---|",
        f"| data | `{train.dataset}`" + (" (the dataset given at import; not the training data)" if imported_from else "") + " |",
        f"| tokens seen | {_number(tokens_seen) if not imported_from else NOT_RECORDED} |",
        f"| steps | {_number(meta.get('global_step') + 1) if isinstance(meta.get('global_step'), int) and not imported_from else NOT_RECORDED} |",
        f"| precision | {meta.get('precision') or _summary_value(facts, 'precision') or NOT_RECORDED} |",
        f"| final train loss | {_number(_summary_value(facts, 'final_train_loss'), 4)} |",
        f"| final validation loss | {_number(_summary_value(facts, 'final_validation_loss'), 4)} |",
        f"| hardware | {_hardware(facts)} |",
        f"| training time | {_duration(_summary_value(facts, 'training_seconds'))} |",
        f"| throughput | {_number(_summary_value(facts, 'tokens_per_second'))} tokens/s |" if summary.get("tokens_per_second") else f"| throughput | {NOT_RECORDED} |",
        f"| cost | {cost_text} |",
    ]
    config_json = json.dumps(facts.config.to_json_dict(), indent=2)
    longest_run = max((len(run) for run in re.findall(r"`+", facts.sample_text)), default=0)
    fence = "`" * max(3, longest_run + 1)  # generated text cannot close the code block early
    parts = [
        _front_matter(facts),
        "",
        f"# GPT-2 style model ({facts.parameters / 1e6:,.1f}M parameters)",
        "",
        origin + " It is a standard `transformers` GPT-2: it loads with `AutoModelForCausalLM` and needs no `trust_remote_code`.",
        "",
        "## Architecture", "", *architecture, "",
        "## Training", "", *training, "",
        "Time, throughput and cost are for the whole training run (summary.json); tokens seen are up to the exported checkpoint.",
        "",
        "## Evaluation", "", f"Test loss: {_test_loss(facts)}", "",
        "## Sample", "",
        f"The smoke test: prompt {json.dumps(facts.sample_prompt)}, 20 new tokens, top-k 25, temperature 1.0, seed {facts.sample_seed} "
        f"(`gptlab generate RUN_DIR --seed {facts.sample_seed} --checkpoint {facts.checkpoint_name}` gives the same text):",
        "", fence + "text", facts.sample_text, fence, "",
        "## Usage", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        f'inputs = tokenizer({json.dumps(facts.sample_prompt)}, return_tensors="pt")',
        f"output = model.generate(**inputs, max_new_tokens={max_new}, do_sample=True, top_k=25, temperature=1.0)",
        "print(tokenizer.decode(output[0]))",
        "```",
        "",
        f"Prompt plus new tokens must fit the context length ({model.context_length}); gptlab's own sampler slides the window, `transformers` does not.",
        "",
        "## Effective configuration", "",
        "The run's `model.json` and `train.json` after defaults" + (" (the training keys are placeholders written at import)" if imported_from else "") + ":",
        "", "```json", config_json, "```", "",
    ]
    return "\n".join(parts)
