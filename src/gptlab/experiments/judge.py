"""`gptlab judge A B [C ...]`: an LLM judge scores several models' responses to the same instructions.

Each argument is a run (its saved `gptlab eval --task ift` responses) or a responses file (a JSON list of
`{"instruction", "input", "output", "model_response"}`, the users' format). For every item one request to an
OpenAI-compatible server shows the instruction (formatted as the fine-tuning formatted it), the reference
output and every model's response, each in a fenced block headed `# Model N`, in an order shuffled per item
against position bias. The judge answers JSON `{"Model N": {"score": 0-100, "comments": "..."}}`; an answer
that is not that JSON is asked for again a bounded number of times and then counted as failed for that item
(never as a zero). The key comes from OPENAI_API_KEY, the server from OPENAI_BASE_URL (a local Ollama, vLLM or
llama.cpp server works), and is never printed or written.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from gptlab.errors import UserError
from gptlab.files import atomic_write_text, strict_json

DEFAULT_MODEL = "gpt-4o-mini"
APIS = ("responses", "chat")
JUDGED_SUFFIX = ".judged.json"
ITEM_KEYS = ("instruction", "input", "output")

INSTRUCTIONS = (
    "You judge how well language models followed an instruction. Below are the instruction, a reference output "
    "and the responses of {count} models. Score each response from 0 (useless) to 100 (as good as the reference "
    "or better) for correctness and for following the instruction. Answer with JSON only, of the form "
    "{{{example}}}."
)


@dataclass
class Source:
    argument: str  # as given
    responses_file: Path
    items: list[dict[str, Any]]
    run_dir: Optional[Path] = None


@dataclass
class Scored:
    scores: list[Optional[float]] = field(default_factory=list)  # per item; None: failed
    comments: list[Optional[str]] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return sum(score is not None for score in self.scores)

    @property
    def failed(self) -> int:
        return sum(score is None for score in self.scores)

    @property
    def mean(self) -> Optional[float]:
        values = [score for score in self.scores if score is not None]
        return statistics.fmean(values) if values else None


# --- the inputs ----------------------------------------------------------------------------------------


def read_source(argument: str) -> Source:
    """A run directory (its saved ift responses) or a responses file."""
    from gptlab.evaluate.ift import OUT_DIR, RESPONSES_FILE
    from gptlab.rundir import read_task_evaluation

    path = Path(argument)
    run_dir = None
    if path.is_dir():
        run_dir = path
        entry = read_task_evaluation(path, "ift") or {}
        path = Path(entry.get("responses_file") or path / OUT_DIR / RESPONSES_FILE)
        if not path.is_file():
            raise UserError(f"{argument}: no ift responses ({path}); run `gptlab eval {argument} --task ift --save`")
    elif not path.is_file():
        raise UserError(f"{argument}: no such run or responses file")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a JSON responses file ({error})") from None
    if not isinstance(items, list) or not items:
        raise UserError(f"{path}: must be a non-empty JSON list of items with a 'model_response'")
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(item.get(key, ""), str) for key in ITEM_KEYS):
            raise UserError(f"{path}: item {index} is not an instruction item")
        if not isinstance(item.get("model_response"), str):
            raise UserError(f"{path}: item {index} has no string 'model_response'")
    return Source(argument, path, items, run_dir)


def check_same_items(sources: Sequence[Source]) -> None:
    """Every source holds the first one's items in its order; else one line naming the first that differs."""
    first = sources[0]
    for other in sources[1:]:
        for index in range(max(len(first.items), len(other.items))):
            ours = first.items[index] if index < len(first.items) else None
            theirs = other.items[index] if index < len(other.items) else None
            if ours is None or theirs is None or any(ours.get(k, "") != theirs.get(k, "") for k in ITEM_KEYS):

                def words(item):
                    return repr(item.get("instruction", "")[:60]) if item is not None else "no such item"

                raise UserError(
                    f"{other.argument}: item {index} ({words(theirs)}) differs from {first.argument}'s "
                    f"({words(ours)}); judge responses to the same items in the same order"
                )


# --- one request per item ------------------------------------------------------------------------------


def build_prompt(item: dict[str, Any], responses: Sequence[str]) -> tuple[str, str]:
    """(instructions, input) of the request: `responses` in the order shown, as Model 1, Model 2, ..."""
    from gptlab.evaluate.ift import format_prompt

    example = ", ".join(f'"Model {n}": {{"score": 0-100, "comments": "..."}}' for n in range(1, len(responses) + 1))
    blocks = [f"# Instruction\n```\n{format_prompt(item)}\n```", f"# Reference output\n```\n{item['output']}\n```"]
    blocks += [f"# Model {n}\n```\n{response}\n```" for n, response in enumerate(responses, start=1)]
    return INSTRUCTIONS.format(count=len(responses), example=example), "\n\n".join(blocks)


