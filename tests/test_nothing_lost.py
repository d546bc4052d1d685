"""Nothing a run holds is deleted without a word: leftovers of an earlier start are moved aside, an export
never lands in a run's checkpoints/, pruning touches only folders gptlab wrote."""

import shutil

import pytest

from gptlab.errors import UserError
from gptlab.export.hf import check_export_target
from gptlab.runtime.checkpoint import list_checkpoints, prune_checkpoints
from gptlab.train.loop import train_run


def test_leftovers_are_moved_aside_and_exports_and_pruning_spare_what_gptlab_did_not_write(make_run, capsys):
    run = make_run(train={"checkpoint_interval": 4})
    (run / "metrics.jsonl").write_text('{"step": 0, "train_loss": 10.9}\n')  # a start killed before its checkpoint
    (run / "train.log").write_text("the first start's log\n")
    train_run(run, show_progress=False)

    (aside,) = (run / "checkpoints").glob("abandoned-*")
    assert (aside / "metrics.jsonl").read_text() == '{"step": 0, "train_loss": 10.9}\n'
    assert (aside / "train.log").read_text() == "the first start's log\n"
    assert (
        f"Moved metrics.jsonl and train.log of an earlier start without checkpoints to {aside}"
        in (run / "train.log").read_text()
    )
    assert "the first start's log" not in (run / "train.log").read_text()

    checkpoints = list_checkpoints(run)
    assert len(checkpoints) >= 3
    for target in (run / "checkpoints" / "latest", run / "checkpoints" / "best", checkpoints[-1], run / "checkpoints"):
        with pytest.raises(UserError, match=r"inside the run .*'s checkpoints/ folder, .*even with --overwrite"):
            check_export_target(target, True, run)

    copy = run / "checkpoints" / "my-saved-copy-iteration-2"
    shutil.copytree(checkpoints[0], copy)
    removed = prune_checkpoints(run, 1)
    assert copy.is_dir() and (copy / "meta.json").is_file()  # the user's copy, though it holds a checkpoint
    assert checkpoints[0] in removed and checkpoints[-1].is_dir()
