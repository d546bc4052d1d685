"""Hugging Face export, import and upload, checked against the real `transformers` and `huggingface_hub`.

Nothing here downloads anything: transformers only reads folders this file writes (HF_HUB_OFFLINE=1),
and the Hub is either unreachable on purpose or a stand-in HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, write_run

from gptlab.errors import UserError
from gptlab.evaluate.loss import evaluate_run
from gptlab.evaluate.sample import DEFAULT_PROMPT, generate_from_run
from gptlab.export.commands import _read_eval_result
from gptlab.export.hf import _saved_evaluation, export_run, import_hf_model
from gptlab.files import remove_stale_staging
from gptlab.runtime.runs import open_trained_run
from gptlab.tokenizer import decode, encode
from gptlab.weights import read_book_safetensors

# (tie_weights, qkv_bias) of each exported model; "untied-bias" also has dropout and is the one used end to end.
VARIANTS = {
    "tied-bias": (True, True),
    "tied-nobias": (True, False),
    "untied-bias": (False, True),
    "untied-nobias": (False, False),
}
MAIN = "untied-bias"
CARD_SEED = 123
TRICKY_TEXT = "Hello  world!\n\n  It's 2024 — naïve café,\tdon't <|endoftext|> 'll x  "


@pytest.fixture(scope="module", autouse=True)
def offline_hub():
    """transformers and huggingface_hub read these when first imported; set them before that."""
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def runs(tmp_path_factory, brown_dataset, offline_hub):
    """Each variant trained for 2 steps (so QKV biases and LayerNorms move off their initial values)
    and exported; the main one with a test loss for its card."""
    from gptlab.train.loop import train_run

    root = tmp_path_factory.mktemp("export")
    made = {}
    for name, (tie, bias) in VARIANTS.items():
        model = {"tie_weights": tie, "qkv_bias": bias, "init": "gpt2", "drop_rate": 0.1 if name == MAIN else 0.0}
        run = write_run(
            root / name,
            brown_dataset,
            model=model,
            train={"min_train_tokens": 4 * 32 * 2, "learning_rate": 0.01, "validation_batches": 0},
        )
        train_run(run, show_progress=False)
        out = root / f"{name}-hf"
        eval_result = None
        if name == MAIN:  # with a test loss for the card, read back as `--eval-result FILE` reads it
            (root / "eval.json").write_text(json.dumps(evaluate_run(run, "best", batches=3)))
            eval_result = _read_eval_result(root / "eval.json")
        export_run(run, out, "best", eval_result=eval_result, seed=CARD_SEED)
        made[name] = {"run": run, "out": out, "eval": eval_result}
    return made


def _load_hf(out_dir: Path):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(out_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def _test_tokens(dataset: Path, batch: int, length: int) -> torch.Tensor:
    from gptlab.data.tokens import TokenDataset

    tokens = TokenDataset(dataset).split("test").read(0, batch * length)
    return torch.from_numpy(tokens.astype("int64")).view(batch, length)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_loads_in_transformers_with_equal_logits(runs, variant, brown_dataset):
    tie, bias = VARIANTS[variant]
    run, out = runs[variant]["run"], runs[variant]["out"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["tie_word_embeddings"] is tie and config["activation_function"] == "gelu_new"
    assert config["n_positions"] == config["n_ctx"] == 32 and config["layer_norm_epsilon"] == 1e-5
    assert config["resid_pdrop"] == config["attn_pdrop"] == config["embd_pdrop"] == (0.1 if variant == MAIN else 0.0)
    assert "auto_map" not in config  # nothing needs trust_remote_code

    ours = open_trained_run(run, "best").model
    hf = _load_hf(out)
    assert type(hf).__name__ == "GPT2LMHeadModel" and not hf.training
    head, embedding = hf.lm_head.weight, hf.transformer.wte.weight
    if tie:
        assert head.data_ptr() == embedding.data_ptr()
    else:  # the untied head really is loaded, not re-tied to the embedding
        assert head.data_ptr() != embedding.data_ptr() and not torch.equal(head, embedding)
        assert torch.equal(head, ours.lm_head.weight)
    qkv_bias = hf.transformer.h[0].attn.c_attn.bias
    assert bool(qkv_bias.abs().sum() > 0) is bias  # zeros were written where gptlab has no bias

    ids = torch.cat(
        [
            _test_tokens(brown_dataset, 2, 32),
            torch.randint(0, 50257, (1, 32), generator=torch.Generator().manual_seed(0)),
        ]
    )
    with torch.no_grad():
        expected, got = ours(ids), hf(ids).logits
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


def test_greedy_generate_in_transformers_equals_gptlab_generate(runs):
    run, out = runs[MAIN]["run"], runs[MAIN]["out"]
    # What `gptlab generate --temperature 0 --tokens 20` runs (its CLI is compared with transformers below, on an import).
    ours = generate_from_run(run, temperature=0, new_tokens=20, checkpoint="best")["token_ids"]
    prompt = torch.tensor([encode(DEFAULT_PROMPT)])  # the tokenizer files are checked on their own below
    with torch.no_grad():
        theirs = (
            _load_hf(out)
            .generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=20)[0]
            .tolist()
        )
    if len(theirs) < len(ours):  # transformers stops at <|endoftext|> (generation_config's eos), gptlab does not
        assert theirs[-1] == 50256
        ours = ours[: len(theirs)]
    assert theirs == ours


def test_tokenizer_files_load_offline_and_match_gptlab(runs, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    out = runs[MAIN]["out"]
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer("Every effort moves you")["input_ids"] == [6109, 3626, 6100, 345]
    assert tokenizer(TRICKY_TEXT)["input_ids"] == encode(TRICKY_TEXT)
    assert tokenizer.decode(encode(TRICKY_TEXT)) == decode(encode(TRICKY_TEXT)) == TRICKY_TEXT
    assert tokenizer.eos_token_id == 50256 and tokenizer.model_max_length == 32
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(TRICKY_TEXT).ids == encode(TRICKY_TEXT)
    # Tools that only read vocab.json + merges.txt get the same tokenizer.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(out / name, legacy / name)
    assert AutoTokenizer.from_pretrained(str(legacy))(TRICKY_TEXT)["input_ids"] == encode(TRICKY_TEXT)


def test_model_card_holds_the_facts(runs):
    main = runs[MAIN]
    card = (main["out"] / "README.md").read_text()
    trained = open_trained_run(main["run"], "best")
    assert card.startswith("---\n") and "\nlibrary_name: transformers\n" in card.split("\n---\n")[0]
    assert f"{trained.model.parameter_count():,}" in card
    assert f"Test loss: {main['eval']['loss']:.4f}" in card and "test split" in card
    sample = generate_from_run(main["run"], seed=CARD_SEED, checkpoint=trained.checkpoint.name)["text"]
    assert sample in card
    assert "| tokens seen | 256 |" in card and "| cost | not recorded |" in card
    assert '"learning_rate": 0.01' in card and "AutoModelForCausalLM.from_pretrained" in card
    other = (runs["tied-nobias"]["out"] / "README.md").read_text()
    assert "Test loss: not recorded" in other and "zero-valued Q/K/V biases" in other


def test_model_card_metadata_is_what_the_hub_reads(runs, tmp_path, brown_dataset):
    """Read back with huggingface_hub's own ModelCard: license, language, tags and a model-index whose eval
    result is the test loss; and no local path anywhere (the dataset is a local folder here)."""
    from huggingface_hub import ModelCard

    main = runs[MAIN]
    export_run(
        main["run"],
        tmp_path / "card",
        eval_result=main["eval"],
        seed=CARD_SEED,
        repo_id="alice/tiny-gpt",
        license="mit",
    )
    text = (tmp_path / "card" / "README.md").read_text()
    card = ModelCard(text)
    data = card.data
    assert data.license == "mit" and data.language == "en" and {"gpt2", "gptlab"} <= set(data.tags)
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    [result] = data.eval_results
    assert result.metric_type == "loss" and result.metric_value == round(main["eval"]["loss"], 4)
    assert (
        result.dataset_name == brown_dataset.name and result.dataset_split == "test" and data.model_name == "tiny-gpt"
    )
    assert "model-index" in text.split("\n---\n")[0]
    assert not data.datasets  # a local folder is no Hub dataset
    for local in (str(brown_dataset), str(main["run"]), str(tmp_path)):
        assert local not in text, local


def test_model_card_lists_a_hub_dataset(runs):
    from huggingface_hub import ModelCard

    from gptlab.export.card import CardFacts, model_card

    trained = open_trained_run(runs[MAIN]["run"], "best")
    config = trained.config.model_copy(
        update={"train": trained.config.train.model_copy(update={"dataset": "alice/tiny-stories"})}
    )
    facts = CardFacts(
        config=config,
        checkpoint_name="x",
        checkpoint_meta={},
        parameters=1,
        summary=None,
        eval_result=None,
        sample_prompt="Hi",
        sample_text="there",
        sample_seed=1,
    )
    assert ModelCard(model_card(facts)).data.datasets == ["alice/tiny-stories"]


def test_exported_generation_config_lets_max_new_tokens_pass_without_warnings(runs):
    """`max_length` in generation_config.json made transformers warn whenever a user passed max_new_tokens."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    out = runs[MAIN]["out"]
    assert "max_length" not in json.loads((out / "generation_config.json").read_text())
    model = _load_hf(out)
    prompt = torch.tensor([encode(DEFAULT_PROMPT)])
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    hf_logging.add_handler(handler)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            new = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=5)
            default = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False)
    finally:
        hf_logging.remove_handler(handler)
        hf_logging.set_verbosity(verbosity)
    messages = [record.getMessage() for record in records] + [str(warning.message) for warning in caught]
    assert not [m for m in messages if "max_length" in m or "max_new_tokens" in m], messages
    assert new.shape[1] <= prompt.shape[1] + 5 and default.shape[1] <= 32


