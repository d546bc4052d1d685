"""The model card (`README.md`) of an export: what the model is, what it saw, how well it does, how to load it.

Every fact comes from the run's own files (resolved config, checkpoint meta, summary.json) or from an
evaluation and sample made at export time; anything the run did not record is written as "not recorded".
The metadata block is huggingface_hub's `ModelCardData` (license, language, datasets, tags, and a
`model-index` with the test loss), so the Hub validates and indexes it. No local path reaches the card: a
dataset that is not a Hub id is named by its folder's name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePath
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
    license: Optional[str] = None  # a Hub license id (mit, apache-2.0, ...), as `--license` gives it
    language: Optional[str] = "en"  # GPT-2's byte-pair encoding was made for English text
    hellaswag: Optional[dict[str, Any]] = None  # as `gptlab eval --task hellaswag --save` wrote it, of this checkpoint
    dataset_is_local: Optional[bool] = None  # train.json's dataset is a folder here; None: judged by its shape alone

    @property
    def hub_dataset(self) -> Optional[str]:
        """The training data's Hub id, only when it came from the Hub (a local folder named like an id does not)."""
        dataset = self.config.train.dataset
        from_hub = _HUB_ID.match(dataset) and public_dataset(dataset) == dataset and not self.dataset_is_local
        return dataset if from_hub else None

    task_lines: tuple[str, ...] = ()  # other evaluation tasks' lines (gptlab.evaluate.tasks.card_lines)


def default_new_tokens(context_length: int) -> int:
    """The export's generate() length: 20 new tokens (transformers' own default), fewer in a tiny context."""
    return max(1, min(20, context_length - 5))


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
    return (
        (f"{int(hours)} h " if hours else "") + (f"{int(minutes)} min " if hours or minutes else "") + f"{secs:.0f} s"
    )


def _test_loss(facts: CardFacts) -> str:
    result = facts.eval_result
    if not result or result.get("loss") is None:
        return f"{NOT_RECORDED} (run `gptlab eval --save` on this checkpoint, or give `--eval-result` or `--evaluate` to `gptlab export`)"
    where = (
        f"{result.get('split', '?')} split, {_number(result.get('tokens'))} tokens from token {_number(result.get('start_token'))}, "
        f"batch size {result.get('batch_size', '?')}, {result.get('precision', '?')}"
    )
    return f"{result['loss']:.4f} nats per token (mean cross-entropy; {where}; dataset `{public_dataset(result.get('dataset')) or '?'}`)"


def _hellaswag_items(result: dict[str, Any]) -> str:
    """Which items were scored, without a local path: the file's name and hash, and how many of its items."""
    first = "the first " if result.get("limit") is not None else ""
    return f"{first}{result.get('items', 0):,} items of `{PurePath(str(result.get('file'))).name}` (sha256 {str(result.get('file_sha256'))[:12]})"


def _hellaswag_set(result: dict[str, Any]) -> str:
    """Which set the items are: the official validation set only when the file is known to be it."""
    from gptlab.evaluate.hellaswag import official_validation

    known_by = official_validation(result)
    if known_by == "sha256":
        return "the official HellaSwag validation set (its file's sha256)"
    if known_by:
        return (
            "the official HellaSwag validation set by file name and item count (10,042); the check of the file's "
            "sha256 is pending"
        )
    return "not the official HellaSwag validation set"


def _hellaswag(facts: CardFacts) -> str:
    result = facts.hellaswag
    return (
        f"acc_norm {result['acc_norm']:.4f}, acc {result['acc']:.4f} (zero-shot; acc_norm picks the ending with the lowest "
        f"mean loss per token, acc the lowest summed loss; {_hellaswag_items(result)}: {_hellaswag_set(result)}; "
        f"{result.get('precision', '?')})"
    )


def public_dataset(dataset: Optional[str]) -> Optional[str]:
    """A Hub dataset id as it is; a local folder by its name only (the card never shows a local path)."""
    if not dataset:
        return dataset
    return (
        dataset
        if _HUB_ID.match(dataset) and not PurePath(dataset).is_absolute() and ".." not in dataset
        else PurePath(dataset).name
    )


