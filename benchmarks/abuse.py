"""Abuse gptlab as a hostile new user would, through the real `gptlab` command, and count the outcomes.

Each case is one bad input or fault of a class in issue 19. An outcome is
  right       - a refusal: non-zero exit, an `error:` (or click usage) line, no traceback; or, for cases
                that must succeed, the right behaviour (checked per case);
  traceback   - a Python traceback reached the user;
  silent      - exit 0 where a refusal was due, or the right behaviour is missing (data lost, no note);
  unclear     - non-zero exit with neither a clear line nor a traceback.
Usage:  python benchmarks/abuse.py [--work DIR] [--only SUBSTRING]
Everything happens in a fresh temporary folder (tiny 256-token models on synthetic token files); the
disk-full cases mount a 2 MiB tmpfs and are skipped, with the reason, where that is not allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the 127.0.0.1 stand-ins (tests/standins.py)

from gptlab.data.tokens import TokenSplitWriter
from gptlab.runtime.checkpoint import list_checkpoints, step_of, write_checksums

VOCAB = 256
MODEL = {"vocab_size": VOCAB, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0}
TRAIN = {
    "microbatch_size": 2,
    "min_train_tokens": 2 * 16 * 6,
    "learning_rate": 0.003,
    "precision": "fp32",
    "validation_batches": 1,
    "checkpoint_interval": 1,
    "log_interval": 1,
    "best_by": "train",
}


def gptlab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gptlab", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def dataset(directory: Path, splits=("train", "validation", "test"), bad_id_at: int | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in splits:
        ids = rng.integers(0, VOCAB, 2000).astype(np.uint16)
        if bad_id_at is not None:
            ids[bad_id_at] = VOCAB + 44
        writer = TokenSplitWriter(directory / f"{name}.safetensors")
        writer.write(ids)
        writer.close()
    return directory


def run_dir(
    path: Path,
    data: Path,
    model: dict | None = None,
    train: dict | None = None,
    raw_train: str | None = None,
    raw_model: str | None = None,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.json").write_text(raw_model or json.dumps({**MODEL, **(model or {})}))
    (path / "train.json").write_text(raw_train or json.dumps({"dataset": str(data), **TRAIN, **(train or {})}))
    return path


def classify(result: subprocess.CompletedProcess, expect_refusal: bool, check=None) -> tuple[str, str]:
    err = result.stderr
    first = next(
        (line for line in err.splitlines() if line.startswith(("error:", "Error:"))),
        err.strip().splitlines()[-1] if err.strip() else "",
    )
    if "Traceback (most recent call last)" in err:
        return "traceback", err.strip().splitlines()[-1]
    if expect_refusal:
        if result.returncode == 0:
            return "silent", "exit 0: " + (result.stdout.strip().splitlines() or [""])[-1][:150]
        clear = any(line.startswith(("error:", "Error:")) for line in err.splitlines())
        if clear and (check is None or check(result)):
            return "right", first
        return "unclear", first or f"exit {result.returncode}, nothing said"
    ok = result.returncode == 0 and (check is None or check(result))
    return ("right" if ok else "silent"), (first or (result.stdout.strip().splitlines() or [""])[-1])[:200]


class Abuse:
    def __init__(self, work: Path):
        self.work = work
        self.rows: list[tuple[str, str, str, str]] = []
        self.data = dataset(work / "data")
        self.trained = run_dir(work / "trained", self.data)
        result = gptlab("train", self.trained, "--no-progress")
        assert result.returncode == 0, result.stderr

    def copy(self, name: str) -> Path:
        return Path(shutil.copytree(self.trained, self.work / name, symlinks=True))

    def record(self, kind: str, case: str, outcome: tuple[str, str]) -> None:
        self.rows.append((kind, case, *outcome))
        print(f"{outcome[0]:<9} {kind:<10} {case:<58} {outcome[1][:150]}", flush=True)

    def refuse(self, kind: str, case: str, *args, check=None) -> None:
        self.record(kind, case, classify(gptlab(*args), True, check))

    # --- data loss -----------------------------------------------------------------------------------
    def resume_from_older_checkpoint(self) -> None:
        run = run_dir(self.work / "long", self.data, train={"min_train_tokens": 2 * 16 * 12})
        gptlab("train", run, "--no-progress")
        before = {path.name for path in list_checkpoints(run)}
        resumed = next(name for name in before if name.endswith("-iteration-2"))
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gptlab",
                "train",
                str(run),
                "--resume",
                resumed,
                "--set",
                "keep_checkpoints=2",
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:  # stop it right after its first new checkpoint
            if any(path.name not in before for path in (run / "checkpoints").glob("*-iteration-*")):
                process.send_signal(signal.SIGTERM)
                break
            time.sleep(0.01)
        out, err = process.communicate(timeout=300)
        then = gptlab("train", run, "--resume", "latest", "--no-progress")
        aside = list((run / "checkpoints").glob("abandoned-*"))
        kept_old = sum(1 for folder in aside for path in folder.iterdir() if path.name in before)
        ok = then.returncode == 0 and kept_old == len([n for n in before if step_of(Path(n)) > 2])
        detail = f"then --resume latest: exit {then.returncode}; old later checkpoints kept aside: {kept_old}"
        if "Traceback" in err + then.stderr:
            self.record(
                "data-loss",
                "resume from iteration-2 with keep_checkpoints=2, stopped",
                ("traceback", (err + then.stderr).strip().splitlines()[-1]),
            )
        else:
            self.record(
                "data-loss",
                "resume from iteration-2 with keep_checkpoints=2, stopped",
                ("right" if ok else "silent", detail),
            )

    # --- accepted when it must be refused -------------------------------------------------------------
    def non_finite(self) -> None:
        for key in ("learning_rate", "weight_decay", "eps", "clipping_max_norm"):
            text = json.dumps({"dataset": str(self.data), **TRAIN, key: 1.0}).replace(
                f'"{key}": 1.0', f'"{key}": Infinity'
            )
            run = run_dir(self.work / f"inf-{key}", self.data, raw_train=text)
            self.refuse("accepted", f"train.json {key}: Infinity", "train", run, "--no-progress")
        run = run_dir(self.work / "nan-set", self.data)
        self.refuse("accepted", "--set learning_rate=NaN", "train", run, "--set", "learning_rate=NaN", "--no-progress")
        text = json.dumps(MODEL).replace('"drop_rate": 0.0', '"drop_rate": NaN')
        self.refuse(
            "accepted",
            "model.json drop_rate: NaN",
            "train",
            run_dir(self.work / "nan-model", self.data, raw_model=text),
            "--no-progress",
        )

    def damaged_tensor_bytes(self) -> None:
        run = self.copy("damaged")
        weights = (run / "checkpoints" / "latest").resolve() / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-4000:-3000] = b"\xff" * 1000
        weights.write_bytes(bytes(data))
        offers = lambda result: "newest good checkpoint" in result.stderr  # noqa: E731
        self.refuse(
            "accepted",
            "tensor bytes overwritten: eval --checkpoint latest",
            "eval",
            run,
            "--checkpoint",
            "latest",
            check=offers,
        )
        self.refuse(
            "accepted",
            "tensor bytes overwritten: train --resume latest",
            "train",
            run,
            "--resume",
            "latest",
            "--no-progress",
            check=offers,
        )
        self.refuse(
            "accepted",
            "tensor bytes overwritten: generate --checkpoint latest",
            "generate",
            run,
            "--checkpoint",
            "latest",
            check=offers,
        )

    def out_of_vocabulary_ids(self) -> None:
        bad = dataset(self.work / "bad-ids", bad_id_at=150)
        self.refuse(
            "accepted",
            "token id 300 >= vocab_size: train",
            "train",
            run_dir(self.work / "bad-train", bad),
            "--no-progress",
        )
        run = self.copy("bad-eval")
        train = json.loads((run / "resolved_config.json").read_text())
        train["train"]["dataset"] = str(bad)
        (run / "resolved_config.json").write_text(json.dumps(train))
        self.refuse("accepted", "token id 300 >= vocab_size: eval", "eval", run, "--checkpoint", "latest")
        self.refuse(
            "accepted",
            "prompt token ids >= vocab_size: generate",
            "generate",
            self.trained,
            "--prompt",
            "Every effort moves you",
        )

    def numeric_options(self) -> None:
        run = self.trained
        for args in (
            ["eval", run, "--batches", "0"],
            ["eval", run, "--batches", "-1"],
            ["eval", run, "--batch-size", "0"],
            ["eval", run, "--start-token", "-100"],
            ["generate", run, "--temperature", "nan"],
            ["generate", run, "--temperature", "inf"],
            ["generate", run, "--top-k", "0"],
            ["generate", run, "--tokens", "-1"],
            ["generate", run, "--seed", str(2**64)],
            ["demo", "--seconds", "nan"],
            ["prepare", "brown", self.work / "x", "--validation-fraction", "2"],
            ["bench", run, "--steps", "0"],
            ["export", run, self.work / "y", "--seed", "-1"],
        ):
            self.refuse("accepted", " ".join(str(a) for a in [args[0], *args[-2:]] if a != run), *args)

    def no_validation_split(self) -> None:
        data = dataset(self.work / "train-only", splits=("train",))
        run = run_dir(self.work / "no-val", data, train={"min_train_tokens": 2 * 16 * 2})
        result = gptlab("train", run, "--no-progress")
        self.record(
            "accepted",
            "validation_batches 1, dataset without validation split",
            classify(result, False, lambda r: "no validation split" in r.stdout),
        )

    def duplicate_keys(self) -> None:
        text = json.dumps(MODEL)[:-1] + ', "n_layers": 3}'
        self.refuse(
            "accepted",
            "model.json repeats n_layers",
            "train",
            run_dir(self.work / "dup-model", self.data, raw_model=text),
            "--no-progress",
            check=lambda r: "n_layers" in r.stderr,
        )
        text = json.dumps({"dataset": str(self.data), **TRAIN})[:-1] + ', "learning_rate": 0.1}'
        self.refuse(
            "accepted",
            "train.json repeats learning_rate",
            "train",
            run_dir(self.work / "dup-train", self.data, raw_train=text),
            "--no-progress",
            check=lambda r: "learning_rate" in r.stderr,
        )

    def edited_model_json(self) -> None:
        run = self.copy("edited")
        (run / "model.json").write_text(json.dumps({**MODEL, "n_layers": 4}))
        for command in ("eval", "generate"):
            extra = ["--prompt", "a", "--tokens", "2"] if command == "generate" else []
            result = gptlab(command, run, "--checkpoint", "latest", *extra)
            self.record(
                "accepted",
                f"{command} after model.json was edited",
                classify(result, False, lambda r: "using resolved_config.json" in r.stderr),
            )

    # --- tracebacks ---------------------------------------------------------------------------------------
    def disk_full(self) -> None:
        device = self.work / "device"
        device.mkdir()
        mounted = (
            os.geteuid() == 0
            and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=2m", f"abuse-{uuid.uuid4().hex[:6]}", str(device)],
                capture_output=True,
            ).returncode
            == 0
        )
        if not mounted:
            print("skipped   disk-full: mounting a 2 MiB tmpfs needs root", flush=True)
            return
        try:
            clean = lambda result: not [p for p in device.rglob("*") if ".tmp" in p.name]  # noqa: E731
            run = run_dir(device / "run", self.data)
            self.refuse(
                "traceback",
                "disk full while training (checkpoint)",
                "train",
                run,
                "--no-progress",
                check=lambda r: "needed" in r.stderr and clean(r),
            )
            shutil.rmtree(run)
            evaluated = Path(
                shutil.copytree(
                    self.trained,
                    device / "evaluated",
                    symlinks=True,
                    ignore=shutil.ignore_patterns("*iteration-[0-4]", "*.png"),
                )
            )
            _fill(device / "filler", 0)
            self.refuse(
                "traceback",
                "disk full: eval --save",
                "eval",
                evaluated,
                "--checkpoint",
                "latest",
                "--save",
                check=clean,
            )
            shutil.rmtree(evaluated)
            _fill(device / "filler", 100 << 10)
            self.refuse("traceback", "disk full: prepare brown", "prepare", "brown", device / "brown", check=clean)
            gpt2_sized = run_dir(
                self.work / "gpt2-sized",
                self.data,
                model={"vocab_size": 50257, "emb_dim": 8, "n_heads": 2},
                train={"min_train_tokens": 32, "checkpoint_interval": None, "validation_batches": 0},
            )
            gptlab("train", gpt2_sized, "--no-progress")
            self.refuse(
                "traceback",
                "disk full: export",
                "export",
                gpt2_sized,
                device / "exported",
                "--checkpoint",
                "latest",
                check=clean,
            )
        finally:
            subprocess.run(["umount", "-l", str(device)], check=False)

    def broken_meta(self) -> None:
        for name, content in (("meta-invalid", "{oops"), ("meta-list", "[1, 2]")):
            data = Path(shutil.copytree(self.data, self.work / name))
            (data / "meta.json").write_text(content)
            self.refuse(
                "traceback",
                f"dataset meta.json {content!r}",
                "train",
                run_dir(self.work / f"run-{name}", data),
                "--no-progress",
            )

    def other_tracebacks(self) -> None:
        (self.work / "not-a-run").mkdir()
        self.refuse("traceback", "compare on a directory that is not a run", "compare", self.work / "not-a-run")
        run = self.copy("no-model")
        (run / "checkpoints" / "latest" / "model.safetensors").unlink()
        self.refuse(
            "traceback",
            "latest lacks model.safetensors",
            "eval",
            run,
            "--checkpoint",
            "latest",
            check=lambda r: "has no model.safetensors" in r.stderr,
        )
        run = self.copy("pickle")
        latest = (run / "checkpoints" / "latest").resolve()
        state = latest / "training_state.pt"
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import torch, sys\nclass Payload: pass\ntorch.save({'step': 5, 'x': Payload()}, sys.argv[1])",
                str(state),
            ],
            check=True,
        )
        write_checksums(latest)
        self.refuse(
            "traceback",
            "pickled object in training_state.pt (checksum matches)",
            "train",
            run,
            "--resume",
            "latest",
            "--no-progress",
            check=lambda r: "weights_only=False" not in r.stderr,
        )
        subprocess.run(
            [sys.executable, "-c", "import torch, sys; torch.save({'step': 5}, sys.argv[1])", str(state)], check=True
        )
        write_checksums(latest)
        self.refuse(
            "traceback",
            "training_state.pt of another shape (checksum matches)",
            "train",
            run,
            "--resume",
            "latest",
            "--no-progress",
        )
        self.refuse(
            "traceback", "export of a 256-token model (GPT-2 tokenizer)", "export", self.trained, self.work / "exported"
        )
        experiment = self.work / "exp.json"
        baseline = self.copy("baseline")
        experiment.write_text(
            json.dumps(
                {
                    "baseline": baseline.name,
                    "seeds": "many",
                    "interventions": {"fast": {"learning_rate": "fast"}, "wide": {"model": {"emb_dim": 12.5}}},
                }
            )
        )
        self.refuse(
            "traceback",
            "experiment plan: bad seeds + wrong types inside interventions",
            "experiment",
            "plan",
            experiment,
            check=lambda r: all(word in r.stderr for word in ("seeds", "learning_rate", "emb_dim")),
        )

    # --- issue 28: failures and new-user seams -----------------------------------------------------------
    def issue28_damaged_run_files(self) -> None:
        for name, content in (("empty", ""), ("list", "[]")):
            run = self.copy(f"summary-{name}")
            (run / "summary.json").write_text(content)
            named = lambda r: "summary.json:" in r.stderr  # noqa: E731
            self.refuse("traceback", f"summary.json {name or 'empty'}: compare", "compare", run, run, check=named)
            self.refuse(
                "traceback", f"summary.json {name or 'empty'}: report", "report", run, "-o", run / "r.html", check=named
            )
        for name, content in (("empty", ""), ("partial", '{"model": {}}')):
            run = self.copy(f"resolved-{name}")
            (run / "summary.json").unlink()
            (run / "resolved_config.json").write_text(content)
            named = lambda r: "resolved_config.json:" in r.stderr  # noqa: E731
            self.refuse("traceback", f"resolved_config.json {name}: eval", "eval", run, check=named)
            self.refuse(
                "traceback", f"resolved_config.json {name}: generate", "generate", run, "--prompt", "a", check=named
            )
        run = self.copy("meta-empty")
        latest = (run / "checkpoints" / "latest").resolve()
        (latest / "meta.json").write_text("")
        (latest / "checksums.json").unlink(missing_ok=True)
        self.refuse("traceback", "empty meta.json, no checksums: export", "export", run, self.work / "meta-export")
        deep = run_dir(self.work / "deep", self.data, raw_model="[" * 100_000 + "]" * 100_000)
        self.refuse(
            "traceback", "100,000-deep model.json", "train", deep, "--no-progress", check=lambda r: "deep" in r.stderr
        )

    def issue28_resume_seams(self) -> None:
        run = self.copy("torn-metrics")
        with open(run / "metrics.jsonl", "a") as handle:
            handle.write('{"step": 9, "lo')
        older = list_checkpoints(run)[2].name
        result = gptlab("train", run, "--resume", older, "--no-progress")
        self.record("traceback", "torn last metrics.jsonl line, resume", classify(result, False))
        run = self.copy("backup-folder")
        latest = (run / "checkpoints" / "latest").resolve()
        shutil.copytree(latest, run / "checkpoints" / f"{latest.name}9-backup")
        result = gptlab("eval", run, "--checkpoint", "best")
        self.record("traceback", "*-iteration-N-backup folder: eval --checkpoint best", classify(result, False))
        result = gptlab("train", run, "--resume", list_checkpoints(run)[2].name, "--no-progress")
        noted = lambda r: "-backup" in (run / "train.log").read_text()  # noqa: E731
        self.record("traceback", "*-iteration-N-backup folder: resume (noted)", classify(result, False, noted))

    def issue28_non_finite_weights(self) -> None:
        from safetensors.torch import load_file, save_file

        run = self.copy("nan-weights")
        latest = (run / "checkpoints" / "latest").resolve()
        weights = load_file(str(latest / "model.safetensors"))
        weights["trf_blocks.0.att.W_query.weight"][0, 0] = float("nan")
        save_file(weights, str(latest / "model.safetensors"))
        write_checksums(latest)
        exit3 = lambda r: r.returncode == 3 and not (run / "evaluation.json").exists()  # noqa: E731
        self.refuse("silent", "NaN weights: eval --save (exit 3, nothing saved)", "eval", run, "--save", check=exit3)
        self.refuse("traceback", "NaN weights: generate", "generate", run, "--prompt", "a", check=exit3)
        try:
            from transformers import GPT2Config, GPT2LMHeadModel
        except ImportError:
            print("skipped   import-hf cases: transformers is not installed", flush=True)
            return
        base = self.work / "hf"
        GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=32, n_embd=32, n_layer=1, n_head=4)).save_pretrained(
            str(base)
        )
        config = json.loads((base / "config.json").read_text())
        cases = {
            "string types": lambda f: (f / "config.json").write_text(json.dumps({**config, "n_embd": "32"})),
            "huge n_positions": lambda f: (f / "config.json").write_text(json.dumps({**config, "n_positions": 10**12})),
            "non-UTF-8 config": lambda f: (f / "config.json").write_bytes(b'{"model_type": "gpt2", "x": "\xff"}'),
            "bad index": lambda f: (
                (f / "model.safetensors").rename(f / "model-1.safetensors"),
                (f / "model.safetensors.index.json").write_text('{"weight_map": {"lm_head.weight": 5}}'),
            ),
            "NaN weights": lambda f: _nan_hf(f),
        }
        for name, damage in cases.items():
            folder = Path(shutil.copytree(base, self.work / f"hf-{name.replace(' ', '-')}"))
            damage(folder)
            target = self.work / f"imported-{name.replace(' ', '-')}"
            self.refuse(
                "traceback",
                f"import-hf: {name}",
                "import-hf",
                folder,
                target,
                "--dataset",
                self.data,
                check=lambda r, target=target: not target.exists(),
            )

    def issue28_read_only(self) -> None:
        folder = self.work / "read-only"
        folder.mkdir()
        run = Path(shutil.copytree(self.trained, folder / "run", symlinks=True))
        (folder / "texts").mkdir()
        (folder / "texts" / "a.txt").write_text("some text to prepare " * 50)
        bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
        if not bound or subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode:
            if bound:
                subprocess.run(["umount", str(folder)], check=False)
            print("skipped   read-only cases: a read-only bind mount needs root", flush=True)
            return
        try:
            said = lambda r: "read-only" in r.stderr  # noqa: E731
            self.refuse(
                "traceback",
                "read-only run: train --resume",
                "train",
                run,
                "--resume",
                "latest",
                "--set",
                "log_interval=2",
                "--no-progress",
                check=said,
            )
            self.refuse("traceback", "read-only run: eval --save", "eval", run, "--save", check=said)
            self.refuse(
                "traceback",
                "read-only target: compare --charts",
                "compare",
                run,
                run,
                "--charts",
                folder / "charts",
                check=said,
            )
            self.refuse(
                "traceback", "read-only target: prepare", "prepare", folder / "texts", folder / "out", check=said
            )
            self.refuse("traceback", "read-only target: init", "init", folder / "new", "--preset", "demo", check=said)
            fresh = folder / "run"
            self.refuse(
                "traceback", "read-only run: train (fresh over it)", "train", fresh, "--no-progress", check=said
            )
        finally:
            subprocess.run(["umount", str(folder)], check=False)

    def issue28_habits(self) -> None:
        run = self.copy("habits")
        for assignment, key in (
            ("n_layer=4", "n_layers"),
            ("n_embd=64", "emb_dim"),
            ("lr=1e-3", "learning_rate"),
            ("lr_warmup_steps=3", "warmup_steps"),
            ("max_steps=10", "min_train_tokens"),
        ):
            self.refuse(
                "unclear",
                f"--set {assignment} names {key}",
                "train",
                run,
                "--set",
                assignment,
                check=lambda r, key=key: key in r.stderr,
            )
        self.refuse(
            "unclear",
            "--set learning_rate=abc blames --set",
            "train",
            self.copy("habits-2"),
            "--set",
            "learning_rate=abc",
            "--no-progress",
            check=lambda r: "--set learning_rate" in r.stderr and "train.json" not in r.stderr,
        )
        result = gptlab("eval", run, "--save")
        self.record(
            "silent", "eval --save names the file", classify(result, False, lambda r: "evaluation.json" in r.stdout)
        )
        log = (self.trained / "train.log").read_text()
        last = list_checkpoints(self.trained)[-1]
        self.record(
            "silent",
            "one step numbering (log line, checkpoint name)",
            ("right" if f"step {step_of(last)} (" in log else "silent", last.name),
        )

    def issue28_extend_and_locate(self) -> None:
        for schedule, expect in (("constant", False), ("cosine", True)):
            run = run_dir(self.work / f"extend-{schedule}", self.data, train={"lr_schedule": schedule})
            gptlab("train", run, "--no-progress")
            args = ("train", run, "--resume", "latest", "--set", f"min_train_tokens={2 * 16 * 9}", "--no-progress")
            if expect:
                self.refuse(
                    "traceback",
                    "extend a cosine run: refused, init_from offered",
                    *args,
                    check=lambda r: "init_from" in r.stderr,
                )
            else:
                self.record("silent", "extend a constant-rate run", classify(gptlab(*args), False))
        here = self.work / "cwd-a"
        shutil.copytree(self.data, here / "data")
        run = run_dir(here / "run", self.data, raw_train=json.dumps({"dataset": "data", **TRAIN}))
        subprocess.run([sys.executable, "-m", "gptlab", "train", "run", "--no-progress"], cwd=here, capture_output=True)
        elsewhere = self.work / "cwd-b"
        elsewhere.mkdir()
        result = subprocess.run(
            [sys.executable, "-m", "gptlab", "eval", str(run)],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        self.record("silent", "relative dataset, eval from another directory", classify(result, False))
        script = self.work / "script" / "notebook.py"
        script.parent.mkdir()
        script.write_text(
            'import gptlab\nprint(gptlab.prepare("brown", "data", max_tokens=20_000, workers=2)["tokens"])\n'
        )
        result = subprocess.run(
            [sys.executable, script.name], cwd=script.parent, capture_output=True, text=True, timeout=600
        )
        self.record("traceback", "API example as a plain script (spawned workers)", classify(result, False))

    def issue28_network_answers(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Answer(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                payload = (
                    b'{"data": {"gpu_1x_a10": ["wrong shape"]}}'
                    if "instance-types" in self.path
                    else b"<html>garbage\xff"
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            env = {**os.environ, "LAMBDA_API_KEY": "k-planted", "LAMBDA_API_BASE_URL": url}
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gptlab",
                    "cloud",
                    "watch",
                    "--instance-type",
                    "gpu_1x_a10",
                    "--interval",
                    "0.05",
                    "--max-hours",
                    str(20 / 3600),  # the first poll must come before the deadline on a loaded machine,
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            shaped = lambda r: "unexpected shape" in r.stdout and r.returncode == 1  # noqa: E731
            # right: each poll said so and the watch gave up at --max-hours with exit 1 (no capacity seen)
            outcome = classify(result, False)
            if outcome[0] != "traceback":
                outcome = ("right" if shaped(result) else "silent", result.stdout.strip().splitlines()[-1][:150])
            self.record("traceback", "cloud watch: JSON of the wrong shape", outcome)
            env = {**os.environ, "HF_TOKEN": "hf_planted", "HF_ENDPOINT": url, "HF_HOME": str(self.work / "hf-home")}
            result = subprocess.run(
                [sys.executable, "-m", "gptlab", "upload", str(self.trained), "alice/x"],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            self.record(
                "traceback", "upload: a garbage answer", classify(result, True, lambda r: "hf_planted" not in r.stderr)
            )
        finally:
            server.shutdown()

    # --- issue 28: safety (credentials, one writer, nothing deleted, bounded waits) -------------------
    # Outcomes beyond the four above: hang (a bound not kept), leftover (a process outliving its parent),
    # lost (a file a run had is gone or mixed), credential (a secret reached another host:port).
    def safety_credentials(self) -> None:
        from standins import Recorder, Redirector

        token, key = "987654:abuse-bot-token", "abuse_lambda_key"
        for status in (302, 307):
            with Recorder() as elsewhere, Redirector(elsewhere.url, status) as endpoint:
                env = {
                    "TELEGRAM_BOT_TOKEN": token,
                    "TELEGRAM_CHAT_ID": "1",
                    "TELEGRAM_API_BASE_URL": endpoint.url,
                    "GPTLAB_WEBHOOK_URL": endpoint.url + "/hook/s3cret",
                    "NTFY_TOPIC": "abuse-topic",
                    "NTFY_BASE_URL": endpoint.url,
                    "NTFY_TOKEN": "tk_abuse",
                }
                result = _run("notify", "test", env=env)
                sent = [line for line in result.stdout.splitlines() if line.endswith(": sent")]
                outcome = (
                    "credential"
                    if elsewhere.requests
                    else "traceback"
                    if "Traceback" in result.stderr
                    else "silent"
                    if sent or result.returncode == 0
                    else "right"
                )
                self.record(
                    "safety",
                    f"notify test, all channels redirected ({status})",
                    (outcome, result.stdout.strip().replace("\n", " | ")),
                )
            with Recorder() as elsewhere, Redirector(elsewhere.url, status) as endpoint:
                env = {"LAMBDA_API_KEY": key, "LAMBDA_API_BASE_URL": endpoint.url}
                result = _run(
                    "cloud", "watch", "--instance-type", "gpu_1x_a10", "--max-hours", str(5 / 3600), env=env, timeout=60
                )
                outcome = "credential" if elsewhere.requests else classify(result, True)[0]
                self.record(
                    "safety",
                    f"cloud watch redirected ({status})",
                    (outcome, (result.stderr or result.stdout).strip()[-150:]),
                )
        model = self.work / "hf-escape"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 1}))
        (model / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"wte.weight": "../outside/x.safetensors"}})
        )
        self.refuse(
            "safety",
            "import-hf: weight_map ../outside",
            "import-hf",
            model,
            self.work / "hf-escape-run",
            "--dataset",
            self.data,
        )
        pickled = self.work / "hf-pickle"
        pickled.mkdir()
        (pickled / "config.json").write_text((model / "config.json").read_text())
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import torch, sys, argparse\ntorch.save({'x': argparse.Namespace(a=1)}, sys.argv[1])",
                str(pickled / "pytorch_model.bin"),
            ],
            check=True,
        )
        self.refuse(
            "safety",
            "import-hf: pickle .bin",
            "import-hf",
            pickled,
            self.work / "hf-pickle-run",
            "--dataset",
            self.data,
            check=lambda r: "weights_only" not in r.stderr,
        )

    def safety_one_writer(self) -> None:
        run = run_dir(self.work / "busy", self.data, train={"min_train_tokens": 2 * 16 * 58, "checkpoint_interval": 1})
        first = subprocess.Popen(
            [sys.executable, "-m", "gptlab", "train", str(run), "--no-progress"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline and not list((run / "checkpoints").glob("*-iteration-*")):
            time.sleep(0.05)
        held = f"PID {first.pid}"
        self.refuse(
            "safety",
            "a second train on a run that trains",
            "train",
            run,
            "--no-progress",
            check=lambda r: held in r.stderr,
        )
        self.refuse(
            "safety",
            "a resume of a run that trains",
            "train",
            run,
            "--resume",
            "latest",
            "--no-progress",
            check=lambda r: held in r.stderr,
        )
        self.refuse(
            "safety", "eval --save of a run that trains", "eval", run, "--save", check=lambda r: held in r.stderr
        )
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        self.record(
            "safety",
            "metrics.jsonl after refused writers",
            ("right" if steps == sorted(set(steps)) else "lost", f"{len(steps)} steps, in order"),
        )

    def safety_nothing_deleted(self) -> None:
        run = run_dir(self.work / "leftovers", self.data)
        (run / "metrics.jsonl").write_text('{"step": 0}\n')
        (run / "train.log").write_text("first start\n")
        result = _run("train", run, "--no-progress")
        aside = list((run / "checkpoints").glob("abandoned-*/train.log"))
        kept = bool(aside) and aside[0].read_text() == "first start\n"
        self.record(
            "safety",
            "fresh train over leftovers without a checkpoint",
            ("right" if result.returncode == 0 and kept else "lost", f"moved aside: {kept}"),
        )

        run = self.copy("export-target")
        latest = (run / "checkpoints" / "latest").resolve()
        for target in (run / "checkpoints" / "latest", latest):
            self.refuse(
                "safety",
                f"export --overwrite into checkpoints/{'latest' if target.name == 'latest' else 'NEWEST'}",
                "export",
                run,
                target,
                "--overwrite",
                check=lambda r: (latest / "optimizer.pt").is_file() and (run / "checkpoints" / "latest").is_symlink(),
            )

        run = self.copy("prune")
        copy = run / "checkpoints" / "my-saved-copy-iteration-2"
        shutil.copytree(next((run / "checkpoints").glob("*-iteration-2")), copy)
        resumed = next(p.name for p in (run / "checkpoints").glob("2*-iteration-2"))
        result = _run("train", run, "--resume", resumed, "--set", "keep_checkpoints=1", "--no-progress")
        self.record(
            "safety",
            "keep_checkpoints=1 beside my-saved-copy-iteration-2",
            (
                "right"
                if result.returncode == 0 and copy.is_dir()
                else "lost"
                if not copy.is_dir()
                else classify(result, False)[0],
                f"copy kept: {copy.is_dir()}",
            ),
        )

        texts = self.work / "texts"
        texts.mkdir()
        (texts / "a.txt").write_text("words " * 500)
        self.refuse(
            "safety",
            "prepare texts texts",
            "prepare",
            texts,
            texts,
            check=lambda r: sorted(p.name for p in texts.iterdir()) == ["a.txt"],
        )
        self.refuse(
            "safety",
            "prepare texts texts/out",
            "prepare",
            texts,
            texts / "out",
            check=lambda r: not (texts / "out").exists(),
        )

        data = dataset(self.work / "data-fp")
        (data / "meta.json").write_text(json.dumps({"source": "first corpus"}))
        run = run_dir(self.work / "fingerprint", data)
        _run("train", run, "--no-progress")
        (data / "meta.json").write_text(json.dumps({"source": "another corpus"}))
        older = next(p.name for p in (run / "checkpoints").glob("*-iteration-2"))
        self.refuse(
            "safety",
            "resume after the dataset was prepared again",
            "train",
            run,
            "--resume",
            older,
            "--no-progress",
            check=lambda r: r.stderr.count("sha256:") == 2,
        )

        for seed in (-1, 2**32, 2**64 - 1):
            run = run_dir(self.work / f"seed{seed}", self.data, train={"random_seed": seed})
            self.refuse("safety", f"random_seed {seed}", "train", run, "--no-progress")
        run = run_dir(self.work / "huge", self.data, model={"n_layers": 1000000})
        started = time.time()
        try:
            result = _run("train", run, "--no-progress", timeout=120)
            outcome = classify(result, True, check=lambda r: "GiB" in r.stderr)
            if time.time() - started > 60:
                outcome = ("hang", f"refused after {time.time() - started:.0f} s")
        except subprocess.TimeoutExpired:
            outcome = ("hang", "n_layers 1000000 still building after 120 s")
        self.record("safety", "n_layers: 1000000", outcome)

    def safety_children_and_waits(self) -> None:
        from standins import LambdaStandIn, Trickler, children_of, is_running

        source = self.work / "big.txt"
        with source.open("w") as handle:
            for number in range(40000):
                handle.write(f"Document {number} keeps a tokeniser busy for a while. " * 12 + "\n\n")
        for signum in (signal.SIGKILL, signal.SIGTERM):
            prepare = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gptlab",
                    "prepare",
                    str(source),
                    str(self.work / f"big-{signum}"),
                    "--workers",
                    "2",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.time() + 120
            while time.time() < deadline and len(children_of(prepare.pid)) < 2 and prepare.poll() is None:
                time.sleep(0.05)
            children = children_of(prepare.pid)
            os.kill(prepare.pid, signum)
            prepare.wait()
            deadline = time.time() + 10
            while time.time() < deadline and any(is_running(pid) for pid in children):
                time.sleep(0.1)
            left = [pid for pid in children if is_running(pid)]
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            self.record(
                "safety",
                f"prepare --workers 2, {signal.Signals(signum).name}",
                ("leftover" if left else "right", f"{len(children)} children, {len(left)} left"),
            )

        key = "abuse_lambda_key"

        class EndlessRetryAfter(LambdaStandIn):
            def handle(self, handler, method, path, body):
                self.reply(handler, 429, {"error": {"code": "global/too-many-requests"}}, {"Retry-After": "inf"})

        for name, server in (("Retry-After: inf", EndlessRetryAfter(key)), ("a byte every 0.2 s", Trickler(0.2))):
            with server:
                started = time.time()
                try:
                    result = _run(
                        "cloud",
                        "watch",
                        "--instance-type",
                        "gpu_1x_a10",
                        "--interval",
                        "0.05",
                        "--max-hours",
                        str(3 / 3600),
                        env={"LAMBDA_API_KEY": key, "LAMBDA_API_BASE_URL": server.url},
                        timeout=90,
                    )
                    took = time.time() - started
                    outcome = (
                        ("traceback", result.stderr.strip()[-150:])
                        if "Traceback" in result.stderr
                        else (
                            "right" if result.returncode == 1 and took < 30 else "hang",
                            f"--max-hours 3 s ended after {took:.0f} s",
                        )
                    )
                except subprocess.TimeoutExpired:
                    outcome = ("hang", "--max-hours 3 s still watching after 90 s")
                self.record("safety", f"cloud watch --max-hours against {name}", outcome)
        with Trickler(0.2) as server:
            for signum in (signal.SIGTERM, signal.SIGINT):
                watch = subprocess.Popen(
                    [sys.executable, "-m", "gptlab", "cloud", "watch", "--instance-type", "gpu_1x_a10"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "LAMBDA_API_KEY": key, "LAMBDA_API_BASE_URL": server.url},
                )
                time.sleep(3)
                stopped = time.time()
                watch.send_signal(signum)
                try:
                    _, err = watch.communicate(timeout=60)
                    took = time.time() - stopped
                    outcome = (
                        ("traceback", err.strip()[-150:])
                        if "Traceback" in err
                        else ("right" if took < 5 else "hang", f"stopped {took:.1f} s after the signal")
                    )
                except subprocess.TimeoutExpired:
                    watch.kill()
                    outcome = ("hang", "still running 60 s after the signal")
                self.record("safety", f"cloud watch, {signal.Signals(signum).name} during a trickled answer", outcome)


def _run(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gptlab", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# --- end of issue 28: safety ---------------------------------------------------------------------------


def _nan_hf(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    weights["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _fill(path: Path, leave_bytes: int) -> None:
    path.unlink(missing_ok=True)
    free = shutil.disk_usage(path.parent).free
    try:
        with open(path, "wb") as handle:
            handle.write(b"\0" * max(0, free - leave_bytes))
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", type=Path, default=None, help="Folder to work in (default: a fresh temporary one, removed after)."
    )
    parser.add_argument("--only", default="", help="Run only the groups whose method name contains this.")
    options = parser.parse_args()
    work = options.work or Path(tempfile.mkdtemp(prefix="gptlab-abuse-"))
    started = time.perf_counter()
    try:
        abuse = Abuse(work)
        groups = [
            "resume_from_older_checkpoint",
            "non_finite",
            "damaged_tensor_bytes",
            "out_of_vocabulary_ids",
            "numeric_options",
            "no_validation_split",
            "duplicate_keys",
            "edited_model_json",
            "disk_full",
            "broken_meta",
            "other_tracebacks",
            "issue28_damaged_run_files",
            "issue28_resume_seams",
            "issue28_non_finite_weights",
            "issue28_read_only",
            "issue28_habits",
            "issue28_extend_and_locate",
            "issue28_network_answers",
            # issue 28: safety
            "safety_credentials",
            "safety_one_writer",
            "safety_nothing_deleted",
            "safety_children_and_waits",
        ]
        for group in groups:
            if options.only in group:
                getattr(abuse, group)()
    finally:
        if options.work is None:
            shutil.rmtree(work, ignore_errors=True)
    counts = Counter(outcome for *_, outcome, _ in abuse.rows)
    print(
        f"\n{len(abuse.rows)} cases in {time.perf_counter() - started:.0f} s: "
        + ", ".join(
            f"{counts.get(k, 0)} {k}"
            for k in ("right", "traceback", "silent", "unclear", "hang", "leftover", "lost", "credential")
        )
    )
    sys.exit(0 if counts.get("right", 0) == len(abuse.rows) else 1)


if __name__ == "__main__":
    main()