def test_model_card_reads_a_saved_evaluation_of_the_same_checkpoint(runs, tmp_path):
    run = runs["tied-nobias"]["run"]
    name = open_trained_run(run, "best").checkpoint.name
    saved = {
        "checkpoint": name,
        "loss": 7.654321,
        "split": "test",
        "tokens": 384,
        "start_token": 0,
        "batch_size": 4,
        "precision": "fp32",
    }
    (run / "evaluation.json").write_text(json.dumps(saved))  # as `gptlab eval --save` writes it
    try:
        export_run(run, tmp_path / "with", seed=CARD_SEED)
        (run / "evaluation.json").write_text(json.dumps({**saved, "checkpoint": "another-iteration-1"}))
        assert _saved_evaluation(run, name) is None  # a loss of another checkpoint is not this model's
    finally:
        (run / "evaluation.json").unlink()
    assert "Test loss: 7.6543 nats" in (tmp_path / "with" / "README.md").read_text()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_then_import_gives_identical_weights(runs, variant, tmp_path, brown_dataset):
    run, out = runs[variant]["run"], runs[variant]["out"]
    import_hf_model(out, tmp_path / "back", str(brown_dataset), 4)
    original, back = open_trained_run(run, "best"), open_trained_run(tmp_path / "back", "best")
    assert back.config.model == original.config.model  # tie, bias, dropout and init all restored
    before = read_book_safetensors(original.checkpoint.path / "model.safetensors")
    after = read_book_safetensors(back.checkpoint.path / "model.safetensors")
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name


