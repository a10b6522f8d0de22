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


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in it (at the top, or inside a function to put the import off)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from pkg import mod` imports the module pkg.mod; `from pkg import name` imports pkg itself
            names |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {n for n in names if n in known and n != me}


def test_no_import_cycles():
    """No module imports, directly or through others, one that imports it back: not even inside a function."""
    import graphlib

    paths = {module_name(p): p for package in ALLOWED for p in sorted((ROOT / package).rglob("*.py"))}
    graph = {name: imported_modules(path, set(paths)) for name, path in paths.items()}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_pipeline_modules_stay_small():
    """A stage is a module of its own: none of the pipeline's files grows past 300 lines."""
    long = {p.name: n for p in sorted((ROOT / "pipeline").glob("*.py")) if (n := len(p.read_text().splitlines())) > 300}
    assert not long, f"split these pipeline modules (lines): {long}"
