"""The linter's rules (pyproject.toml [tool.ruff]) hold over the whole repository: `ruff check` finds nothing."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ruff check (fix these, or run `ruff check --fix`):\n{result.stdout}{result.stderr}"
