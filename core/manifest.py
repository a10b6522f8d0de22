"""OUT/manifest.json: what a run used, produced and measured. Read-modify-write, atomically."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
from pathlib import Path

from . import io as atomic

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
TOOLS = ("torch", "torchvision", "torchao", "executorch", "coremltools", "litert-torch", "ai-edge-litert", "numpy")


class ManifestError(RuntimeError):
    """manifest.json is unreadable."""


def tool_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def load(out: Path) -> dict:
    path = Path(out) / MANIFEST
    if not path.exists():
        return {"schema_version": SCHEMA_VERSION, "stages": {}, "accuracy": {}, "artifacts": {}, "backends": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); delete it and rerun with --force") from exc


def save(out: Path, manifest: dict) -> Path:
    manifest["updated"] = now()
    manifest["versions"] = tool_versions()
    return atomic.write_json(Path(out) / MANIFEST, manifest)
