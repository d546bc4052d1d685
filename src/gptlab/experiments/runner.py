"""`gptlab experiment run`: train and evaluate every planned run in turn, so it can be stopped and restarted.

A run with a summary and a final checkpoint is finished and skipped (evaluated if it has no current
evaluation); a run with checkpoints but no summary was interrupted and is resumed from its latest
checkpoint; any other run starts from scratch. With a launcher each run trains in a subprocess
`LAUNCHER -m gptlab train RUN_DIR ...` (for example under torchrun); with `jobs` > 1 that many runs train
at once, each in a subprocess with the machine's cores shared among them. A run that stops before its last
step (SIGTERM, Ctrl-C) stops the experiment: the next `experiment run` resumes it. A stack of winners
(winners.py) is chosen once every other run has finished, then trained.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from gptlab.errors import UserError
from gptlab.experiments.compare import evaluate_and_save, evaluation_is_current
from gptlab.experiments.plan import PlannedRun, plan_runs, write_plan
from gptlab.experiments.spec import Experiment
from gptlab.locks import exclusive
from gptlab.notify.training import send_test_loss
from gptlab.rundir import LOCK_FILE, TRAIN_LOG, read_evaluation, read_summary
from gptlab.runtime.checkpoint import find_checkpoint, list_checkpoints
from gptlab.words import loss_with_perplexity

FINISHED, INTERRUPTED, NEW = "finished", "interrupted", "new"


def last_checkpoint_step(run_dir: Path) -> Optional[int]:
    if not list_checkpoints(run_dir):
        return None
    return int(find_checkpoint(run_dir, "latest").meta["global_step"])


def run_state(run_dir: Path) -> str:
    """finished (summary written and the last step checkpointed), interrupted (checkpoints only) or new."""
    last_step = last_checkpoint_step(run_dir)
    summary = read_summary(run_dir)
    if summary is not None and (last_step is None or last_step + 1 >= int(summary["steps"])):
        return FINISHED
    return INTERRUPTED if last_step is not None else NEW


def train_command(
    launcher: str, run_dir: Path, resume: bool, datasets_dir: Optional[Path], show_progress: bool
) -> list[str]:
    command = shlex.split(launcher) + ["-m", "gptlab", "train", str(run_dir)]
    if resume:
        command += ["--resume", "latest"]
    if datasets_dir is not None:
        command += ["--datasets-dir", str(datasets_dir)]
    return command + ([] if show_progress else ["--no-progress"])


class ExperimentStopped(UserError):
    """A run stopped before its last step (SIGTERM, SIGINT, a preemption): the experiment stops too, to be resumed."""

    def __init__(self, run_dir: Path, experiment_path: Path, signal_name: Optional[str]):
        super().__init__(
            f"{run_dir}: stopped before its last step"
            + (f" by {signal_name}" if signal_name else "")
            + f"; its checkpoints are kept. Run `gptlab experiment run {experiment_path}` again to resume it and go on"
        )
        self.exit_code = 128 + int(getattr(signal, signal_name)) if signal_name in ("SIGTERM", "SIGINT") else 1


def _train_in_process(
    run: PlannedRun, resume: bool, datasets_dir: Optional[Path], show_progress: bool
) -> Optional[str]:
    """Train in this process; returns the name of the signal that stopped it early, if one did."""
    from gptlab.train.loop import train_run

    outcome = train_run(run.run_dir, datasets_dir, resume="latest" if resume else None, show_progress=show_progress)
    return outcome.get("signal") if isinstance(outcome, dict) and outcome.get("interrupted") else None


class Children:
    """The training subprocesses of a parallel experiment (`--jobs N`): a SIGTERM or SIGINT sent to the experiment
    reaches every one of them as SIGTERM, each finishes its step and checkpoints, and no new one starts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[subprocess.Popen] = set()
        self.received: list[str] = []

    def forward(self, signum: int, frame: Any) -> None:
        with self.lock:
            self.received.append(signal.Signals(signum).name)
            for process in self.live:
                process.send_signal(signal.SIGTERM)

    def started(self, process: subprocess.Popen) -> None:
        with self.lock:
            self.live.add(process)
            if self.received:  # started as the signal came: it stops at once too
                process.send_signal(signal.SIGTERM)

    def ended(self, process: subprocess.Popen) -> None:
        with self.lock:
            self.live.discard(process)


