"""Shared fixtures for the iOS demo checks (ios_demo is scripts, not a package)."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IOS_DEMO = REPO / "ios_demo"
DATA = Path(__file__).resolve().parent / "data"
SCHEMA = REPO / "benchmarks" / "schemas" / "device_results.schema.json"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"ios_demo_{name}", IOS_DEMO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def check_swift():
    return _load("check_swift")


@pytest.fixture(scope="session")
def benchmark():
    return _load("benchmark")


@pytest.fixture()
def sample_results():
    return json.loads((IOS_DEMO / "sample_results.json").read_text())


@pytest.fixture()
def ios_copy(tmp_path):
    """A throw-away copy of ios_demo (sources, project.yml, empty Resources)."""
    dest = tmp_path / "ios_demo"
    shutil.copytree(IOS_DEMO, dest, ignore=shutil.ignore_patterns("*.xcodeproj", "build", "__pycache__"))
    resources = dest / "Resources"
    for item in resources.iterdir():
        if item.name != ".gitkeep":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    return dest
