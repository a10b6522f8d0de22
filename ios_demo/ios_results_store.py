"""Where ios_demo/benchmark.py keeps results: OUT/device/ios/ always holds one complete session
(benchmark_results.json, report.md, xcodebuild.log, ConvNetBench.xcresult). A run writes into a
hidden staging folder beside them. Only a run whose results validate replaces the previous
session; a failed run's files go to OUT/device/ios/last-failed-run/ and the session stays."""
from __future__ import annotations

import os
import sys
import shutil
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from benchmarks import staged_results as staged  # noqa: E402
from benchmarks.staged_results import new_staging  # noqa: E402,F401  (used by benchmark.py)

SESSION = ("benchmark_results.json", "report.md", "xcodebuild.log", "ConvNetBench.xcresult",
           "xctest_metrics.json")
FAILED_DIR = "last-failed-run"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def recover_interrupted(out_dir: Path) -> None:
    """Tidy what a killed earlier run left: its staging folder, or a half-done swap."""
    staged.recover_interrupted(out_dir, lambda d: (d / "benchmark_results.json").exists())


def commit_session(staging: Path, out_dir: Path) -> list[Path]:
    """Swap the staged session in for the previous one; on an error, put everything back."""
    return staged.swap_in(staging, out_dir, [n for n in SESSION if (out_dir / n).exists()])


def keep_failed(staging: Path, out_dir: Path) -> Path:
    """The failed run's files, as OUT/device/ios/last-failed-run/ (replacing the one before)."""
    target = out_dir / FAILED_DIR
    _remove(target)
    os.replace(staging, target)
    return target