def parse_answer(text: str, count: int) -> Optional[dict[int, tuple[float, str]]]:
    """{N: (score, comments)} for Model 1..count, or None when the answer is not that JSON."""
    match = re.search(r"\{.*\}", text or "", re.DOTALL)  # a fenced or introduced JSON object is still read
    if match is None:
        return None
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    parsed = {}
    for n in range(1, count + 1):
        entry = data.get(f"Model {n}")
        score = entry.get("score") if isinstance(entry, dict) else None
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 100:
            return None
        comments = entry.get("comments", "")
        parsed[n] = (float(score), comments if isinstance(comments, str) else json.dumps(comments))
    return parsed


class Judge:
    """One OpenAI-compatible client; `ask` returns the answer's text, or raises UserError for a setup error."""

    def __init__(self, model: str, api: str, timeout: float, base_url: Optional[str] = None):
        try:
            import openai
        except ImportError:
            raise UserError("gptlab judge needs the openai package: pip install 'gptlab[judge]'") from None
        self.openai = openai
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = os.environ.get("OPENAI_API_KEY")
        if not key and not base_url:
            raise UserError("gptlab judge: set OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)")
        self.secret = key or ""
        # Retries are ours (bounded, per item); a local server that needs no key gets a placeholder.
        self.client = openai.OpenAI(api_key=key or "unused", base_url=base_url, timeout=timeout, max_retries=0)
        self.model, self.api = model, api

    def scrub(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def ask(self, instructions: str, text: str) -> str:
        openai = self.openai
        try:
            if self.api == "responses":
                response = self.client.responses.create(model=self.model, instructions=instructions, input=text)
                return response.output_text or ""
            completion = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "system", "content": instructions}, {"role": "user", "content": text}],
            )
            return completion.choices[0].message.content or ""
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as error:
            status = getattr(error, "status_code", "?")
            raise UserError(
                self.scrub(
                    f"judge server refused the request (HTTP {status}, model {self.model!r}, --judge-api "
                    f"{self.api}): check OPENAI_API_KEY, OPENAI_BASE_URL and --judge-model"
                )  # fmt: skip
            ) from None


def judge_item(
    judge: Judge, item: dict[str, Any], responses: Sequence[str], order: Sequence[int], retries: int
) -> tuple[Optional[dict[int, tuple[float, str]]], str]:
    """The judge's scores by source index, or None and why, after at most 1 + retries requests."""
    instructions, text = build_prompt(item, [responses[i] for i in order])
    why = ""
    for _ in range(1 + retries):
        try:
            answer = judge.ask(instructions, text)
        except UserError:
            raise
        except judge.openai.APIError as error:  # a timeout, a dropped connection, a server error
            why = judge.scrub(f"{type(error).__name__}: {error}")[:200]
            continue
        parsed = parse_answer(answer, len(order))
        if parsed is not None:
            return {order[n - 1]: parsed[n] for n in parsed}, ""
        why = "the answer was not the JSON asked for"
    return None, why


# --- the whole judgement -------------------------------------------------------------------------------


