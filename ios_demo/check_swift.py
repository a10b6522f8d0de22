#!/usr/bin/env python3
"""Checks for the iOS app that run without a Mac.

1. Every .swift file under ios_demo parses with tree-sitter-swift (syntax only: API
   misuse and type errors are NOT caught; only a real Xcode build does that).
2. project.yml is YAML with the keys XcodeGen needs, and its references hold together;
   the ExecuTorch Swift package pins a branch that was seen to exist, of the same
   major.minor as the Python executorch (executorch_pin.py); the app's real Info.plist
   (XcodeGen `info:`) turns on file sharing, so results show up in the Files app.
3. With --require-resources: the generated files that project.yml's Resources folder
   must hold (after `make export-ios`) are there and consistent.
4. With --verify-remote (needs internet): `git ls-remote` confirms the pinned branch
   exists on github.com/pytorch/executorch now.

Exit status 0 when every check passes, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from executorch_pin import (EXECUTORCH_URL, branch_for, executorch_package, pin_problems,  # noqa: E402
                            pinned_ref, remote_branch_commit)

RESOURCE_DIR = "Resources"
# Info.plist keys that must be real booleans in the app's Info.plist (XcodeGen `info: properties:`).
# As INFOPLIST_KEY_* build settings they are reported to be dropped when Xcode generates the plist.
FILE_SHARING_KEYS = ("UIFileSharingEnabled", "LSSupportsOpeningDocumentsInPlace")
SKIP_DIRS = {".build", "build", "DerivedData"}
PRODUCT_TYPES = {
    "application", "framework", "library.static", "library.dynamic", "bundle",
    "bundle.unit-test", "bundle.ui-testing", "app-extension", "tool",
}
PLATFORMS = {"iOS", "macOS", "tvOS", "watchOS", "visionOS", "auto"}
VERSION_KEYS = {"branch", "exactVersion", "version", "revision", "from",
                "majorVersion", "minorVersion", "minVersion"}
DEPENDENCY_KINDS = {"target", "package", "framework", "sdk", "carthage", "bundle"}


@dataclass(frozen=True)
class SyntaxProblem:
    path: Path
    line: int  # 1-based
    column: int  # 1-based
    kind: str  # "ERROR" or "MISSING <node>"
    snippet: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.kind} near {self.snippet!r}"


# ---------------------------------------------------------------- Swift syntax

def swift_parser():
    import tree_sitter_swift
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_swift.language()))


def swift_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*.swift")
        if not any(part in SKIP_DIRS or part.endswith((".xcodeproj", ".xcresult")) for part in p.parts)
    )


def syntax_problems(path: Path, parser=None) -> list[SyntaxProblem]:
    """ERROR and MISSING nodes of one file, in source order."""
    parser = parser or swift_parser()
    source = path.read_bytes()
    tree = parser.parse(source)
    problems: list[SyntaxProblem] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            row, col = node.start_point
            kind = f"MISSING {node.type}" if node.is_missing else "ERROR"
            snippet = source[node.start_byte:node.start_byte + 40].decode("utf-8", "replace").splitlines()
            problems.append(SyntaxProblem(path, row + 1, col + 1, kind, snippet[0] if snippet else ""))
        if node.has_error:
            stack.extend(reversed(node.children))
    return sorted(problems, key=lambda p: (p.line, p.column))


def check_swift_tree(root: Path) -> tuple[list[Path], list[SyntaxProblem]]:
    parser = swift_parser()
    files = swift_files(root)
    problems = [p for f in files for p in syntax_problems(f, parser)]
    return files, problems


# ---------------------------------------------------------------- project.yml

def load_project(path: Path) -> dict:
    import yaml

    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not readable YAML: {exc}") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    return spec


def _source_paths(target: dict) -> list[str]:
    sources = target.get("sources", [])
    if isinstance(sources, (str, dict)):
        sources = [sources]
    return [s if isinstance(s, str) else s.get("path", "") for s in sources]


def validate_project(spec: dict, base: Path) -> list[str]:
    """Problems that would stop `xcodegen generate` or leave the app without its files."""
    errors: list[str] = []
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        errors.append("name: missing (the project name)")
    targets = spec.get("targets")
    if not isinstance(targets, dict) or not targets:
        return errors + ["targets: missing or empty"]
    packages = spec.get("packages") or {}
    for name, pkg in packages.items():
        if not isinstance(pkg, dict):
            errors.append(f"packages.{name}: must be a mapping")
        elif "path" not in pkg:
            if not ({"url", "github"} & pkg.keys()):
                errors.append(f"packages.{name}: needs url (or github or path)")
            if not (VERSION_KEYS & pkg.keys()):
                errors.append(f"packages.{name}: needs a version requirement ({', '.join(sorted(VERSION_KEYS))})")
    for name, target in targets.items():
        where = f"targets.{name}"
        if not isinstance(target, dict):
            errors.append(f"{where}: must be a mapping")
            continue
        if target.get("type") not in PRODUCT_TYPES:
            errors.append(f"{where}.type: {target.get('type')!r} is not an XcodeGen product type")
        if target.get("platform") not in PLATFORMS and "supportedDestinations" not in target:
            errors.append(f"{where}.platform: {target.get('platform')!r} is not a platform")
        paths = _source_paths(target)
        if not paths:
            errors.append(f"{where}.sources: missing")
        for rel in paths:
            if not rel or not (base / rel).exists():
                errors.append(f"{where}.sources: {rel!r} does not exist under {base}")
        for dep in target.get("dependencies") or []:
            kinds = DEPENDENCY_KINDS & set(dep)
            if len(kinds) != 1:
                errors.append(f"{where}.dependencies: {dep} needs exactly one of {sorted(DEPENDENCY_KINDS)}")
            elif "package" in kinds and dep["package"] not in packages:
                errors.append(f"{where}.dependencies: package {dep['package']!r} is not declared under packages")
            elif "target" in kinds and dep["target"] not in targets:
                errors.append(f"{where}.dependencies: target {dep['target']!r} is not declared")
    apps = [n for n, t in targets.items() if isinstance(t, dict) and t.get("type") == "application"]
    if len(apps) != 1:
        errors.append(f"targets: expected one application target, found {apps}")
    elif RESOURCE_DIR not in _source_paths(targets[apps[0]]):
        errors.append(f"targets.{apps[0]}.sources: must list {RESOURCE_DIR} (make export-ios fills it)")
    if not any(isinstance(t, dict) and t.get("type") == "bundle.unit-test" for t in targets.values()):
        errors.append("targets: no bundle.unit-test target (the XCTest benchmark)")
    for scheme_name, scheme in (spec.get("schemes") or {}).items():
        build = (scheme.get("build") or {}).get("targets") or {}
        tests = (scheme.get("test") or {}).get("targets") or []
        for ref in list(build) + [t if isinstance(t, str) else t.get("name") for t in tests]:
            if ref not in targets:
                errors.append(f"schemes.{scheme_name}: target {ref!r} is not declared")
    return errors


def locked_executorch(lock: Path) -> str | None:
    if not lock.exists():
        return None
    pins = [line.split("==", 1)[1].strip() for line in lock.read_text().splitlines()
            if line.lower().startswith("executorch==")]
    return pins[0] if pins else None


def executorch_pin_problems(spec: dict, lock: Path) -> list[str]:
    """The Swift package pin must exist and match the Python executorch in requirements.lock."""
    return pin_problems(spec, locked_executorch(lock))


def remote_pin_problems(spec: dict, url: str | None = None) -> list[str]:
    """Ask the remote (git ls-remote) whether the pinned branch exists now."""
    found = executorch_package(spec)
    ref = pinned_ref(found[1]) if found else None
    branch = branch_for(ref) if ref else None
    if branch is None:
        return ["cannot verify: no known branch pinned"]
    url = url or str(found[1].get("url") or EXECUTORCH_URL)
    try:
        sha = remote_branch_commit(url, branch)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return [f"cannot verify {branch}: {exc}"]
    if sha is None:
        return [f"{url} has no branch {branch}: Xcode would fail to resolve the package"]
    if ref[0] == "revision" and sha != ref[1].lower():
        return [f"{branch} is at {sha} on {url}, the project pins revision {ref[1]}"]
    return []


def file_sharing_problems(project_yml: Path) -> list[str]:
    """The app target's XcodeGen `info:` must set the file-sharing keys to YAML `true`."""
    import yaml

    root = yaml.compose(project_yml.read_text(encoding="utf-8"))

    def child(node, key):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    return v
        return None

    errors = []
    targets = child(root, "targets")
    apps = [(k.value, v) for k, v in (targets.value if isinstance(targets, yaml.MappingNode) else [])
            if getattr(child(v, "type"), "value", None) == "application"]
    for name, target in apps:
        info = child(target, "info")
        path = child(info, "path")
        props = child(info, "properties")
        if info is None or path is None or props is None:
            errors.append(f"targets.{name}.info: needs `path:` and `properties:` (XcodeGen writes that "
                          "Info.plist and sets INFOPLIST_FILE)")
            continue
        for key in FILE_SHARING_KEYS:
            value = child(props, key)
            # Yams (XcodeGen) reads only true/false as booleans: YES would become the string "YES"
            if value is None or value.value != "true":
                errors.append(f"targets.{name}.info.properties.{key}: must be `true` "
                              f"(is {value.value if value is not None else 'missing'})")
        settings = child(child(child(target, "settings"), "base"), "INFOPLIST_KEY_UIFileSharingEnabled")
        if settings is not None:
            errors.append(f"targets.{name}.settings: drop INFOPLIST_KEY_UIFileSharingEnabled; "
                          "the key belongs in info.properties")
    return errors


