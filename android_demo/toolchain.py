#!/usr/bin/env python3
"""Offline Android toolchain for the compile-and-package check (`make android-toolchain`).

Two sources, chosen in this order:

1. ``$ANDROID_HOME`` (or ``$ANDROID_SDK_ROOT``), when set: the SDK's own tools. aapt2,
   zipalign, apksigner, d8 (or dx in old build-tools) and aapt come from the newest
   ``build-tools/<version>/``; android.jar from the newest ``platforms/android-<N>/``. The
   JDK (javac, keytool, java) comes from PATH or ``$JAVA_HOME/bin``.
2. Otherwise Debian/Ubuntu packages:

   * aapt2, aapt, zipalign, apksigner, adb: apt packages, installed only when the
     command is missing (``apt-get install --no-install-recommends``; ``apt-get
     update`` only if the first install attempt fails).
   * javac, keytool: a JDK 17 (apt ``default-jdk-headless`` when missing).
   * android-23.jar and dx.jar: the Debian bullseye packages ``libandroid-23-java``
     and ``dalvik-exchange``. Taken from ``../shared/android-sdk/*.deb`` when that
     folder exists, otherwise downloaded with ``apt-get download``: first from the
     machine's own apt sources, then from a private bullseye source list kept in
     the cache (bookworm no longer ships these packages; the system's apt
     configuration is never touched).

Both need ExecuTorch's Java API as a compile-only classes.jar, from the npm package
``react-native-executorch@0.9.3`` (``android/libs/classes.jar``).

Where neither can be had (no apt-get, e.g. macOS, and no usable ``$ANDROID_HOME``),
``ensure`` prints why the Android checks will be SKIPPED and exits 0; the tests then
skip with that reason. Where apt-get exists (CI), anything missing is an error.

Everything downloaded lands in ``android_demo/build/toolchain/`` (git-ignored). Running
it again does nothing when everything is already there.

    python android_demo/toolchain.py ensure [--shared-sdk DIR]
    python android_demo/toolchain.py check      # exit 1 and list what is missing
"""
from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

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
    "java": "default-jdk-headless",
}
JDK_TOOLS = ("javac", "keytool", "java")
SDK_ENV = ("ANDROID_HOME", "ANDROID_SDK_ROOT")
# What the check needs from an SDK's build-tools (aapt is optional: `aapt2 dump badging` stands in).
SDK_BUILD_TOOLS = ("aapt2", "zipalign", "apksigner")
SDK_HOWTO = ("install the Android SDK (Android Studio, or the command-line tools and "
             "`sdkmanager 'build-tools;35.0.0' 'platforms;android-36'`), set ANDROID_HOME to it, "
             "install a JDK 17 and npm, then run `make android-toolchain`")


class ToolchainError(RuntimeError):
    pass


