"""The packages depend one way: core at the bottom, converters above it, then benchmarks, study, then pipeline."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each package may import from the project; anything higher up is a layering error.
ALLOWED = {
    "core": {"core"},
    "converters": {"core", "converters"},
    "benchmarks": {"core", "converters", "benchmarks"},
    "study": {"core", "converters", "benchmarks", "study"},
    "pipeline": {"core", "converters", "benchmarks", "study", "pipeline"},
}


def project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package):
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = project_imports(path) - ALLOWED[package]
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"{package} must not import {wrong}"