# ---------------------------------------------------------------- resources

def resource_problems(base: Path) -> list[str]:
    """What `make export-ios` must have put in Resources/ for the app to run."""
    res = base / RESOURCE_DIR
    errors: list[str] = []
    for name in ("models.json", "labels.txt", "test_sample.json"):
        if not (res / name).is_file():
            errors.append(f"{res / name}: missing (run make export-ios)")
    if errors:
        return errors
    try:
        manifest = json.loads((res / "models.json").read_text())
        sample = json.loads((res / "test_sample.json").read_text())
    except ValueError as exc:
        return [f"{res}: unreadable JSON: {exc}"]
    runtimes = set()
    for model in manifest.get("models", []):
        if model.get("backend") not in ("coreml", "executorch"):
            continue
        path = res / model.get("file", "")
        runtimes.add(model["backend"])
        if model["backend"] == "coreml" and not (path / "Manifest.json").is_file():
            errors.append(f"{path}: missing or not an .mlpackage (no Manifest.json)")
        elif model["backend"] == "executorch" and not path.is_file():
            errors.append(f"{path}: missing")
    for backend in ("coreml", "executorch"):
        if backend not in runtimes:
            errors.append(f"{res / 'models.json'}: lists no {backend} model")
    pixels = res / str(sample.get("pixels", ""))
    shape = sample.get("shape", [])
    expected = sample.get("count", 0) * (shape[0] * shape[1] * shape[2] if len(shape) == 3 else 0)
    if not pixels.is_file():
        errors.append(f"{pixels}: missing (named by test_sample.json)")
    elif pixels.stat().st_size != expected or expected == 0:
        errors.append(f"{pixels}: {pixels.stat().st_size} bytes, test_sample.json implies {expected}")
    if len(sample.get("labels", [])) != sample.get("count"):
        errors.append(f"{res / 'test_sample.json'}: labels and count disagree")
    return errors


