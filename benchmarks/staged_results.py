"""Swap a staged benchmark session in for the previous one, all or nothing (standard library only:
the device scripts in android_demo/ and ios_demo/ use it, and they must not need the ML stack)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


STAGING_PREFIX = ".staging-"
PREVIOUS_PREFIX = ".previous-"


def swap_in(staging: Path, out_dir: Path, old_names: list[str]) -> list[Path]:
    """Move `old_names` out of `out_dir` into a backup folder, then every entry of `staging` in.
    On an OSError, everything moved so far is put back, and the error is raised."""
    backup = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{PREVIOUS_PREFIX}{os.getpid()}-"))
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in old_names:
            os.replace(out_dir / name, backup / name)
            moved_old.append(name)
        for entry in sorted(staging.iterdir()):
            os.replace(entry, out_dir / entry.name)
            moved_new.append(entry.name)
    except OSError:
        for name in moved_new:
            os.replace(out_dir / name, staging / name)
        for name in moved_old:
            os.replace(backup / name, out_dir / name)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return [out_dir / n for n in moved_new]



def new_staging(out_dir: Path) -> Path:
    """A hidden folder in `out_dir`, named for this process, where a new session is written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))


def _pid_alive(name: str, prefix: str) -> bool:
    try:
        os.kill(int(name[len(prefix):].split("-", 1)[0]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(out_dir: Path, has_results) -> None:
    """Tidy what a killed earlier run left: its staging folder, or a half-done swap (when
    `has_results(out_dir)` is false, the previous session is put back from its backup)."""
    for d in sorted(out_dir.glob(STAGING_PREFIX + "*")):
        if d.is_dir() and not _pid_alive(d.name, STAGING_PREFIX):
            shutil.rmtree(d, ignore_errors=True)
    for d in sorted(out_dir.glob(PREVIOUS_PREFIX + "*")):
        if not d.is_dir() or _pid_alive(d.name, PREVIOUS_PREFIX):
            continue
        if not has_results(out_dir):  # killed mid-swap: put the old session back
            for entry in d.iterdir():
                os.replace(entry, out_dir / entry.name)
            print(f"restored the previous results from {d.name} (an earlier run was interrupted)")
        shutil.rmtree(d, ignore_errors=True)
