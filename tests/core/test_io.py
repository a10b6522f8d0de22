"""Atomic writes, the OUT lock, and recovery after a kill: nothing half-written survives, nothing good is lost."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import io as atomic

WRITE_DIR = """
import sys
from pathlib import Path
from core import io as atomic

def fill(tmp, text):
    tmp.mkdir()
    (tmp / "weight.bin").write_text(text)

atomic.atomic_write(Path(sys.argv[1]), lambda tmp: fill(tmp, sys.argv[2]))
"""


def run_writer(target: Path, text: str, fault: str | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    if fault:
        env["MOBILE_PIPELINE_FAULT"] = f"{fault}:{target.name}"
    return subprocess.run([sys.executable, "-c", WRITE_DIR, str(target), text], env=env, timeout=60).returncode


def test_kill_between_the_two_renames_is_recovered(tmp_path):
    target = tmp_path / "model.mlpackage"
    assert run_writer(target, "v1") == 0
    assert run_writer(target, "v2", fault="between-renames") == 137  # killed: no cleanup ran
    assert not target.exists() and (tmp_path / ".old.model.mlpackage").is_dir()
    actions = atomic.recover(tmp_path)
    assert target.is_dir() and (target / "weight.bin").read_text() == "v1"
    assert any("restored" in a for a in actions)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]


def test_kill_before_the_rename_leaves_the_old_file_and_a_temporary_that_recover_removes(tmp_path):
    target = tmp_path / "model.mlpackage"
    assert run_writer(target, "v1") == 0
    assert run_writer(target, "v2", fault="before-rename") == 137
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp.")]
    assert temps, "the killed writer should have left its temporary behind"
    atomic.recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]
    assert (target / "weight.bin").read_text() == "v1"


def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")

    def full(self, data):
        with open(self, "wb") as fh:
            fh.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(atomic.OutputDirError, match=r"cannot write .*big\.bin .*the disk is full"):
        atomic.write_bytes(target, b"x" * 1000)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_a_read_only_folder_is_named(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.os, "replace", read_only)
    with pytest.raises(atomic.OutputDirError, match=r"cannot write .*x\.json .*read-only"):
        atomic.write_json(tmp_path / "x.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_free_space_is_checked_before_a_large_write(tmp_path, monkeypatch):
    class Usage:
        free = 1024

    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(atomic.OutputDirError, match="not enough free space for big.bin"):
        atomic.write_bytes(tmp_path / "big.bin", b"x" * 4096)
    assert list(tmp_path.iterdir()) == []


def test_the_lock_admits_one_writer_and_names_it(tmp_path):
    with atomic.OutLock(tmp_path, "mobile-pipeline train"):
        with pytest.raises(atomic.LockError, match=rf"in use by pid {os.getpid()} .*mobile-pipeline train"):
            with atomic.OutLock(tmp_path, "mobile-pipeline export"):
                pass
    with atomic.OutLock(tmp_path, "mobile-pipeline export"):  # released on exit
        pass


def test_the_lock_of_a_killed_process_is_free(tmp_path):
    code = ("import os, sys; from core import io; l = io.OutLock(sys.argv[1], 'holder').__enter__(); os._exit(9)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, timeout=60).returncode == 9
    with atomic.OutLock(tmp_path, "after a kill"):
        pass


def test_intact_compares_the_recorded_sha256(tmp_path):
    f = tmp_path / "a.pte"
    f.write_bytes(b"program")
    digest = atomic.sha256(f)
    assert atomic.intact(f, digest)
    f.write_bytes(b"program, truncated")
    assert not atomic.intact(f, digest)
    assert not atomic.intact(tmp_path / "missing", digest) and not atomic.intact(f, None)
