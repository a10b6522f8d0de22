"""Which ExecuTorch Swift package the iOS app may pin, and the evidence that it exists.

ExecuTorch ships its iOS xcframeworks as a Swift package on branches of
github.com/pytorch/executorch: `swiftpm-<version>` for releases and
`swiftpm-<version>.<yyyymmdd>` for nightlies. A branch that does not exist makes Xcode's
package resolution fail before anything builds, so project.yml may only pin a ref listed
below (by branch name, or by its commit as `revision:`), and its version must share
major.minor with the Python `executorch` in requirements.lock (the program format and the
XNNPACK schema of that line are what the exporter writes).

How the list was made (2026-11-24, see ios_demo/README.md): `git for-each-ref refs/heads/swiftpm*`
on a snapshot of pytorch/executorch taken 2026-08-22. Newest refs there: nightlies
swiftpm-1.5.0.20260806 ... swiftpm-1.5.0.20260822, and the release swiftpm-1.4.1. There was no
swiftpm-1.5.0 and no swiftpm-1.5.1 branch (executorch 1.5.0 was released later). Nightly
branches are kept: that snapshot still had every swiftpm-0.4.0.2024xxxx nightly.

To pin another ref, check it against the real remote first, e.g.
    git ls-remote https://github.com/pytorch/executorch 'refs/heads/swiftpm-1.5*'
or `python ios_demo/check_swift.py --verify-remote`, then add it here with its commit.
"""
from __future__ import annotations

import re
import subprocess

EXECUTORCH_URL = "https://github.com/pytorch/executorch"

# branch -> commit, as seen in the 2026-08-22 snapshot of pytorch/executorch.
SEEN_SWIFTPM_REFS = {
    "swiftpm-1.5.0.20260822": "9e89536b5e5ee83c71cc26571d51f65c3ef40ec5",
    "swiftpm-1.4.1": "1e16db53f23996df64af6a243068f13ed7768e36",
}
# Products in the Package.swift of both refs above (the app may link only these).
SEEN_PRODUCTS = frozenset({
    "backend_coreml", "backend_mps", "backend_xnnpack", "executorch", "executorch_llm", "kernels_llm",
    "kernels_optimized", "kernels_quantized", "kernels_torchao", "threadpool"})
BRANCH_RE = re.compile(r"^swiftpm-(\d+)\.(\d+)\.(\d+)(?:\.(\d{8}))?$")


def executorch_package(spec: dict) -> tuple[str, dict] | None:
    """(name, package) of the ExecuTorch Swift package in a project.yml, or None."""
    for name, pkg in (spec.get("packages") or {}).items():
        if isinstance(pkg, dict) and "pytorch/executorch" in str(pkg.get("url", pkg.get("github", ""))):
            return name, pkg
    return None


def pinned_ref(pkg: dict) -> tuple[str, str] | None:
    """('branch' | 'revision', value) of a package, or None when it pins neither."""
    for key in ("branch", "revision"):
        if pkg.get(key):
            return key, str(pkg[key])
    return None


def branch_for(ref: tuple[str, str]) -> str | None:
    kind, value = ref
    if kind == "branch":
        return value
    return next((b for b, sha in SEEN_SWIFTPM_REFS.items() if sha == value.lower()), None)


def pin_problems(spec: dict, python_version: str | None) -> list[str]:
    """Why the project's ExecuTorch pin may not resolve, or may not match the Python exporter."""
    found = executorch_package(spec)
    if found is None:
        return ["packages: no pytorch/executorch package"]
    name, pkg = found
    ref = pinned_ref(pkg)
    if ref is None:
        return [f"packages.{name}: pin a `branch:` or `revision:` (one of {sorted(SEEN_SWIFTPM_REFS)})"]
    branch = branch_for(ref)
    if branch not in SEEN_SWIFTPM_REFS:
        return [f"packages.{name}: {ref[0]} {ref[1]!r} was not seen among pytorch/executorch's branches "
                f"(seen: {', '.join(sorted(SEEN_SWIFTPM_REFS))}); a missing branch fails Xcode's package "
                "resolution. Check with `git ls-remote` and list it in ios_demo/executorch_pin.py"]
    product_errors = product_problems(spec)
    if product_errors:
        return product_errors
    if python_version:
        m = BRANCH_RE.match(branch)
        py = re.match(r"(\d+)\.(\d+)", python_version)
        if not m or not py or m.group(1, 2) != py.group(1, 2):
            return [f"packages.{name}: {branch} is not an ExecuTorch {'.'.join(py.group(1, 2)) if py else '?'}.x "
                    f"package, but requirements.lock has executorch=={python_version}"]
    return []


def product_problems(spec: dict) -> list[str]:
    """Every ExecuTorch product a target links must exist in the pinned package."""
    found = executorch_package(spec)
    if found is None:
        return []
    errors = []
    for tname, target in (spec.get("targets") or {}).items():
        for dep in (target or {}).get("dependencies") or []:
            if isinstance(dep, dict) and dep.get("package") == found[0] and dep.get("product") not in SEEN_PRODUCTS:
                errors.append(f"targets.{tname}.dependencies: ExecuTorch has no product {dep.get('product')!r} "
                              f"(it has {', '.join(sorted(SEEN_PRODUCTS))})")
    return errors


def remote_branch_commit(url: str, branch: str, timeout: float = 60) -> str | None:
    """The commit `branch` points to on the remote (git ls-remote), or None when it has no such branch."""
    r = subprocess.run(["git", "ls-remote", "--heads", url, f"refs/heads/{branch}"],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"git ls-remote {url} failed: {r.stderr.strip()}")
    for line in r.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name == f"refs/heads/{branch}":
            return sha
    return None
