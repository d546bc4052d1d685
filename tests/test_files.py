"""files.atomic_folder: the one way a folder (a checkpoint, an export, an imported run) is written."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from gptlab.files import atomic_folder, remove_stale_staging


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_folder_appears_whole_replaces_the_old_one_and_its_files_are_shareable(tmp_path):
    final = tmp_path / "out"
    with atomic_folder(final) as staging:
        (staging / "a.txt").write_text("first")
        os.chmod(staging / "a.txt", 0o600)  # as safetensors and mkstemp write
        assert not final.exists()
    assert (final / "a.txt").read_text() == "first"
    assert stat.S_IMODE((final / "a.txt").stat().st_mode) == 0o666 & ~_umask()
    with atomic_folder(final) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_error_inside_leaves_the_old_folder_and_no_staging(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_folder(final) as staging:
            (staging / "half.txt").write_text("new")
            raise RuntimeError("disk full")
    assert [p.name for p in final.iterdir()] == ["kept.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_leftovers_of_a_killed_process_are_cleared_and_a_moved_aside_folder_put_back(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    (tmp_path / f".a.{dead}-0123abcd.tmp").mkdir()
    (tmp_path / f".a.{alive}-0123abcd.tmp").mkdir()  # a writer still at work: left alone
    aside = tmp_path / f".b.{dead}-89abcdef.old"
    (aside / "replaced").mkdir(parents=True)
    (aside / "replaced" / "x.txt").write_text("the only copy")
    remove_stale_staging(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".a.{alive}-0123abcd.tmp", "b"]
    assert (tmp_path / "b" / "x.txt").read_text() == "the only copy"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