@functools.lru_cache(maxsize=None)
def runs(command: str) -> bool:
    """Whether `command -version` works. macOS has /usr/bin/java and /usr/bin/javac stubs that
    only say no JDK is installed, so finding the command is not enough."""
    try:
        return subprocess.run([command, "-version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _version_key(name: str) -> tuple:
    return tuple(int(n) if n.isdigit() else -1 for n in re.split(r"[.\-]", name))


def sdk_home(env: Mapping[str, str] = os.environ) -> Path | None:
    for key in SDK_ENV:
        if env.get(key):
            return Path(env[key]).expanduser()
    return None


@dataclass(frozen=True)
class Toolchain:
    """The tools the check runs: from an Android SDK (sdk set) or from Debian packages (sdk None).

    `path` is the PATH to search for commands (the environment's, unless a test gives another).
    """
    root: Path
    sdk: Path | None = None
    path: str | None = field(default_factory=lambda: os.environ.get("PATH", os.defpath))
    java_home: str | None = field(default_factory=lambda: os.environ.get("JAVA_HOME"))

    @property
    def source(self) -> str:
        return f"the Android SDK at {self.sdk}" if self.sdk else "Debian packages (ANDROID_HOME not set)"

    @property
    def build_tools(self) -> Path | None:
        """The newest build-tools/<version>/ of the SDK that has aapt2."""
        if self.sdk is None:
            return None
        found = [d for d in (self.sdk / "build-tools").glob("*") if (d / "aapt2").is_file()]
        return max(found, key=lambda d: _version_key(d.name)) if found else None

    def tool(self, name: str) -> str | None:
        """Absolute path of a command, or None when it is not available."""
        if self.sdk is not None and name not in JDK_TOOLS:
            where = self.sdk / "platform-tools" if name == "adb" else self.build_tools
            if where is not None and os.access(where / name, os.X_OK):
                return str(where / name)
            if name in SDK_BUILD_TOOLS or name in ("d8", "dx"):
                return None  # never mix build-tools of the SDK with stray ones on PATH
        if name in JDK_TOOLS and self.java_home and os.access(Path(self.java_home, "bin", name), os.X_OK):
            return str(Path(self.java_home, "bin", name))
        return shutil.which(name, path=self.path)

    @property
    def android_jar(self) -> Path:
        if self.sdk is None:
            return self.root / "android-23.jar"
        jars = [j for j in (self.sdk / "platforms").glob("android-*/android.jar")]
        if not jars:
            return self.sdk / "platforms" / "android-<N>" / "android.jar"
        return max(jars, key=lambda j: _version_key(j.parent.name.removeprefix("android-")))

    @property
    def api_level(self) -> int | None:
        m = re.search(r"android-(\d+)", str(self.android_jar.parent.name if self.sdk else self.android_jar.name))
        return int(m.group(1)) if m else None

    @property
    def dx_jar(self) -> Path:
        return self.root / "dx.jar"

    def dexer(self) -> tuple[str, str] | None:
        """('d8' | 'dx' | 'dx.jar', path): what turns classes into classes.dex."""
        if self.sdk is None:
            return ("dx.jar", str(self.dx_jar)) if self.dx_jar.is_file() else None
        for name in ("d8", "dx"):
            found = self.tool(name)
            if found:
                return name, found
        return None

    @property
    def executorch_jar(self) -> Path:
        return self.root / "executorch-classes.jar"

    def missing(self) -> list[str]:
        """Human-readable list of what is absent; empty when the check can run."""
        if self.sdk is None:
            out = [f"command `{c}` (apt package {p})" for c, p in APT_TOOLS.items() if self.tool(c) is None]
            jars = (self.android_jar, self.dx_jar, self.executorch_jar)
        else:
            bt = self.build_tools
            if not self.sdk.is_dir():
                out = [f"ANDROID_HOME={self.sdk} is not a folder"]
            elif bt is None:
                out = [f"build-tools in {self.sdk} (sdkmanager 'build-tools;35.0.0')"]
            else:
                out = [f"`{c}` in {bt}" for c in SDK_BUILD_TOOLS if self.tool(c) is None]
                if self.dexer() is None:
                    out.append(f"`d8` (or `dx`) in {bt}")
            out += [f"command `{c}` (a JDK 17)" for c in JDK_TOOLS if self.tool(c) is None]
            jars = (self.android_jar, self.executorch_jar)
        for c in ("javac", "java"):
            found = self.tool(c)
            if found and not runs(found):
                out.append(f"a working `{c}` ({found} -version fails: is a JDK 17 installed?)")
        for path in jars:
            if not path.is_file() or path.stat().st_size == 0:
                out.append(str(path))
        return out


def detect(root: Path, env: Mapping[str, str] = os.environ) -> Toolchain:
    """The toolchain this machine offers: $ANDROID_HOME's SDK when set, else Debian packages."""
    return Toolchain(Path(root).resolve(), sdk=sdk_home(env), path=env.get("PATH", os.defpath),
                     java_home=env.get("JAVA_HOME"))


def skip_reason(tc: Toolchain) -> str | None:
    """Why the Android checks are skipped here, or None when they must run (and fail if broken).

    They are skipped only where the tools cannot be had: no apt-get on PATH (macOS, for one)
    and the toolchain incomplete. Where apt-get exists, as on CI, a gap is an error.
    """
    missing = tc.missing()
    if not missing or shutil.which("apt-get", path=tc.path):
        return None
    where = (f"ANDROID_HOME is {tc.sdk}, which lacks some of them" if tc.sdk
             else "ANDROID_HOME is not set")
    missing = [re.sub(r" \(apt package [^)]*\)$", "", m) for m in missing]
    return (f"Android checks SKIPPED: no apt-get on this machine and {where}. Missing: "
            + "; ".join(missing) + f". To run them: {SDK_HOWTO}.")


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


def ensure_apt_tools(tc: Toolchain) -> None:
    wanted = APT_TOOLS if tc.sdk is None else {c: APT_TOOLS[c] for c in JDK_TOOLS}
    packages = sorted({pkg for cmd, pkg in wanted.items() if tc.tool(cmd) is None})
    if not packages:
        log(", ".join(wanted) + ": present")
        return
    if shutil.which("apt-get", path=tc.path) is None:
        raise ToolchainError(f"missing {packages} and no apt-get here")
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
    still = [c for c in wanted if tc.tool(c) is None]
    if still:
        raise ToolchainError(f"still missing after apt-get install: {still}")


# --- android-23.jar and dx.jar from Debian bullseye .debs ------------------------

def _extract_member(deb: Path, member: str, target: Path) -> None:
    if shutil.which("dpkg-deb") is None:
        raise ToolchainError(f"dpkg-deb is needed to unpack {deb.name} (Debian/Ubuntu only)")
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
        if shutil.which("apt-get", path=tc.path) is None:
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
    if shutil.which("npm", path=tc.path) is None:
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
    """Fetch what is missing; every step is tried, and the first problems are reported together."""
    tc.root.mkdir(parents=True, exist_ok=True)
    log(f"using {tc.source}")
    problems: list[str] = []
    steps = []
    if apt and shutil.which("apt-get", path=tc.path):
        steps.append(lambda: ensure_apt_tools(tc))
    if tc.sdk is None:
        steps.append(lambda: ensure_debian_jars(tc, shared_sdk))
    steps.append(lambda: ensure_executorch_jar(tc))
    for step in steps:
        try:
            step()
        except ToolchainError as e:
            problems.append(str(e))
    missing = tc.missing()
    if missing:
        raise ToolchainError("still missing: " + "; ".join(missing)
                             + ("\n" + "\n".join(problems) if problems else ""))
    log(f"ready: {tc.source}, android.jar {tc.android_jar}, cache {tc.root}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["ensure", "check"])
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("ANDROID_TOOLCHAIN", DEFAULT_DIR)),
                    help="cache folder (default android_demo/build/toolchain, or $ANDROID_TOOLCHAIN)")
    ap.add_argument("--shared-sdk", type=Path, default=DEFAULT_SHARED_SDK,
                    help="folder with the bullseye .debs (default ../shared/android-sdk beside the repo)")
    ap.add_argument("--no-apt", action="store_true", help="do not apt-get install missing commands")
    args = ap.parse_args(argv)
    tc = detect(args.dir)
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
        reason = skip_reason(tc)
        if reason:
            log(reason)
            return 0
        print(f"[toolchain] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
