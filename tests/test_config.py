"""Bad input: one line per problem naming the file and key, exit code 2, no traceback, nothing written."""

import json

import pytest
from conftest import run_cli, write_run

from gptlab.config import TrainConfig
from gptlab.presets import USERS_MODEL, USERS_TRAIN


def test_users_files_validate_unchanged():
    from gptlab.config import validate_run_config

    config = validate_run_config(
        "model.json",
        {**USERS_MODEL, "tie_weights": True},
        "train.json",
        {
            **USERS_TRAIN,
            "use_amp": False,
            "clipping_max_norm": 3.5,
            "schedule_learning_rate": True,
            "warmup_period_percent": 5,
            "gradient_accumulation_steps": 2,
            "learning_rate": 0.0004,
            "weight_decay": 0.1,
            "random_seed": 7,
        },
    )
    assert config.train.effective_precision == "fp32" and config.train.effective_schedule == "users-cosine"
    defaults = validate_run_config("model.json", USERS_MODEL, "train.json", USERS_TRAIN).train
    assert defaults.effective_precision == "fp16"  # use_amp defaults to true in the users' harness
    assert (
        defaults.learning_rate,
        defaults.weight_decay,
        defaults.gradient_accumulation_steps,
        defaults.random_seed,
    ) == (0.0004, 0.1, 1, 42)


@pytest.mark.parametrize(
    "file, change, expected",
    [
        ("train", {"learning_rat": 0.001}, "train.json: learning_rat: unknown key; allowed keys are:"),
        (
            "train",
            {"microbatch_size": "12"},
            'train.json: microbatch_size: "12" is not allowed: input should be a valid integer',
        ),
        (
            "train",
            {"learning_rate": -0.001},
            "train.json: learning_rate: -0.001 is not allowed: input should be greater than 0",
        ),
        ("train", {"use_amp": "yes"}, 'train.json: use_amp: "yes" is not allowed'),
        (
            "train",
            {"precision": "fp8"},
            "train.json: precision: \"fp8\" is not allowed: input should be 'fp32', 'tf32', 'fp16', 'bf16' or 'auto'",
        ),
        (
            "train",
            {"use_amp": True, "precision": "bf16"},
            "train.json: use_amp: true means precision 'fp16' but precision is 'bf16'",
        ),
        ("train", {"min_train_tokens": -5}, "train.json: min_train_tokens: -5 is not allowed"),
        ("model", {"n_heads": 5}, "model.json: n_heads: 5 does not divide emb_dim 32"),
        ("model", {"drop_rate": 1.5}, "model.json: drop_rate: 1.5 is not allowed: input should be less than 1"),
        ("train", {"start_train_token": 10**12}, "start_train_token: 1000000000000 is past the end of the train split"),
        ("train", {"min_train_tokens": 10**9}, "the train split has"),
        ("train", {"dataset": "no/such-dataset-here"}, "download"),
    ],
)
def test_each_bad_input_class_is_one_clear_line(tmp_path, brown_dataset, file, change, expected):
    run = write_run(tmp_path / "run", brown_dataset, **({"model": change} if file == "model" else {"train": change}))
    result = run_cli(
        "train", str(run), "--no-progress", env={"HF_HUB_OFFLINE": "1", "GPTLAB_DATASETS_DIR": str(tmp_path / "ds")}
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr
    assert expected in error_lines[0]
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_every_problem_is_reported_at_once(tmp_path, brown_dataset):
    run = write_run(
        tmp_path / "run", brown_dataset, model={"n_heads": 5, "n_layers": 0}, train={"learning_rate": -1, "bogus": 1}
    )
    result = run_cli("train", str(run))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4
    assert all(line.startswith("error: ") and ("model.json" in line or "train.json" in line) for line in lines)
    for key in ("n_heads", "n_layers", "learning_rate", "bogus"):
        assert any(key in line for line in lines), key


def test_missing_and_broken_files(tmp_path):
    (tmp_path / "run").mkdir()
    result = run_cli("train", str(tmp_path / "run"))
    assert result.returncode == 2 and "model.json: file not found" in result.stderr
    (tmp_path / "run" / "model.json").write_text("{not json")
    (tmp_path / "run" / "train.json").write_text("[]")
    result = run_cli("train", str(tmp_path / "run"))
    assert result.returncode == 2 and "model.json: not valid JSON" in result.stderr and "Traceback" not in result.stderr


def test_set_overrides_are_typed_and_checked():
    from gptlab.config import parse_assignments as parse_overrides
    from gptlab.errors import UserError

    assert parse_overrides(("learning_rate=0.001", "model.drop_rate=0", "tie_weights=true", "precision=bf16")) == {
        "model": {"drop_rate": 0, "tie_weights": True},
        "train": {"learning_rate": 0.001, "precision": "bf16"},
    }
    with pytest.raises(UserError, match="not a key"):
        parse_overrides(("nonsense=1",))


def test_configuration_doc_is_current():
    from pathlib import Path

    from gptlab.config import markdown_reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == markdown_reference(), "run: python scripts/config_doc.py > docs/configuration.md"


@pytest.mark.parametrize(
    "in_file, assignment, replaced, effective",
    [
        ({"precision": None, "use_amp": True}, "precision=bf16", "use_amp", ("effective_precision", "bf16")),
        ({"precision": "fp16"}, "use_amp=false", "precision", ("effective_precision", "fp32")),
        (
            {"schedule_learning_rate": True},
            "lr_schedule=cosine",
            "schedule_learning_rate",
            ("effective_schedule", "cosine"),
        ),
    ],
)
def test_an_override_replaces_its_alias_in_train_json(make_run, in_file, assignment, replaced, effective):
    """The users' train.json says `use_amp: true` (or `schedule_learning_rate: true`); overriding the finer key
    (or the switch) replaces the other instead of being refused as a conflict; the file is left as it was."""
    from gptlab.config import load_run_config, parse_assignments

    run = make_run(train=in_file)
    before = (run / "train.json").read_text()
    config = load_run_config(run, parse_assignments((assignment,)))
    assert getattr(config.train, effective[0]) == effective[1]
    assert getattr(config.train, replaced) == TrainConfig.model_fields[replaced].default
    assert (run / "train.json").read_text() == before


def test_an_intervention_of_precision_replaces_use_amp(tmp_path, make_run):
    from gptlab.experiments.plan import plan_runs
    from gptlab.experiments.spec import load_experiment

    make_run("base", train={"precision": None, "use_amp": True})
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"baseline": "base", "seeds": [1], "interventions": {"bf16": {"precision": "bf16"}}}))
    planned = {run.variant: run for run in plan_runs(load_experiment(path))}
    assert planned["bf16"].train["precision"] == "bf16" and planned["bf16"].train["use_amp"] is None
    assert planned["baseline"].train["use_amp"] is True


