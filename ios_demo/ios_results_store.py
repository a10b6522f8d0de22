"""Where ios_demo/benchmark.py keeps results: OUT/device/ios/ always holds one complete session
(benchmark_results.json, report.md, xcodebuild.log, ConvNetBench.xcresult). A run writes into a
hidden staging folder beside them. Only a run whose results validate replaces the previous
session; a failed run's files go to OUT/device/ios/last-failed-run/ and the session stays."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SESSION = ("benchmark_results.json", "report.md", "xcodebuild.log", "ConvNetBench.xcresult",
           "xctest_metrics.json")
FAILED_DIR = "last-failed-run"
STAGING_PREFIX = ".staging-"
PREVIOUS_PREFIX = ".previous-"


def _pid_alive(name: str, prefix: str) -> bool:
    try:
        os.kill(int(name[len(prefix):].split("-", 1)[0]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def recover_interrupted(out_dir: Path) -> None:
    """Tidy what a killed earlier run left: its staging folder, or a half-done swap."""
    for d in sorted(out_dir.glob(STAGING_PREFIX + "*")):
        if d.is_dir() and not _pid_alive(d.name, STAGING_PREFIX):
            shutil.rmtree(d, ignore_errors=True)
    for d in sorted(out_dir.glob(PREVIOUS_PREFIX + "*")):
        if not d.is_dir() or _pid_alive(d.name, PREVIOUS_PREFIX):
            continue
        if not (out_dir / "benchmark_results.json").exists():  # killed mid-swap: put the old session back
            for entry in d.iterdir():
                os.replace(entry, out_dir / entry.name)
            print(f"restored the previous results from {d.name} (an earlier run was interrupted)")
        shutil.rmtree(d, ignore_errors=True)


def new_staging(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))


def commit_session(staging: Path, out_dir: Path) -> list[Path]:
    """Swap the staged session in for the previous one; on an error, put everything back."""
    backup = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{PREVIOUS_PREFIX}{os.getpid()}-"))
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in SESSION:
            if (out_dir / name).exists():
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


def keep_failed(staging: Path, out_dir: Path) -> Path:
    """The failed run's files, as OUT/device/ios/last-failed-run/ (replacing the one before)."""
    target = out_dir / FAILED_DIR
    _remove(target)
    os.replace(staging, target)
    return target