def _train_under_launcher(
    run: PlannedRun,
    resume: bool,
    launcher: str,
    datasets_dir: Optional[Path],
    show_progress: bool,
    children: Optional[Children] = None,
    env: Optional[dict[str, str]] = None,
) -> Optional[str]:
    """Train in a subprocess. SIGTERM or SIGINT sent to this process is passed on to it as SIGTERM (the training
    loop's cue to checkpoint and stop), so a scheduler that signals only the parent still stops cleanly. Under
    `children` (several runs at once) their owner forwards the signals, and the run's printed lines go only to its
    train.log, so that parallel runs do not interleave on the screen."""
    command = train_command(launcher, run.run_dir, resume, datasets_dir, show_progress)
    try:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL if children is not None else None)
    except FileNotFoundError:
        raise UserError(
            f"--launcher {launcher}: '{command[0]}' was not found; give a command on PATH, e.g. torchrun --nproc_per_node 8"
        ) from None
    received: list[str] = []

    def pass_on(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        process.send_signal(signal.SIGTERM)

    forwarding = children is None and threading.current_thread() is threading.main_thread()
    previous = (
        {signum: signal.signal(signum, pass_on) for signum in (signal.SIGTERM, signal.SIGINT)} if forwarding else {}
    )
    if children is not None:
        children.started(process)
    try:
        returncode = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if children is not None:
            children.ended(process)
    if children is not None and children.received:
        return children.received[0]
    if received:
        return received[0]
    if returncode != 0:
        raise UserError(
            f"{run.run_dir}: training under `{shlex.join(command)}` failed with exit code {returncode}; "
            f"see {run.run_dir / TRAIN_LOG}, then run the experiment again to resume"
        )
    return None


def train_planned(
    run: PlannedRun,
    resume: bool,
    launcher: Optional[str],
    datasets_dir: Optional[Path],
    show_progress: bool,
    experiment_path: Path = Path("EXPERIMENT_FILE"),
    children: Optional[Children] = None,
    env: Optional[dict[str, str]] = None,
) -> None:
    """Train one planned run to its last step, or raise ExperimentStopped."""
    if launcher is None:
        signal_name = _train_in_process(run, resume, datasets_dir, show_progress)
    else:
        signal_name = _train_under_launcher(run, resume, launcher, datasets_dir, show_progress, children, env)
    if signal_name is not None or run_state(run.run_dir) != FINISHED:
        raise ExperimentStopped(run.run_dir, experiment_path, signal_name)


def _draw_charts(run_dir: Path) -> None:
    from gptlab.train.charts import draw_run_charts

    draw_run_charts(run_dir)


def run_experiment(
    experiment: Experiment,
    launcher: Optional[str] = None,
    datasets_dir: Optional[Path] = None,
    show_progress: bool = False,
    echo: Callable[[str], Any] = print,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Plan, then train and evaluate each run not yet done; with `jobs` > 1 that many train at once, each in a
    subprocess. A stack of winners is chosen once the interventions have finished, then trained. Returns one record
    per run. A second `experiment run` of the same file is refused while this one runs (each run's own lock, taken
    by its training, would only stop it at the first run both reach, after the plan was rewritten under it)."""
    path = Path(experiment.path)
    lock = path.parent / f".{path.name}{LOCK_FILE}"  # beside the file: .exp.json.gptlab.lock
    with exclusive(lock, f"experiment {path}", "gptlab experiment run"):
        outcomes = _run_locked(experiment, launcher, datasets_dir, show_progress, echo, jobs)
        from gptlab.experiments import winners

        pending = winners.unchosen(experiment)
        if not pending:
            return outcomes
        rows = experiment_comparison(experiment, datasets_dir, echo=lambda line: None).rows
        for name in pending:
            choice = winners.choose(experiment, name, rows)
            winners.record(experiment, choice)
            echo(winners.choice_words(choice))
        from gptlab.experiments.spec import load_experiment

        # the file again, now with the chosen stacks among its variants, on the same seeds
        again = replace(load_experiment(path), seeds=experiment.seeds)
        done = {outcome["run_dir"] for outcome in outcomes}
        more = _run_locked(again, launcher, datasets_dir, show_progress, echo, jobs, skip=done)
        return outcomes + more


def thread_environment(jobs: int) -> Optional[dict[str, str]]:
    """The environment of each of `jobs` parallel training processes: the machine's cores shared among them
    (OMP_NUM_THREADS, which torch reads at start), unless OMP_NUM_THREADS is set already."""
    if jobs <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // jobs))}


def _run_locked(
    experiment: Experiment,
    launcher: Optional[str],
    datasets_dir: Optional[Path],
    show_progress: bool,
    echo: Callable[[str], Any],
    jobs: int = 1,
    skip: frozenset[str] | set[str] = frozenset(),
) -> list[dict[str, Any]]:
    planned = [run for run in plan_runs(experiment) if str(run.run_dir) not in skip]
    write_plan(planned)
    total = len(planned)
    prefixes = {
        run.run_dir: f"[{number}/{total}] {run.variant} seed {run.seed} ({run.run_dir})"
        for number, run in enumerate(planned, start=1)
    }
    states = {run.run_dir: run_state(run.run_dir) for run in planned}
    outcomes: dict[Path, dict[str, Any]] = {}

    def evaluated(run: PlannedRun) -> dict[str, Any]:
        """The run's evaluation: the saved one when current, else computed and saved (thread-safe: torch only)."""
        if evaluation_is_current(run.run_dir, experiment.evaluation):
            return read_evaluation(run.run_dir)
        evaluation = evaluate_and_save(run.run_dir, experiment.evaluation, datasets_dir)
        send_test_loss(run.run_dir, evaluation)
        return evaluation

    def report(run: PlannedRun, evaluation: dict[str, Any]) -> None:
        echo(f"{prefixes[run.run_dir]}: test loss {loss_with_perplexity(evaluation['loss'])}")
        outcomes[run.run_dir] = {
            "variant": run.variant,
            "seed": run.seed,
            "run_dir": str(run.run_dir),
            "state_before": states[run.run_dir],
            "test_loss": evaluation["loss"],
        }

    def announce(run: PlannedRun) -> bool:
        """Says what happens to the run; True when it needs training."""
        state = states[run.run_dir]
        if state == FINISHED:
            echo(f"{prefixes[run.run_dir]}: finished earlier, not retrained")
            return False
        resume_step = last_checkpoint_step(run.run_dir) if state == INTERRUPTED else None
        echo(
            f"{prefixes[run.run_dir]}: "
            + (f"resuming after step {resume_step}" if resume_step is not None else "training")
        )
        return True

    if jobs <= 1:
        for run in planned:
            if announce(run):
                train_planned(
                    run, states[run.run_dir] == INTERRUPTED, launcher, datasets_dir, show_progress, experiment.path
                )
                _draw_charts(run.run_dir)
            report(run, evaluated(run))
    else:
        _run_parallel(planned, states, experiment, launcher, datasets_dir, jobs, announce, evaluated, report)
    sys.stdout.flush()
    return [outcomes[run.run_dir] for run in planned if run.run_dir in outcomes]


def _run_parallel(
    planned: list[PlannedRun],
    states: dict[Path, str],
    experiment: Experiment,
    launcher: Optional[str],
    datasets_dir: Optional[Path],
    jobs: int,
    announce: Callable[[PlannedRun], bool],
    evaluated: Callable[[PlannedRun], dict[str, Any]],
    report: Callable[[PlannedRun, dict[str, Any]], None],
) -> None:
    """`jobs` runs train at once, each in a subprocess (`launcher`, default this Python) with the cores shared
    among them, and each is evaluated in this process's worker thread as it finishes, with torch's threads shared
    alike; charts (matplotlib is not thread-safe) and printing stay in this thread. A failure or a signal lets the
    runs in progress finish (or checkpoint), starts no new one, and is raised once they have."""
    import torch

    children = Children()
    env = thread_environment(jobs)
    if env is not None:
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))

    def train_and_evaluate(run: PlannedRun) -> dict[str, Any]:
        train_planned(
            run, states[run.run_dir] == INTERRUPTED, command, datasets_dir, False, experiment.path, children, env
        )
        return evaluated(run)

    command = launcher or shlex.quote(sys.executable)
    forwarding = threading.current_thread() is threading.main_thread()
    previous = (
        {signum: signal.signal(signum, children.forward) for signum in (signal.SIGTERM, signal.SIGINT)}
        if forwarding
        else {}
    )
    failures: list[BaseException] = []
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            running = {}
            queue = list(planned)
            while queue or running:
                while queue and len(running) < jobs and not failures and not children.received:
                    run = queue.pop(0)
                    if not announce(run):
                        running[pool.submit(evaluated, run)] = run
                        continue
                    running[pool.submit(train_and_evaluate, run)] = run
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    run = running.pop(future)
                    try:
                        evaluation = future.result()
                    except BaseException as error:  # noqa: BLE001 - raised below, once the others have stopped
                        failures.append(error)
                        continue
                    if states[run.run_dir] != FINISHED:
                        _draw_charts(run.run_dir)
                    report(run, evaluation)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failures:
        stopped = [f for f in failures if isinstance(f, ExperimentStopped)]
        raise (stopped or failures)[0]