def test_both_keys_of_an_alias_in_one_override_still_must_agree(make_run):
    from gptlab.config import load_run_config, parse_assignments
    from gptlab.errors import UserError

    with pytest.raises(UserError, match="use_amp: true means precision 'fp16' but precision is 'bf16'"):
        load_run_config(make_run(), parse_assignments(("precision=bf16", "use_amp=true")))


def test_cli_train_set_precision_bf16_on_a_use_amp_run(make_run):
    run = make_run(train={"precision": None, "use_amp": True, "min_train_tokens": 4 * 32 * 2, "validation_batches": 0})
    result = run_cli("train", str(run), "--set", "precision=bf16", "--set", "device=cpu", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "summary.json").read_text())["precision"] == "bf16"


def test_every_train_key_says_what_it_changes():
    """A new train.json key must be tagged in TRAIN_KEY_ROLES: it decides whether the key may change on
    resume and whether runs differing in it are seeds of one configuration in `gptlab compare`."""
    from gptlab.config import BOOKKEEPING_TRAIN_KEYS, RESUME_SAFE_TRAIN_KEYS, TRAIN_KEY_ROLES

    untagged = sorted(set(TrainConfig.model_fields) - set(TRAIN_KEY_ROLES))
    assert not untagged, f"tag these train.json keys in config.TRAIN_KEY_ROLES: {untagged}"
    assert set(TRAIN_KEY_ROLES) == set(TrainConfig.model_fields), "TRAIN_KEY_ROLES names keys TrainConfig no longer has"
    assert BOOKKEEPING_TRAIN_KEYS < RESUME_SAFE_TRAIN_KEYS
    assert {"learning_rate", "random_seed", "precision", "best_by"}.isdisjoint(RESUME_SAFE_TRAIN_KEYS)
    assert {"validation_batches", "checkpoint_interval"} <= RESUME_SAFE_TRAIN_KEYS - BOOKKEEPING_TRAIN_KEYS
