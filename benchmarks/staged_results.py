"""Swap a staged benchmark session in for the previous one, all or nothing (standard library only:
the device scripts in android_demo/ and ios_demo/ use it, and they must not need the ML stack)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def swap_in(staging: Path, out_dir: Path, old_names: list[str], backup_prefix: str) -> list[Path]:
    """Move `old_names` out of `out_dir` into a backup folder, then every entry of `staging` in.
    On an OSError, everything moved so far is put back, and the error is raised."""
    backup = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{backup_prefix}{os.getpid()}-"))
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