def _public_config(facts: CardFacts) -> dict[str, Any]:
    config = facts.config.to_json_dict()
    config["train"]["dataset"] = public_dataset(config["train"].get("dataset"))
    if config["train"].get("init_from"):
        config["train"]["init_from"] = PurePath(config["train"]["init_from"]).name
    return config


def card_data(facts: CardFacts) -> Any:
    """The card's metadata: what the Hub reads to list, filter and rank the model."""
    from huggingface_hub import EvalResult, ModelCardData

    from gptlab.evaluate.hellaswag import official_validation

    dataset = facts.config.train.dataset
    hub_dataset = facts.hub_dataset
    eval_results = None
    result = facts.eval_result
    if result and result.get("loss") is not None:
        evaluated_on = public_dataset(result.get("dataset")) or public_dataset(dataset)
        if hub_dataset and str(result.get("dataset") or hub_dataset).endswith(hub_dataset):
            evaluated_on = hub_dataset  # the Hub dataset's download folder: named by its id
        eval_results = [
            EvalResult(
                task_type="text-generation",
                task_name="Causal language modeling",
                dataset_type=evaluated_on if evaluated_on == hub_dataset else "local",  # a folder is no Hub id
                dataset_name=evaluated_on,
                dataset_split=result.get("split", "test"),
                metric_type="loss",
                metric_name=f"{result.get('split', 'test')} loss (nats per token)",
                metric_value=round(float(result["loss"]), 4),
            )
        ]
    hellaswag = facts.hellaswag
    if hellaswag and hellaswag.get("acc_norm") is not None and official_validation(hellaswag):
        # indexed against the Hub's copy only when the items are the official validation set; otherwise the card's
        # text names the file and its item count
        split = {"val": "validation", "train": "train"}.get(str(hellaswag.get("split")), "validation")
        eval_results = (eval_results or []) + [
            EvalResult(
                task_type="text-generation",
                task_name="Text Generation",
                dataset_type="Rowan/hellaswag",  # the Hub's copy of the same items
                dataset_name="HellaSwag",
                dataset_split=split,
                dataset_args={"num_few_shot": 0},
                metric_type=metric,
                metric_name=f"{metric} ({_hellaswag_items(hellaswag)})",
                metric_value=round(float(hellaswag[metric]), 4),
            )
            for metric in ("acc_norm", "acc")
        ]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        license=facts.license,
        language=facts.language,
        datasets=[hub_dataset] if hub_dataset else None,
        tags=["gpt2", "gptlab", "text-generation"],
        model_name=(facts.repo_id or "").split("/")[-1] or "gptlab-gpt2",
        eval_results=eval_results,
    )


def model_card(facts: CardFacts) -> str:
    """The card as huggingface_hub's `ModelCard` writes it: the metadata block, then the text below."""
    from huggingface_hub import ModelCard

    return str(ModelCard(f"---\n{card_data(facts).to_yaml()}\n---\n\n{_card_text(facts)}"))


