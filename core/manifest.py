"""OUT/manifest.json: what a run used, produced and measured. Read-modify-write, atomically, under the OUT lock."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
from pathlib import Path

from . import io as atomic
from .console import say
from .errors import BadInput

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
TOOLS = ("torch", "torchvision", "torchao", "executorch", "coremltools", "litert-torch", "ai-edge-litert", "numpy")
# The sections every manifest has, and the JSON type each must be.
SECTIONS = {"stages": dict, "accuracy": dict, "artifacts": dict, "backends": dict}


class ManifestError(BadInput, RuntimeError):
    """manifest.json is unreadable or not shaped like a manifest; the message says what to do."""


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


def empty() -> dict:
    return {"schema_version": SCHEMA_VERSION, **{name: {} for name in SECTIONS}}


def shape_problems(manifest) -> list[str]:
    """What is wrong with the shape of a parsed manifest (empty list: nothing)."""
    if not isinstance(manifest, dict):
        return [f"it holds a JSON {type(manifest).__name__}, not an object"]
    problems = []
    for name, kind in SECTIONS.items():
        if name not in manifest:
            problems.append(f"it has no '{name}' section")
        elif not isinstance(manifest[name], kind):
            problems.append(f"'{name}' is a {type(manifest[name]).__name__}, not an object")
    for name, value in manifest.get("accuracy", {}).items() if isinstance(manifest.get("accuracy"), dict) else ():
        if value is not None and not isinstance(value, (int, float, dict)):  # a number, or a scheme's accuracies
            problems.append(f"accuracy '{name}' is {value!r}, not a number")
    for file, entry in manifest.get("artifacts", {}).items() if isinstance(manifest.get("artifacts"), dict) else ():
        if not isinstance(entry, dict) or not {"backend", "format", "quant", "reference"} <= set(entry):
            problems.append(f"artifact '{file}' lacks backend/format/quant/reference")
    for name, entry in manifest.get("stages", {}).items() if isinstance(manifest.get("stages"), dict) else ():
        if not isinstance(entry, dict):
            problems.append(f"stage '{name}' is not an object")
    return problems


def load(out: Path, force: bool = False) -> dict:
    """The manifest of OUT, or an empty one. A damaged one is an error; with `force` it is set aside."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return empty()
    try:
        manifest = json.loads(path.read_text())
        problems = shape_problems(manifest)
    except json.JSONDecodeError as exc:
        problems = [f"it is not valid JSON ({exc})"]
    except OSError as exc:
        raise atomic.describe_os_error(path, exc, "read") from exc
    if not problems:
        return manifest
    if force:
        aside = path.with_name(f"{MANIFEST}.damaged-{now().replace(':', '')}")
        path.replace(aside)
        say(f"manifest: {path} was damaged ({problems[0]}); moved it to {aside.name} and started a new one")
        return empty()
    raise ManifestError(f"{path} is damaged: {'; '.join(problems)}. Move it away, or rerun with --force "
                        "(which keeps it as manifest.json.damaged-*) to rebuild the stages")


def save(out: Path, manifest: dict) -> Path:
    manifest["updated"] = now()
    manifest["versions"] = tool_versions()
    return atomic.write_json(Path(out) / MANIFEST, manifest)


def scheme_tag(artifact: dict) -> str | None:
    """The scheme an artifact entry belongs to (its tag, or the tag whose weights it palettizes); None for baselines."""
    scheme = artifact.get("scheme") or {}
    return scheme.get("tag") or scheme.get("weights_of")