def experiment_comparison(
    experiment: Experiment,
    datasets_dir: Optional[Path] = None,
    echo: Callable[[str], Any] = print,
    allow_mixed_checkpoints: bool = False,
    budget: bool = False,
):
    """The comparison of an experiment's finished runs, grouped by variant; runs not finished yet are noted."""
    from gptlab.experiments.compare import build_comparison, load_results

    planned = plan_runs(experiment)
    from gptlab.experiments.compare import stopped_on_non_finite

    # a run that stopped itself on non-finite steps is done too: its verdict is that it diverged
    finished = [
        run
        for run in planned
        if run.run_dir.is_dir() and (run_state(run.run_dir) == FINISHED or stopped_on_non_finite(run.run_dir))
    ]
    if not any(run.variant == "baseline" for run in finished):
        raise UserError(
            f"{experiment.path}: no baseline run has finished yet; run `gptlab experiment run {experiment.path}` first"
        )
    for run in finished:  # the file's evaluation keys may have changed since the run was evaluated
        if run_state(run.run_dir) == FINISHED and not evaluation_is_current(run.run_dir, experiment.evaluation):
            echo(f"Evaluating {run.run_dir} as {experiment.path} asks ...")
            evaluate_and_save(run.run_dir, experiment.evaluation, datasets_dir)
    results = load_results([run.run_dir for run in finished], experiment.evaluation, datasets_dir, echo)
    labels = {run.run_dir.resolve(): run.variant for run in finished}
    comparison = build_comparison(
        results,
        labels=labels,
        baseline_dir=next(run.run_dir for run in finished if run.variant == "baseline"),
        allow_mixed_checkpoints=allow_mixed_checkpoints,
        budget=budget,
    )
    from gptlab.experiments.winners import unchosen

    for name in unchosen(experiment):
        comparison.notes.append(
            f"{name}: a stack of the winners, not chosen yet: `gptlab experiment run {experiment.path}` chooses it once "
            "every intervention has finished, then trains it."
        )
    waiting = len(planned) - len(finished)
    if waiting:
        comparison.notes.append(
            f"{waiting} of {len(planned)} planned runs have not finished; `gptlab experiment run {experiment.path}` trains them."
        )
    return comparison
