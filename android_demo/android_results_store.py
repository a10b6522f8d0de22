"""Where android_demo/benchmark.py keeps results: OUT/device/android/ always holds one complete
session. A new session is written to a hidden staging folder beside it and swapped in only when
every run has validated; a failed session leaves the previous files as they were."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from benchmarks import staged_results as staged  # noqa: E402
from benchmarks.staged_results import new_staging  # noqa: E402,F401  (used by benchmark.py)

SESSION_FILES = ("benchmark_results*.json", "benchmark_results*.json.invalid",
                 "benchmark_results*.json.unparseable", "report.md")


def session_files(folder: Path) -> list[Path]:
    """The files one session owns in OUT/device/android/ (nothing else there is touched)."""
    found = {p for pattern in SESSION_FILES for p in folder.glob(pattern) if p.is_file()}
    return sorted(found)


def recover_interrupted(out_dir: Path) -> None:
    """Tidy what a killed earlier run left: its staging folder, or a half-done swap."""
    staged.recover_interrupted(out_dir, lambda d: bool(list(d.glob("benchmark_results*.json"))))


def write_file(folder: Path, name: str, text: str) -> Path:
    target = folder / name
    part = folder / (name + ".part")
    part.write_text(text)
    os.replace(part, target)
    return target


def commit_session(staging: Path, out_dir: Path) -> list[Path]:
    """Swap the staged session in for the previous one; on an error, put everything back."""
    return staged.swap_in(staging, out_dir, [p.name for p in session_files(out_dir)])


def keep_rejected(out_dir: Path, name: str, text: str) -> Path:
    """A rejected run's file, beside (never instead of) the previous results."""
    return write_file(out_dir, name, text)
