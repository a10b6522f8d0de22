"""Where android_demo/benchmark.py keeps results: OUT/device/android/ always holds one complete
session. A new session is written to a hidden staging folder beside it and swapped in only when
every run has validated; a failed session leaves the previous files as they were."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SESSION_FILES = ("benchmark_results*.json", "benchmark_results*.json.invalid",
                 "benchmark_results*.json.unparseable", "report.md")
STAGING_PREFIX = ".staging-"
PREVIOUS_PREFIX = ".previous-"


def session_files(folder: Path) -> list[Path]:
    """The files one session owns in OUT/device/android/ (nothing else there is touched)."""
    found = {p for pattern in SESSION_FILES for p in folder.glob(pattern) if p.is_file()}
    return sorted(found)


def _pid_alive(name: str, prefix: str) -> bool:
    try:
        pid = int(name[len(prefix):].split("-", 1)[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(out_dir: Path) -> None:
    """Tidy what a killed earlier run left: its staging folder, or a half-done swap."""
    for d in sorted(out_dir.glob(STAGING_PREFIX + "*")):
        if d.is_dir() and not _pid_alive(d.name, STAGING_PREFIX):
            shutil.rmtree(d, ignore_errors=True)
    for d in sorted(out_dir.glob(PREVIOUS_PREFIX + "*")):
        if not d.is_dir() or _pid_alive(d.name, PREVIOUS_PREFIX):
            continue
        if not list(out_dir.glob("benchmark_results*.json")):  # killed mid-swap: put the old session back
            for f in d.iterdir():
                os.replace(f, out_dir / f.name)
            print(f"restored the previous results from {d.name} (an earlier run was interrupted)")
        shutil.rmtree(d, ignore_errors=True)


def new_staging(out_dir: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))


def write_file(folder: Path, name: str, text: str) -> Path:
    target = folder / name
    part = folder / (name + ".part")
    part.write_text(text)
    os.replace(part, target)
    return target


def commit_session(staging: Path, out_dir: Path) -> list[Path]:
    """Swap the staged session in for the previous one; on an error, put everything back."""
    backup = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{PREVIOUS_PREFIX}{os.getpid()}-"))
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for old in session_files(out_dir):
            os.replace(old, backup / old.name)
            moved_old.append(old.name)
        for new in sorted(staging.iterdir()):
            os.replace(new, out_dir / new.name)
            moved_new.append(new.name)
    except OSError:
        for name in moved_new:
            os.replace(out_dir / name, staging / name)
        for name in moved_old:
            os.replace(backup / name, out_dir / name)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return [out_dir / n for n in moved_new]


def keep_rejected(out_dir: Path, name: str, text: str) -> Path:
    """A rejected run's file, beside (never instead of) the previous results."""
    return write_file(out_dir, name, text)