def _perturbed(model) -> None:
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)


def test_import_of_a_gpt2_saved_by_transformers_then_cli_eval_and_generate(tmp_path, brown_dataset):
    """OpenAI's GPT-2 as transformers saves it, in miniature: tied head, non-zero QKV biases, dropout 0.1."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=2, n_head=4)).eval()
    _perturbed(hf)
    hf.save_pretrained(str(tmp_path / "gpt2"))
    run = tmp_path / "imported"
    result = run_cli(
        "import-hf", str(tmp_path / "gpt2"), str(run), "--dataset", str(brown_dataset), "--microbatch-size", "4"
    )
    assert result.returncode == 0, result.stderr
    model = json.loads((run / "model.json").read_text())
    assert (
        model["tie_weights"] is True
        and model["qkv_bias"] is True
        and model["context_length"] == 32
        and model["drop_rate"] == 0.1
    )

    result = run_cli("eval", str(run), "--batches", "3", "--json")
    assert result.returncode == 0, result.stderr
    loss = json.loads(result.stdout)["loss"]
    windows = _test_tokens(brown_dataset, 1, 3 * 4 * 32 + 1)[0]
    with torch.no_grad():  # the same three batches of 4 x 32 through transformers
        losses = [
            F.cross_entropy(
                hf(windows[b * 128 : (b + 1) * 128].view(4, 32)).logits.flatten(0, 1),
                windows[b * 128 + 1 : (b + 1) * 128 + 1],
            ).item()
            for b in range(3)
        ]
    assert loss == pytest.approx(sum(losses) / 3, abs=1e-5)

    result = run_cli("generate", str(run), "--temperature", "0", "--tokens", "10", "--json")
    assert result.returncode == 0, result.stderr
    prompt = encode(DEFAULT_PROMPT)
    with torch.no_grad():
        theirs = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=10,
            eos_token_id=None,
            pad_token_id=50256,
        )[0].tolist()
    assert json.loads(result.stdout)["token_ids"] == theirs


def test_import_of_an_untied_gpt2_with_openai_names(tmp_path, brown_dataset):
    """An untied head, and the key names of OpenAI's original upload (no `transformer.` prefix, mask buffers)."""
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    hf = GPT2LMHeadModel(
        GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=False)
    ).eval()
    _perturbed(hf)
    hf.save_pretrained(str(tmp_path / "gpt2"))
    weights = load_file(str(tmp_path / "gpt2" / "model.safetensors"))
    renamed = {name.removeprefix("transformer."): tensor for name, tensor in weights.items()}
    renamed.update({f"h.{i}.attn.bias": torch.tril(torch.ones(1, 1, 32, 32)) for i in range(2)})
    save_file(renamed, str(tmp_path / "gpt2" / "model.safetensors"), metadata={"format": "pt"})

    import_hf_model(tmp_path / "gpt2", tmp_path / "run", str(brown_dataset), 4)
    ours = open_trained_run(tmp_path / "run", "latest").model
    assert ours.config.tie_weights is False and ours.config.qkv_bias is True
    ids = _test_tokens(brown_dataset, 2, 32)
    with torch.no_grad():
        assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)


