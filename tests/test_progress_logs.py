"""What a training run tells people and their trackers: log lines in train.log (and on the console without a
terminal), validation lines, TensorBoard event files read back with TensorBoard's own EventAccumulator, and
Weights & Biases in offline mode (no network). Two tiny runs of 12 steps cover them."""

from __future__ import annotations

import json
import re
import sys
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from gptlab.config import load_run_config
from gptlab.flops import flops_per_token
from gptlab.train import progress
from gptlab.train.loggers import TensorBoardLogger
from gptlab.train.loop import train_run

LOG_LINE = re.compile(
    r"^step (\d+) \(\d+/12\) \| loss [\d.]+ \| (val [\d.]+ \| )?lr [\d.e+-]+ \| grad norm [\d.]+ \| [\d,]+ tok/s \| "
    r"elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d \| \$\d+\.\d\d$"
)
NO_COST_LINE = re.compile(LOG_LINE.pattern.replace(r" \| \$\d+\.\d\d", ""))
VALIDATION_LINE = re.compile(r"^step (\d+) \(\d+/12\) \| validation loss ([\d.]+) \| perplexity [\d,.]+$")


def _steps(pattern: re.Pattern, text: str) -> list[int]:
    return [int(match.group(1)) for line in text.splitlines() if (match := pattern.match(line))]


