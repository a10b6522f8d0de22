"""Packaging: the wheel carries every module and data file, builds without setuptools warnings,
and a non-editable install in a fresh venv finds its schemas from another directory.

The build uses the running venv's setuptools (`--no-build-isolation`, nothing downloaded). The
fresh venv borrows the running venv's packages through a .pth line instead of reinstalling them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "converters", "benchmarks", "pipeline")
SAMPLE_DEVICE_RESULTS = REPO / "tests" / "android" / "data" / "sample_benchmark_results.json"
# Path(__file__).parent / "a" / "b.json" (with or without .resolve()) in the packages' code
FILE_RELATIVE = re.compile(r'Path\(__file__\)(?:\.resolve\(\))?\.parent((?:\s*/\s*"[^"]+")+)')


def source_files() -> list[str]:
    """Every file of the four packages, as a path inside the wheel."""
    out = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out.append(path.relative_to(REPO).as_posix())
    return out


def files_read_via_dunder_file() -> list[str]:
    """Paths the code builds from Path(__file__).parent, relative to the repository root."""
    out = []
    for pkg in PACKAGES:
        for py in sorted((REPO / pkg).rglob("*.py")):
            for match in FILE_RELATIVE.finditer(py.read_text()):
                parts = re.findall(r'"([^"]+)"', match.group(1))
                out.append((py.parent.relative_to(REPO) / Path(*parts)).as_posix())
    return out


def copy_project(dest: Path) -> Path:
    """What a clean checkout holds for building (no build/, no egg-info, no caches)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def warnings_in(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if re.search(r"warn", line, re.I)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = copy_project(tmp / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(tmp / "dist"), str(src)],
                       capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    wheels = list((tmp / "dist").glob("mobile_pipeline-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], r.stdout + r.stderr


def test_files_read_via_dunder_file_are_found_by_the_scan():
    # The scan below must see the schemas; if it finds nothing, the other tests prove nothing.
    assert {"benchmarks/schemas/results.schema.json",
            "benchmarks/schemas/device_results.schema.json"} <= set(files_read_via_dunder_file())


def test_wheel_holds_every_module_and_data_file(wheel):
    path, _ = wheel
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    missing = [f for f in source_files() if f not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert not [f for f in files_read_via_dunder_file() if f not in names]
    assert not [n for n in names if n.startswith(("tests/", "android_demo/", "ios_demo/"))]
    assert "License-Expression: MIT" in metadata
    assert "mobile-pipeline = pipeline.cli:main" in entry_points


def test_wheel_builds_without_warnings(wheel):
    _, output = wheel
    assert not warnings_in(output), output


def test_editable_build_has_no_setuptools_warnings(tmp_path):
    """What `make setup` runs (`pip install -e . --no-build-isolation`) calls this hook."""
    src = copy_project(tmp_path / "src")
    code = ("import sys; from setuptools import build_meta as b; "
            "print(b.build_editable(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-W", "default", "-c", code, str(tmp_path / "dist")],
                       capture_output=True, text=True, cwd=src)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(".whl")
    assert not warnings_in(r.stdout + r.stderr), r.stdout + r.stderr
    with zipfile.ZipFile(tmp_path / "dist" / r.stdout.strip().splitlines()[-1]) as z:
        pth = [n for n in z.namelist() if n.endswith(".pth")]
        # a plain path entry for the project root, as PYTHONPATH=$PWD gives
        assert [z.read(n).decode().strip() for n in pth] == [str(src.resolve())]


CHECK_INSTALLED = r"""
import json, sys
from pathlib import Path
import core, converters, benchmarks, pipeline
site = Path(sys.argv[1]).resolve()
for m in (core, converters, benchmarks, pipeline):
    assert Path(m.__file__).resolve().is_relative_to(site), (m.__name__, m.__file__)
for rel in json.loads(sys.argv[2]):
    assert (site / rel).is_file(), rel
from benchmarks.report import DEVICE_SCHEMA, load_device_results
out = Path(sys.argv[3])
found = load_device_results(out)
assert found["invalid"] == [] and len(found["valid"]) == 1, found
print("ok", DEVICE_SCHEMA)
"""


def test_non_editable_install_in_a_fresh_venv_finds_its_files(wheel, tmp_path):
    """pip install of the wheel into a new venv; checks run from a directory outside the repo."""
    path, _ = wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Dependencies (and pip) come from the running venv, after the fresh venv's own site-packages.
    (site / "zz-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(path)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not warnings_in(r.stdout + r.stderr), r.stdout + r.stderr

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "out" / "device" / "android").mkdir(parents=True)
    shutil.copy(SAMPLE_DEVICE_RESULTS, elsewhere / "out" / "device" / "android" / "benchmark_results.json")
    data_files = [f for f in source_files() if not f.endswith(".py")]
    r = subprocess.run([str(python), "-c", CHECK_INSTALLED, str(site), json.dumps(data_files), "out"],
                       capture_output=True, text=True, env=env, cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    assert str(site / "benchmarks" / "schemas" / "device_results.schema.json") in r.stdout

    cli = venv / "bin" / "mobile-pipeline"
    r = subprocess.run([str(cli), "--help"], capture_output=True, text=True, env=env, cwd=elsewhere)
    assert r.returncode == 0 and "usage: mobile-pipeline" in r.stdout, r.stdout + r.stderr