def test_a_qkv_bias_that_is_still_zero_survives_the_round_trip(tmp_path, brown_dataset):
    from gptlab.config import ModelConfig
    from gptlab.export.hf import write_hf_model
    from gptlab.weights import build_model

    config = ModelConfig(
        vocab_size=50257, context_length=32, emb_dim=32, n_heads=4, n_layers=1, qkv_bias=True, init="gpt2"
    )
    (tmp_path / "hf").mkdir()
    write_hf_model(build_model(config), config, tmp_path / "hf")  # gpt2 init: every bias is exactly zero
    import_hf_model(tmp_path / "hf", tmp_path / "run", str(brown_dataset), 4)
    assert json.loads((tmp_path / "run" / "model.json").read_text())["qkv_bias"] is True


def _dead_pid() -> int:
    for pid in range(4_000_000, 3_000_000, -7919):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free process id found")


def test_export_and_import_refuse_to_clobber_and_leave_nothing_half_written(runs, tmp_path, monkeypatch, brown_dataset):
    import gptlab.export.hf as hf_module

    run = runs["tied-nobias"]["run"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = run_cli("export", str(run), str(busy))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {busy}: not empty; choose a new or empty folder, or pass --overwrite to replace a previous export there"
    ]
    with pytest.raises(UserError, match="not a previous export"):
        export_run(run, busy, overwrite=True)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    with pytest.raises(UserError, match="run directory"):
        export_run(run, run, overwrite=True)
    with pytest.raises(UserError, match="--eval-result: its loss is of checkpoint elsewhere"):
        export_run(run, tmp_path / "unused", eval_result={"checkpoint": "elsewhere", "loss": 1.0})

    out = tmp_path / "out"
    dead = _dead_pid()
    (tmp_path / f".out.{dead}-0123abcd.tmp").mkdir()  # left by an export that was killed
    export_run(run, out, seed=1)
    assert not (tmp_path / f".out.{dead}-0123abcd.tmp").exists()
    aside = (
        tmp_path / f".gone.{dead}-0123abcd.old"
    )  # killed after moving an old export aside, before the new one was in
    (aside / "replaced").mkdir(parents=True)
    (aside / "replaced" / "config.json").write_text("{}")
    remove_stale_staging(tmp_path, "gone")
    assert (tmp_path / "gone" / "config.json").is_file() and not aside.exists()
    shutil.rmtree(tmp_path / "gone")
    first = (out / "README.md").read_text()
    with pytest.raises(UserError, match="not empty"):
        export_run(run, out, seed=2)
    export_run(run, out, seed=2, overwrite=True)
    assert (out / "README.md").read_text() != first

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf_module, "write_tokenizer_files", broken)
    replaced = (out / "README.md").read_text()
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(run, out, overwrite=True)
    assert (out / "README.md").read_text() == replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "out"]  # no staging folders left beside them

    with pytest.raises(UserError, match="not empty"):
        import_hf_model(out, busy, str(brown_dataset))
    with pytest.raises(UserError, match="no config.json"):
        import_hf_model(tmp_path / "busy", tmp_path / "new-run", str(brown_dataset))
    (busy / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="only GPT-2 models"):
        import_hf_model(busy, tmp_path / "new-run", str(brown_dataset))
    assert not (tmp_path / "new-run").exists()