@pytest.mark.slow
def test_log_lines_every_log_interval_without_a_terminal_and_tensorboard_reads_the_run(make_run, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(progress, "LOG_LINE_SECONDS", 0.0)  # the step cadence alone decides
    run = make_run(
        train={"log_interval": 3, "checkpoint_interval": 6, "cost_per_hour": 2.5, "loggers": ["tensorboard"]}
    )
    summary = train_run(run, show_progress=True)  # capsys's stderr is no terminal: lines instead of a bar
    console, log = capsys.readouterr().out, (run / "train.log").read_text()
    # the step numbers of metrics.jsonl, TensorBoard and the checkpoint names (counted from 0)
    assert _steps(LOG_LINE, log) == [2, 5, 8, 11] == _steps(LOG_LINE, console)
    assert "MFU" not in log  # no datasheet peak for a CPU
    assert _steps(VALIDATION_LINE, log) == [0, 6, 11] == _steps(VALIDATION_LINE, console)  # at the checkpoints
    # two checkpoints written in the same second sort by their step's digits, so compare the steps as numbers
    names = [path.name for path in (run / "checkpoints").iterdir() if not path.is_symlink()]
    assert sorted(int(name.rsplit("-", 1)[1]) for name in names) == [0, 6, 11]
    last_line = [line for line in log.splitlines() if LOG_LINE.match(line)][-1]
    assert f"val {json.loads((run / 'metrics.jsonl').read_text().splitlines()[6])['validation_loss']:.4f}" in last_line

    events = EventAccumulator(str(run))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {
        "loss/train",
        "train/learning_rate",
        "train/grad_norm",
        "speed/tokens_per_second",
        "usage/cost_dollars",
        "memory/host_peak_rss_gib",
        "loss/validation",
        "validation/perplexity",
    } <= scalars, scalars
    # TensorBoard sorts chart groups by name: the losses come first, before the one-point end-of-run charts
    assert sorted({tag.split("/")[0] for tag in scalars})[0] == "loss" and "summary/final_train_loss" in scalars
    assert sorted(event.step for event in events.Scalars("speed/tokens_per_second")) == [
        0,
        2,
        5,
        6,
        8,
        11,
    ]  # at each read-back
    records = {record["step"]: record for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    losses = {event.step: event.value for event in events.Scalars("loss/train")}
    assert sorted(losses) == list(range(12)) and all(
        losses[step] == pytest.approx(records[step]["loss"], rel=1e-6) for step in losses
    )
    validation = {event.step: event.value for event in events.Scalars("loss/validation")}
    assert validation[11] == pytest.approx(summary["final_validation_loss"], rel=1e-6)
    hparams = events.PluginTagToContent("hparams")  # the resolved config as hparams, with the final losses
    assert hparams, "no hparams written"
    from tensorboard.plugins.hparams import plugin_data_pb2

    session = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["train.learning_rate"].number_value == pytest.approx(0.003)
    assert session.hparams["train.dataset"].string_value == load_run_config(run).train.dataset
    assert session.hparams["model.n_layers"].number_value == 2


@pytest.mark.slow
def test_with_a_terminal_the_bar_stays_validation_prints_and_a_failing_logger_does_not_stop_training(
    make_run, monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(
        progress, "LOG_LINE_SECONDS", 3600.0
    )  # seconds are rarer than steps: only the first and last line
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)

    def broken(self, step, values):
        raise OSError("disk full")

    monkeypatch.setattr(TensorBoardLogger, "scalars", broken)
    wandb_ok = _wandb_offline(monkeypatch, tmp_path)
    loggers = ["tensorboard", "wandb"] if wandb_ok else ["tensorboard"]
    run = make_run(train={"log_interval": 3, "loggers": loggers})
    summary = train_run(run, show_progress=True)
    captured = capsys.readouterr()
    log = (run / "train.log").read_text()
    assert _steps(NO_COST_LINE, log) == [2, 11]
    assert " tok/s " not in captured.out  # with a terminal the log lines stay in train.log; the bar shows the numbers
    assert "training:" in captured.err and "12/12" in captured.err  # tqdm's bar
    assert _steps(VALIDATION_LINE, captured.out) == [11]  # validation results are printed as lines too
    warnings = [line for line in log.splitlines() if line.startswith("Warning: logger tensorboard")]
    assert len(warnings) == 1 and "disk full" in warnings[0] and "training goes on" in warnings[0]
    assert summary["steps"] == 12 and (run / "summary.json").is_file()
    if wandb_ok:
        # wandb >= 0.19 keeps an offline run in one binary record file (run-ID.wandb), read by its Go core and
        # `wandb sync`, with no Python reader; the config, the history and the summary are JSON inside it.
        import wandb

        wandb.teardown()  # waits for wandb's service process to write out the records it still holds
        [record_file] = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
        recorded = record_file.read_bytes()
        for expected in (
            b"gptlab-tests",
            b'"learning_rate"',
            b"loss/validation",
            b"loss/train",
            b"final_validation_loss",
            json.dumps(summary["final_validation_loss"]).encode(),
        ):
            assert expected in recorded, expected
    else:
        pytest.skip("wandb is not installed here (pip install wandb): its offline half was not run")


def _wandb_offline(monkeypatch, tmp_path) -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "gptlab-tests")
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    return True


def test_a_missing_wandb_is_one_warning_line(monkeypatch, tmp_path):
    import builtins

    from gptlab.train.loggers import MetricLoggers

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    said: list[str] = []
    loggers = MetricLoggers(["wandb"], tmp_path, None, 0, warn=said.append)
    assert loggers.active == [] and len(said) == 1
    assert said[0].startswith("Warning: logger wandb: wandb is not installed; `pip install wandb`")


def test_mfu_against_the_datasheet_peak(monkeypatch):
    config = load_config_model()
    monkeypatch.setattr(progress, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    progress._peak_flops.cache_clear()
    run = SimpleNamespace(
        device=torch.device("cuda:0"),
        precision=SimpleNamespace(name="bf16"),
        config=SimpleNamespace(model=config),
        dist=SimpleNamespace(world_size=8),
    )
    try:
        assert progress.mfu(run, 1_000_000.0) == pytest.approx(1e6 * flops_per_token(config) / (989e12 * 8))
        run.device = torch.device("cpu")
        assert progress.mfu(run, 1_000_000.0) is None
    finally:
        progress._peak_flops.cache_clear()


def load_config_model():
    from gptlab.config import ModelConfig

    return ModelConfig()


def test_log_to_sets_the_runs_loggers(make_run, monkeypatch):
    """`gptlab train --log-to` reaches train_run as an override of `loggers`, which the config accepts."""
    import gptlab.train.loop
    from gptlab.cli import cli

    seen = {}
    monkeypatch.setattr(
        gptlab.train.loop,
        "train_run",
        lambda run_dir, datasets_dir, overrides, resume, show_progress: seen.update(overrides=overrides),
    )
    run = make_run()
    result = CliRunner().invoke(
        cli, ["train", str(run), "--log-to", "tensorboard", "--log-to", "wandb", "--set", "learning_rate=0.01"]
    )
    assert result.exit_code == 0, result.output
    resolved = load_run_config(run, seen["overrides"]).train
    assert resolved.loggers == ["tensorboard", "wandb"] and resolved.learning_rate == 0.01
    assert load_run_config(run).train.loggers == []
    bad = CliRunner().invoke(cli, ["train", str(run), "--log-to", "mlflow"])
    assert bad.exit_code == 2 and "mlflow" in bad.output


@pytest.mark.parametrize("columns", [80, 120])
def test_the_progress_bar_keeps_its_width_in_a_narrow_terminal(columns):
    """Fields go, most important last, before the bar itself would shrink below MIN_BAR_WIDTH."""
    import io

    from tqdm import tqdm

    from gptlab.train.record import MIN_BAR_WIDTH, set_fitting_postfix

    bar = tqdm(total=49, initial=19, desc="training", unit="step", file=io.StringIO(), ncols=columns)
    set_fitting_postfix(bar, {"loss": "5.123", "val": "5.432", "tok/s": "12,345,678", "$": "123.45"})
    line = str(bar)
    assert len(line) <= columns and len(line.split("|")[1]) >= MIN_BAR_WIDTH
    assert "loss=5.123" in line and ("$=123.45" in line) == (columns >= 120)
