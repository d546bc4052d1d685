"""A resume checks that the dataset is the one the run trained on: a folder prepared again from another
corpus is refused, naming both fingerprints; a checkpoint of an older gptlab resumes with a note."""

import json

import pytest
from conftest import write_run

from gptlab.data.prepare import prepare_dataset
from gptlab.data.tokens import TokenDataset
from gptlab.errors import UserError
from gptlab.runtime.checkpoint import list_checkpoints
from gptlab.train.loop import train_run


def _corpus(path, word):
    path.write_text(
        "\n<|endoftext|>\n".join(f"{word} number {n} " + f"{word} and more {word} words. " * 40 for n in range(80))
    )
    return path


def test_a_resume_refuses_a_dataset_prepared_again_from_another_corpus(tmp_path):
    data = tmp_path / "data"
    prepare_dataset(str(_corpus(tmp_path / "a.txt", "apple")), data, show_progress=False)
    first = TokenDataset(data).fingerprint()
    prepare_dataset(str(tmp_path / "a.txt"), data, overwrite=True, show_progress=False)
    assert TokenDataset(data).fingerprint() == first  # the same tokens again: the same fingerprint

    run = write_run(tmp_path / "run", data, train={"min_train_tokens": 4 * 32 * 4, "checkpoint_interval": 2})
    train_run(run, show_progress=False)
    earliest = list_checkpoints(run)[0]
    assert json.loads((earliest / "meta.json").read_text())["dataset_fingerprint"] == first

    prepare_dataset(str(_corpus(tmp_path / "b.txt", "banana")), data, overwrite=True, show_progress=False)
    second = TokenDataset(data).fingerprint()
    assert second != first
    with pytest.raises(UserError) as raised:
        train_run(run, resume=earliest.name, show_progress=False)
    (line,) = raised.value.lines
    assert f"its fingerprint was {first}, the folder's is now {second}" in line
    assert len(list_checkpoints(run)) == 3  # refused before anything was moved

    meta = json.loads((earliest / "meta.json").read_text())
    del meta["dataset_fingerprint"]  # as an older gptlab wrote it (and without checksums)
    (earliest / "meta.json").write_text(json.dumps(meta))
    (earliest / "checksums.sha256").unlink()
    train_run(run, resume=earliest.name, show_progress=False)
    assert "has no dataset fingerprint (written by an older gptlab)" in (run / "train.log").read_text()