# --- upload -------------------------------------------------------------------------------------------

TOKEN = "hf_standInSecret0123456789"
_TOKEN_VARIABLES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_OIDC_RESOURCE",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
)


def _gptlab(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The CLI with no Hugging Face token or endpoint from this machine: an empty HF_HOME, a private TMPDIR."""
    clean = {key: value for key, value in os.environ.items() if key not in _TOKEN_VARIABLES}
    home, temporary = tmp_path / "hf-home", tmp_path / "tmpdir"
    home.mkdir(exist_ok=True)
    temporary.mkdir(exist_ok=True)
    clean.update(HF_HOME=str(home), TMPDIR=str(temporary), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="0", **env)
    return subprocess.run(
        [sys.executable, "-m", "gptlab", *args], capture_output=True, text=True, env=clean, timeout=300
    )


def _no_upload_leftovers(tmp_path: Path) -> bool:
    """The upload's temporary export is gone (tiktoken keeps its own cache in TMPDIR; that may stay)."""
    return [p.name for p in (tmp_path / "tmpdir").iterdir() if p.name != "data-gym-cache"] == []


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _one_clean_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr
    assert TOKEN not in result.stdout + result.stderr


class StandInHub:
    """The calls `whoami` + `create_repo` + `upload_folder` make, answered on 127.0.0.1: who the token
    belongs to, create the repository, validate the card's YAML, say every file is a regular (inline) blob,
    and accept the commit."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.authorizations: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                hub.calls.append(("GET", self.path))
                if self.path == "/api/whoami-v2":
                    if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                        return self._answer(401, {"error": "Invalid credentials in Authorization header"})
                    return self._answer(200, {"type": "user", "name": "alice", "orgs": []})
                self._answer(404, {"error": "not served by the stand-in"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                hub.calls.append(("POST", path))
                hub.authorizations.add(self.headers.get("Authorization", ""))
                base = f"http://{self.headers['Host']}"
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._answer(401, {"error": "Invalid credentials in Authorization header"})
                if path == "/api/repos/create":
                    request = json.loads(body)
                    hub.created.append(request)
                    return self._answer(200, {"url": f"{base}/{request['organization']}/{request['name']}"})
                if path == "/api/validate-yaml":
                    return self._answer(200, {"errors": [], "warnings": []})
                if path.endswith("/preupload/main"):
                    files = json.loads(body)["files"]
                    return self._answer(
                        200,
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    )
                if path.endswith("/commit/main"):
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    repo = path.removeprefix("/api/models/").removesuffix("/commit/main")
                    return self._answer(200, {"commitUrl": f"{base}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
                self._answer(404, {"error": "not served by the stand-in"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_upload_dry_run_and_failures_before_any_transfer(runs, tmp_path, monkeypatch):
    """What is exercised: `--dry-run` (listing, no token, no network: the endpoint is a closed port, so any
    call would fail), a missing token (HF_TOKEN unset, HF_HOME empty), an unreachable endpoint with a
    token, HF_HUB_OFFLINE and a malformed repo id; each failure is one line, exit 2, nothing left in TMPDIR."""
    from huggingface_hub import constants

    from gptlab.export.upload import upload_run

    run, out = runs[MAIN]["run"], runs[MAIN]["out"]
    closed = f"http://127.0.0.1:{_closed_port()}"
    result = _gptlab(
        tmp_path, "upload", str(run), "alice/tiny-gpt", "--dry-run", "--license", "apache-2.0", HF_ENDPOINT=closed
    )
    assert result.returncode == 0, result.stderr
    assert "alice/tiny-gpt" in result.stdout and closed in result.stdout
    # the card it would upload, printed whole: its metadata with the license, and its text
    assert "license: apache-2.0" in result.stdout and "model_name: tiny-gpt" in result.stdout
    assert 'AutoModelForCausalLM.from_pretrained("alice/tiny-gpt")' in result.stdout
    for path in out.iterdir():
        size = path.stat().st_size if path.name != "README.md" else None  # the card names the repo id
        assert path.name in result.stdout and (size is None or f"{size:,} bytes" in result.stdout)
    assert _no_upload_leftovers(tmp_path)

    _one_clean_error(_gptlab(tmp_path, "upload", str(run), "alice/tiny-gpt"), "no Hugging Face token")
    _one_clean_error(
        _gptlab(tmp_path, "upload", str(run), "alice/tiny-gpt", HF_TOKEN=TOKEN, HF_ENDPOINT=closed),
        "cannot reach the Hub",
    )
    assert _no_upload_leftovers(tmp_path)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        upload_run(run, "alice/tiny-gpt")
    for bad in ("not/a/repo", "no-owner"):
        with pytest.raises(UserError, match="REPO_ID"):
            upload_run(run, bad, dry_run=True)


def test_upload_to_a_local_stand_in_hub(runs, tmp_path):
    """huggingface_hub honours HF_ENDPOINT, so the real `whoami` + `create_repo` + `upload_folder` run here
    against a stand-in on 127.0.0.1 that checks the token header and receives every file; a rejected token
    gives one line and leaves nothing in TMPDIR.
    Not exercised: Git LFS / Xet transfer of large files (the stand-in declares every file a regular blob;
    the real Hub would send model.safetensors through Xet), and the Hub's own permission rules."""
    run = runs[MAIN]["run"]
    expected = tmp_path / "expected"
    export_run(run, expected, seed=CARD_SEED, repo_id="alice/tiny-gpt")
    with StandInHub() as hub:
        result = _gptlab(
            tmp_path,
            "upload",
            str(run),
            "alice/tiny-gpt",
            "--private",
            "--seed",
            str(CARD_SEED),
            HF_TOKEN=TOKEN,
            HF_ENDPOINT=hub.url,
        )
        assert result.returncode == 0, result.stderr
        assert f"{hub.url}/alice/tiny-gpt" in result.stdout and TOKEN not in result.stdout + result.stderr
        assert [call for call in hub.calls if call[0] == "POST" and "repos/create" in call[1]] == [
            ("POST", "/api/repos/create")
        ]
        assert hub.created[0]["name"] == "tiny-gpt" and hub.created[0]["organization"] == "alice"
        assert hub.created[0].get("visibility") == "private" or hub.created[0].get("private") is True
        assert hub.authorizations == {f"Bearer {TOKEN}"}
        assert sorted(hub.files) == sorted(path.name for path in expected.iterdir())
        for path in expected.iterdir():  # byte for byte what a local export of the same checkpoint writes
            assert hub.files[path.name] == path.read_bytes(), path.name
        assert _no_upload_leftovers(tmp_path)

        wrong = "hf_wrongTokenWrongToken"
        rejected = _gptlab(tmp_path, "upload", str(run), "alice/tiny-gpt", HF_TOKEN=wrong, HF_ENDPOINT=hub.url)
        _one_clean_error(rejected, "refused the token")
        assert wrong not in rejected.stdout + rejected.stderr
        assert _no_upload_leftovers(tmp_path)


def test_upload_failing_mid_transfer_removes_its_export(runs, tmp_path, monkeypatch):
    """The Hub replaced by an object that accepts the token, sees the exported folder, then drops the
    connection in `upload_folder`: one UserError line, and the temporary export is gone afterwards."""
    import tempfile

    import huggingface_hub
    from huggingface_hub import constants

    from gptlab.export.upload import upload_run

    seen: list[list[str]] = []

    class DroppingHub:
        def __init__(self, endpoint, token):
            assert token == TOKEN

        def whoami(self):
            return {"name": "alice"}

        def create_repo(self, repo_id, **options):
            return f"{constants.ENDPOINT}/{repo_id}"

        def upload_folder(self, folder_path, **options):
            seen.append(sorted(path.name for path in Path(folder_path).iterdir()))
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(huggingface_hub, "HfApi", DroppingHub)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(UserError, match="cannot reach the Hub .*ConnectionResetError") as caught:
        upload_run(runs[MAIN]["run"], "alice/tiny-gpt", echo=lambda line: None)
    assert len(caught.value.lines) == 1 and TOKEN not in str(caught.value)
    assert seen and "model.safetensors" in seen[0] and "README.md" in seen[0]
    assert [path.name for path in tmp_path.iterdir() if path.name != "data-gym-cache"] == []


def test_import_of_a_bin_without_the_embedding_names_what_is_missing(tmp_path, brown_dataset):
    """A tied GPT-2 whose pytorch_model.bin lacks wte: one line naming the missing tensor, exit 2, no run written."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=1, n_head=4))
    hf.save_pretrained(str(tmp_path / "gpt2"), safe_serialization=False)
    (tmp_path / "gpt2" / "model.safetensors").unlink(missing_ok=True)
    weights = {name: tensor for name, tensor in hf.state_dict().items() if "wte" not in name and "lm_head" not in name}
    torch.save(weights, tmp_path / "gpt2" / "pytorch_model.bin")

    result = run_cli("import-hf", str(tmp_path / "gpt2"), str(tmp_path / "run"), "--dataset", str(brown_dataset))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "missing tensors transformer.wte.weight" in result.stderr
    assert not (tmp_path / "run").exists()