# ---------------------------------------------------------------- CLI

def report(errors: list[str], prefix: str, passed: str) -> bool:
    """Print each error, or the passing line; True if any failed."""
    for error in errors:
        print(f"[x] {prefix}{error}")
    if not errors:
        print(f"[✓] {passed}")
    return bool(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=HERE, help="the ios_demo folder (default: %(default)s)")
    parser.add_argument("--lock", type=Path, default=HERE.parent / "requirements.lock",
                        help="pinned Python packages, to compare the ExecuTorch version with")
    parser.add_argument("--require-resources", action="store_true",
                        help="also check the files make export-ios puts in Resources/")
    parser.add_argument("--verify-remote", action="store_true",
                        help="also ask github.com/pytorch/executorch (git ls-remote) that the pinned branch exists")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    failed = False

    files, problems = check_swift_tree(root)
    if not files:
        print(f"[x] no .swift files under {root}")
        failed = True
    for problem in problems:
        print(f"[x] {problem}")
    if files and not problems:
        print(f"[✓] {len(files)} Swift files parse cleanly (tree-sitter-swift; syntax only)")
    failed |= bool(problems)

    try:
        spec = load_project(root / "project.yml")
        spec_errors = (validate_project(spec, root) + executorch_pin_problems(spec, args.lock)
                       + file_sharing_problems(root / "project.yml"))
    except ValueError as exc:
        spec_errors = [str(exc)]
    failed |= report(spec_errors, "project.yml: ", "project.yml has what XcodeGen needs")

    if args.verify_remote and not spec_errors:
        failed |= report(remote_pin_problems(spec), "ExecuTorch package: ", f"{EXECUTORCH_URL} has the pinned "
                         f"branch {branch_for(pinned_ref(executorch_package(spec)[1]))}")

    if args.require_resources:
        failed |= report(resource_problems(root), "resources: ",
                         f"{root / RESOURCE_DIR} holds the models, labels and test sample")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