def judge_sources(
    arguments: Sequence[str],
    judge_model: str = DEFAULT_MODEL,
    api: str = "responses",
    timeout: float = 60.0,
    retries: int = 2,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Score every item of every source; write the annotated files; return scores and paired verdicts."""
    from tqdm import tqdm

    if len(arguments) < 2:
        raise UserError("gptlab judge: give two or more runs or responses files")
    if api not in APIS:
        raise UserError(f"--judge-api {api}: responses or chat")
    sources = [read_source(argument) for argument in arguments]
    check_same_items(sources)
    judge = Judge(judge_model, api, timeout)
    shuffler = random.Random(seed)
    results = [Scored() for _ in sources]
    failures: list[str] = []
    for index, item in enumerate(tqdm(sources[0].items, desc="judge", disable=not show_progress, file=sys.stderr)):
        order = list(range(len(sources)))
        shuffler.shuffle(order)
        responses = [source.items[index]["model_response"] for source in sources]
        scores, why = judge_item(judge, item, responses, order, retries)
        failures.append(why)
        for position, result in enumerate(results):
            score, comment = scores[position] if scores else (None, None)
            result.scores.append(score)
            result.comments.append(comment)
    summary = {
        "judge_model": judge_model,
        "judge_api": api,
        "items": len(sources[0].items),
        "scores": {
            source.argument: {"mean": result.mean, "scored": result.scored, "failed": result.failed}
            for source, result in zip(sources, results)
        },
        "verdicts": paired_verdicts(sources, results),
    }
    for source, result in zip(sources, results):
        write_annotated(source, result, failures, judge_model)
        if source.run_dir is not None:
            save_run_judgement(source.run_dir, source, result, summary, [s.argument for s in sources])
    return summary


def paired_verdicts(sources: Sequence[Source], results: Sequence[Scored]) -> list[dict[str, Any]]:
    """Each model against the first on the items both were scored on, in verdicts.py's words: the paired t-test
    of stats.py, Holm-adjusted across the comparisons; a comparison whose paired differences are all the same has
    no spread to judge against, so it says "no noise estimate" and why instead of deciding on p = 0 or 1."""
    from gptlab.experiments import stats
    from gptlab.experiments.verdicts import BETTER, NO_NOISE, WITHIN, WORSE

    verdicts = []
    for source, result in zip(sources[1:], results[1:]):
        pairs = [(b, o) for b, o in zip(results[0].scores, result.scores) if b is not None and o is not None]
        entry: dict[str, Any] = {"baseline": sources[0].argument, "model": source.argument, "pairs": len(pairs)}
        differences = {o - b for b, o in pairs}  # higher is better
        if len(pairs) < 2:
            entry["verdict"] = "too few paired items"
        elif len(differences) == 1:
            [same] = differences
            entry["difference"] = same
            entry["verdict"] = (
                f"{NO_NOISE}: every paired item differs by {same:+g} points, so the paired t-test has no spread "
                "to judge it against"
            )
        else:
            difference = stats.paired_difference([o for _, o in pairs], [b for b, _ in pairs])
            entry.update(difference=difference.improvement, ci_low=difference.ci_low, ci_high=difference.ci_high)
            entry["p"] = difference.p
        verdicts.append(entry)
    tested = [entry for entry in verdicts if "p" in entry]
    for entry, adjusted in zip(tested, stats.holm([entry["p"] for entry in tested])):
        entry["p_holm"] = adjusted
        beyond = adjusted < stats.ALPHA
        entry["verdict"] = (BETTER if entry["difference"] > 0 else WORSE) if beyond else WITHIN
    return verdicts


def annotated_path(source: Source) -> Path:
    name = source.responses_file.name
    stem = name[: -len(".json")] if name.endswith(".json") else name
    return source.responses_file.with_name(stem + JUDGED_SUFFIX)


def write_annotated(source: Source, result: Scored, failures: Sequence[str], judge_model: str) -> None:
    """The source's items with the judge's score and comments (or why it failed), beside the source."""
    items = []
    for item, score, comment, why in zip(source.items, result.scores, result.comments, failures):
        extra = {"judge_score": score, "judge_comments": comment} if score is not None else {"judge_failed": why}
        items.append({**item, **extra, "judge_model": judge_model})
    atomic_write_text(annotated_path(source), strict_json(items, indent=2, ensure_ascii=False) + "\n")


def save_run_judgement(run_dir: Path, source: Source, result: Scored, summary: dict, compared: list[str]) -> None:
    """The judge's mean in the run's ift entry of evaluation.json, where compare, the report and the card read it."""
    from gptlab.rundir import read_task_evaluation, write_task_evaluation

    entry = read_task_evaluation(run_dir, "ift")
    if entry is None:
        return
    judged = {
        "mean": result.mean,
        "scored": result.scored,
        "failed": result.failed,
        "judge_model": summary["judge_model"],
        "judge_api": summary["judge_api"],
        "compared_with": [argument for argument in compared if argument != source.argument],
        "annotated_file": str(annotated_path(source)),
    }
    choice = entry.pop("checkpoint_choice", "latest")
    write_task_evaluation(run_dir, "ift", {**entry, "judge": judged}, choice)


def format_table(summary: dict[str, Any]) -> list[str]:
    from gptlab.experiments.stats import format_p

    width = max(len(argument) for argument in summary["scores"])
    lines = [
        f"Judge {summary['judge_model']} ({summary['judge_api']} API), {summary['items']} items:",
        f"{'model':<{width}}  {'mean':>6}  {'scored':>6}  {'failed':>6}",
    ]
    for argument, score in summary["scores"].items():
        mean = f"{score['mean']:.1f}" if score["mean"] is not None and math.isfinite(score["mean"]) else "-"
        lines.append(f"{argument:<{width}}  {mean:>6}  {score['scored']:>6}  {score['failed']:>6}")
    for verdict in summary["verdicts"]:
        if "p" in verdict:
            lines.append(
                f"{verdict['model']} vs {verdict['baseline']}: {verdict['difference']:+.1f} points over "
                f"{verdict['pairs']} paired items (p {format_p(verdict['p_holm'])}, Holm): {verdict['verdict']}"
            )
        else:
            lines.append(
                f"{verdict['model']} vs {verdict['baseline']} over {verdict['pairs']} paired items: {verdict['verdict']}"
            )
    return lines