def _card_text(facts: CardFacts) -> str:
    model, train = facts.config.model, facts.config.train
    meta = facts.checkpoint_meta or {}
    imported_from = meta.get("imported_from")
    tokens_seen = meta.get("tokens_seen", _summary_value(facts, "tokens_seen"))
    zero_biases = 0 if model.qkv_bias else 3 * model.emb_dim * model.n_layers
    name = facts.repo_id or "path/to/this/folder"
    max_new = default_new_tokens(model.context_length)
    summary = facts.summary or {}
    cost = summary.get("cost")
    cost_text = f"${cost:,.2f} at ${summary.get('cost_per_hour')}/hour" if cost is not None else NOT_RECORDED
    origin = (
        f"Weights imported from `{imported_from}` with `gptlab import-hf`; their training was not recorded by gptlab."
        if imported_from
        else f"Trained from scratch with gptlab (checkpoint `{facts.checkpoint_name}`)."
    )
    architecture = [
        "| | |",
        "|---|---|",
        "| architecture | GPT-2 (`GPT2LMHeadModel`): pre-LayerNorm decoder, learned positions, tanh GELU |",
        f"| parameters | {facts.parameters:,}"
        + (f" (+ {zero_biases:,} zero-valued Q/K/V biases that GPT-2's format requires)" if zero_biases else "")
        + " |",
        f"| layers / width / heads | {model.n_layers} / {model.emb_dim} / {model.n_heads} |",
        f"| context length | {model.context_length} tokens |",
        f"| vocabulary | {model.vocab_size:,} (GPT-2 byte-pair encoding) |",
        f"| output head | {'tied to the token embedding' if model.tie_weights else 'untied (`tie_word_embeddings: false`)'} |",
        f"| Q/K/V bias | {'yes' if model.qkv_bias else 'no (stored as zeros)'} |",
        f"| dropout (training) | {model.drop_rate} |",
    ]
    training = [
        "| | |",
        "|---|---|",
        f"| data | `{public_dataset(train.dataset)}`"
        + (" (the dataset given at import; not the training data)" if imported_from else "")
        + " |",
        f"| tokens seen | {_number(tokens_seen) if not imported_from else NOT_RECORDED} |",
        f"| steps | {_number(meta.get('global_step') + 1) if isinstance(meta.get('global_step'), int) and not imported_from else NOT_RECORDED} |",
        f"| precision | {meta.get('precision') or _summary_value(facts, 'precision') or NOT_RECORDED} |",
        f"| final train loss | {_number(_summary_value(facts, 'final_train_loss'), 4)} |",
        f"| final validation loss | {_number(_summary_value(facts, 'final_validation_loss'), 4)} |",
        f"| hardware | {_hardware(facts)} |",
        f"| training time | {_duration(_summary_value(facts, 'training_seconds'))} |",
        f"| throughput | {_number(_summary_value(facts, 'tokens_per_second'))} tokens/s |"
        if summary.get("tokens_per_second")
        else f"| throughput | {NOT_RECORDED} |",
        f"| cost | {cost_text} |",
    ]
    config_json = json.dumps(_public_config(facts), indent=2)
    longest_run = max((len(run) for run in re.findall(r"`+", facts.sample_text)), default=0)
    fence = "`" * max(3, longest_run + 1)  # generated text cannot close the code block early
    parts = [
        f"# GPT-2 style model ({facts.parameters / 1e6:,.1f}M parameters)",
        "",
        origin
        + " It is a standard `transformers` GPT-2: it loads with `AutoModelForCausalLM` and needs no `trust_remote_code`.",
        "",
        "## Architecture",
        "",
        *architecture,
        "",
        "## Training",
        "",
        *training,
        "",
        "Time, throughput and cost are for the whole training run (summary.json); tokens seen are up to the exported checkpoint.",
        "",
        "## Evaluation",
        "",
        f"Test loss: {_test_loss(facts)}",
        "",
        *([f"HellaSwag: {_hellaswag(facts)}", ""] if facts.hellaswag else []),
        *(part for line in facts.task_lines for part in (line, "")),
        "## Sample",
        "",
        f"The smoke test: prompt {json.dumps(facts.sample_prompt)}, 20 new tokens, top-k 25, temperature 1.0, seed {facts.sample_seed} "
        f"(`gptlab generate RUN_DIR --seed {facts.sample_seed} --checkpoint {facts.checkpoint_name}` gives the same text):",
        "",
        fence + "text",
        facts.sample_text,
        fence,
        "",
        "## Usage",
        "",
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
        "## Effective configuration",
        "",
        "The run's `model.json` and `train.json` after defaults"
        + (" (the training keys are placeholders written at import)" if imported_from else "")
        + ":",
        "",
        "```json",
        config_json,
        "```",
        "",
    ]
    return "\n".join(parts)
