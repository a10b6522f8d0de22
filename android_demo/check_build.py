#!/usr/bin/env python3
"""Compile-and-package check for the Android app, without Gradle.

What it proves: the Java sources compile against the Android API (android-23.jar from
Debian, or the newest android.jar of $ANDROID_HOME), ExecuTorch's Java API (classes.jar
from react-native-executorch@0.9.3, compile-only; see android_demo/README.md for which
ExecuTorch release that is) and LiteRT signature stubs (compile_stubs/, compile-only);
the manifest and resources link with aapt2; and the result packages into a signed debug
APK that `apksigner verify` accepts and `aapt dump badging` reads. Neither runtime is in
the APK, so it does NOT prove that the app runs: build it with Gradle for a phone.

Steps: aapt2 compile, aapt2 link, javac (stubs), javac (app), dx or d8 (app classes
only), zip, zipalign, keytool (throw-away debug key), apksigner sign, apksigner verify,
aapt (or aapt2) dump badging. Each prints [✓] or [x]; the first failure stops with its
output. The tools come from toolchain.py: $ANDROID_HOME's SDK when set, else Debian's.

    python android_demo/check_build.py [--src android_demo] [--work android_demo/build/check]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from toolchain import DEFAULT_DIR, SDK_HOWTO, Toolchain, detect  # noqa: E402

ANDROID_NS = "{http://schemas.android.com/apk/res/android}"
KEY_PASS = "android"  # throw-away debug keystore, generated per work folder


class CheckError(RuntimeError):
    """A failed step: which one, and the tool's own words."""

    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message


@dataclass
class Project:
    root: Path
    namespace: str
    application_id: str
    min_sdk: int
    target_sdk: int
    version_code: int
    version_name: str
    activity: str  # fully qualified launcher activity

    @property
    def main(self) -> Path:
        return self.root / "app" / "src" / "main"


@dataclass
class CheckResult:
    apk: Path
    apk_bytes: int
    badging: str  # the `package:` and `launchable-activity:` lines
    dex_classes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _gradle_value(text: str, key: str) -> str:
    m = re.search(rf'^\s*{key}\s*=\s*"?([^"\n]+?)"?\s*$', text, re.M)
    if not m:
        raise CheckError("project", f"app/build.gradle.kts has no `{key} = ...`")
    return m.group(1).strip()


def read_project(root: Path) -> Project:
    gradle = (root / "app" / "build.gradle.kts").read_text()
    namespace = _gradle_value(gradle, "namespace")
    manifest = root / "app" / "src" / "main" / "AndroidManifest.xml"
    try:
        tree = ElementTree.parse(manifest)
    except ElementTree.ParseError as e:
        raise CheckError("manifest", f"{manifest}: {e}") from e
    activity = None
    for act in tree.getroot().iter("activity"):
        actions = {a.get(ANDROID_NS + "name") for a in act.iter("action")}
        if "android.intent.action.MAIN" in actions:
            activity = act.get(ANDROID_NS + "name")
    if not activity:
        raise CheckError("manifest", "no activity with action MAIN")
    if activity.startswith("."):
        activity = namespace + activity
    return Project(
        root=root,
        namespace=namespace,
        application_id=_gradle_value(gradle, "applicationId"),
        min_sdk=int(_gradle_value(gradle, "minSdk")),
        target_sdk=int(_gradle_value(gradle, "targetSdk")),
        version_code=int(_gradle_value(gradle, "versionCode")),
        version_name=_gradle_value(gradle, "versionName"),
        activity=activity,
    )


def dex_defined_classes(dex: bytes) -> list[str]:
    """Class descriptors defined (not merely referenced) in a classes.dex."""
    if dex[:4] != b"dex\n":
        raise ValueError("not a dex file")
    string_ids_off, = struct.unpack_from("<I", dex, 0x3C)
    type_ids_off, = struct.unpack_from("<I", dex, 0x44)
    class_defs_size, class_defs_off = struct.unpack_from("<II", dex, 0x60)

    def string(idx: int) -> str:
        off, = struct.unpack_from("<I", dex, string_ids_off + 4 * idx)
        while dex[off] & 0x80:  # skip the uleb128 utf16 length
            off += 1
        off += 1
        end = dex.index(b"\x00", off)
        return dex[off:end].decode("utf-8", "replace")

    out = []
    for i in range(class_defs_size):
        type_idx, = struct.unpack_from("<I", dex, class_defs_off + 32 * i)
        descriptor_idx, = struct.unpack_from("<I", dex, type_ids_off + 4 * type_idx)
        out.append(string(descriptor_idx))
    return out


class Checker:
    def __init__(self, project: Project, work: Path, tc: Toolchain, log=print):
        self.p = project
        self.work = work
        self.tc = tc
        self.log = log

    def exe(self, name: str) -> str:
        if Path(name).is_absolute():
            return name
        found = self.tc.tool(name)
        if found is None:
            raise CheckError("toolchain", f"`{name}` not found in {self.tc.source}\nrun `make android-toolchain`")
        return found

    def tool(self, step: str, cmd: list) -> str:
        # The command's first word is a tool name, resolved in the toolchain (SDK or PATH).
        # cwd = work folder: javac drops a javac.<date>.args file into the cwd when it crashes
        # (it does so on lambdas against android-23.jar).
        cmd = [self.exe(cmd[0])] + list(cmd[1:])
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=self.work)
        output = (r.stdout + r.stderr).strip()
        if r.returncode != 0:
            self.log(f"[x] {step}")
            raise CheckError(step, f"`{Path(str(cmd[0])).name}` exited {r.returncode}:\n{output}")
        return output

    def ok(self, step: str, detail: str = "") -> None:
        self.log(f"[✓] {step}" + (f": {detail}" if detail else ""))

    def run(self) -> CheckResult:
        t0 = time.monotonic()
        missing = self.tc.missing()
        if missing:
            how = "run `make android-toolchain`" if shutil.which("apt-get", path=self.tc.path) else SDK_HOWTO
            raise CheckError("toolchain", f"missing ({self.tc.source}) " + "; ".join(missing) + "\n" + how)
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        w = self.work
        main = self.p.main

        manifest = w / "AndroidManifest.xml"
        text = (main / "AndroidManifest.xml").read_text()
        if re.search(r"<manifest\b[^>]*\bpackage=", text):
            raise CheckError("manifest", "remove the package attribute; AGP 8 takes it from `namespace`")
        manifest.write_text(re.sub(r"<manifest\b", f'<manifest package="{self.p.application_id}"', text, count=1))

        res_zip = w / "compiled_res.zip"
        self.tool("aapt2 compile", ["aapt2", "compile", "--dir", main / "res", "-o", res_zip])
        self.ok("aapt2 compile", "res/")

        unaligned = w / "app-unaligned.apk"
        gen = w / "gen"
        link = ["aapt2", "link", "-o", unaligned, "-I", self.tc.android_jar, "--manifest", manifest,
                "--java", gen, "--custom-package", self.p.namespace,
                "--min-sdk-version", self.p.min_sdk, "--target-sdk-version", self.p.target_sdk,
                "--version-code", self.p.version_code, "--version-name", self.p.version_name,
                "--debug-mode", "--auto-add-overlay"]
        assets = main / "assets"
        if assets.is_dir() and any(not f.name.startswith(".") for f in assets.iterdir()):
            link += ["-A", assets]
        self.tool("aapt2 link", link + [res_zip])
        self.ok("aapt2 link", f"manifest + resources against {self.jar_label}")

        boot = ["-source", "8", "-target", "8", "-bootclasspath", self.tc.android_jar,
                "-Xlint:-options", "-encoding", "UTF-8", "-nowarn"]
        stubs = sorted((self.p.root / "compile_stubs").rglob("*.java"))
        stub_classes = w / "stub_classes"
        self.tool("javac stubs", ["javac", *boot, "-d", stub_classes, *stubs])
        self.ok("javac stubs", f"{len(stubs)} LiteRT signature stubs (compile-only)")

        sources = sorted((main / "java").rglob("*.java")) + sorted(gen.rglob("*.java"))
        classes = w / "classes"
        cp = f"{self.tc.executorch_jar}:{stub_classes}"
        self.tool("javac app", ["javac", *boot, "-classpath", cp, "-d", classes, *sources])
        self.ok("javac app", f"{len(sources)} sources against {self.jar_label} + ExecuTorch classes.jar + stubs")

        pkg_dir = self.p.namespace.replace(".", "/")
        strays = [str(c.relative_to(classes)) for c in classes.rglob("*.class")
                  if not str(c.relative_to(classes)).startswith(pkg_dir + "/")]
        if strays:
            raise CheckError("app classes", f"classes outside {self.p.namespace}: {strays[:5]}")

        dex = self.dex(classes)
        kind = "d8" if self.tc.dexer()[0] == "d8" else "dx"
        defined = dex_defined_classes(dex.read_bytes())
        prefix = "L" + pkg_dir + "/"
        foreign = [c for c in defined if not c.startswith(prefix)]
        if foreign:
            raise CheckError(kind, f"classes.dex defines classes outside the app: {foreign[:5]}")
        self.ok(kind, f"classes.dex defines {len(defined)} app classes, no runtime or stub classes")

        with zipfile.ZipFile(unaligned, "a", zipfile.ZIP_DEFLATED) as z:
            z.write(dex, "classes.dex")
        self.ok("zip", "classes.dex added")

        aligned = w / "app-aligned.apk"
        self.tool("zipalign", ["zipalign", "-f", "-p", "4", unaligned, aligned])
        self.tool("zipalign -c", ["zipalign", "-c", "-p", "4", aligned])
        self.ok("zipalign", "4-byte aligned")

        keystore = w / "debug.keystore"
        self.tool("keytool", ["keytool", "-genkeypair", "-keystore", keystore, "-storepass", KEY_PASS,
                              "-keypass", KEY_PASS, "-alias", "androiddebugkey", "-keyalg", "RSA",
                              "-keysize", "2048", "-validity", "10000",
                              "-dname", "CN=Android Debug,O=Android,C=US"])
        apk = w / "app-debug.apk"
        self.tool("apksigner sign", ["apksigner", "sign", "--ks", keystore, "--ks-pass", f"pass:{KEY_PASS}",
                                     "--key-pass", f"pass:{KEY_PASS}", "--out", apk, aligned])
        verify = self.tool("apksigner verify", ["apksigner", "verify", "--verbose", apk])
        schemes = [ln for ln in verify.splitlines() if ln.startswith("Verified using") and ln.endswith("true")]
        if not schemes:
            raise CheckError("apksigner verify", "no signature scheme verified:\n" + verify)
        self.ok("apksigner verify", ", ".join(s.split("(")[0].replace("Verified using ", "").strip()
                                             for s in schemes))

        dumper = "aapt" if self.tc.tool("aapt") else "aapt2"
        badging = self.tool("aapt dump badging", [dumper, "dump", "badging", apk])
        self.check_badging(badging)
        lines = [ln for ln in badging.splitlines() if ln.startswith(("package:", "launchable-activity:"))]
        self.ok("aapt dump badging", lines[0] if lines else "")
        return CheckResult(apk=apk, apk_bytes=apk.stat().st_size, badging="\n".join(lines),
                           dex_classes=defined, seconds=time.monotonic() - t0)

    @property
    def jar_label(self) -> str:
        level = self.tc.api_level
        return f"android-{level}.jar" if level else self.tc.android_jar.name

    def dex(self, classes: Path) -> Path:
        """classes.dex of the app's classes, with dx (Debian's jar or old build-tools) or d8."""
        found = self.tc.dexer()
        if found is None:
            raise CheckError("toolchain", f"no dx or d8 in {self.tc.source}\nrun `make android-toolchain`")
        kind, path = found
        out = self.work / "dex"
        out.mkdir()
        dex = out / "classes.dex"
        if kind == "d8":
            jar = self.work / "app-classes.jar"  # d8 takes .class files or jars, not folders
            with zipfile.ZipFile(jar, "w") as z:
                for c in sorted(classes.rglob("*.class")):
                    z.write(c, c.relative_to(classes).as_posix())
            self.tool("d8", [path, "--min-api", self.p.min_sdk, "--lib", self.tc.android_jar,
                             "--output", out, jar])
        else:
            cmd = ["java", "-jar", path] if kind == "dx.jar" else [path]
            self.tool("dx", cmd + ["--dex", f"--min-sdk-version={self.p.min_sdk}", f"--output={dex}", classes])
        if not dex.is_file():
            raise CheckError(kind, f"{kind} wrote no {dex}")
        return dex

    def check_badging(self, badging: str) -> None:
        expect = {
            "package name": f"package: name='{self.p.application_id}'",
            "versionCode": f"versionCode='{self.p.version_code}'",
            "minSdk": f"sdkVersion:'{self.p.min_sdk}'",
            "targetSdk": f"targetSdkVersion:'{self.p.target_sdk}'",
            "launcher activity": f"launchable-activity: name='{self.p.activity}'",
            "debuggable (run-as needs it)": "application-debuggable",
        }
        for what, needle in expect.items():
            if needle not in badging:
                raise CheckError("aapt dump badging", f"{what}: `{needle}` not found in\n{badging}")


def run_check(src: Path = HERE, work: Path | None = None, toolchain: Path | Toolchain = DEFAULT_DIR,
              log=print) -> CheckResult:
    """toolchain: a Toolchain, or the cache folder of `make android-toolchain` (then $ANDROID_HOME decides)."""
    src = src.resolve()
    project = read_project(src)
    work = (work or src / "build" / "check").resolve()
    tc = detect(Path(toolchain)) if isinstance(toolchain, (str, os.PathLike)) else toolchain
    return Checker(project, work, tc, log=log).run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=HERE, help="the android_demo folder to check")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default <src>/build/check)")
    ap.add_argument("--toolchain", type=Path, default=DEFAULT_DIR, help="folder filled by `make android-toolchain`")
    args = ap.parse_args(argv)
    try:
        result = run_check(args.src, args.work, args.toolchain)
    except CheckError as e:
        print(f"android-check FAILED at {e.step}:\n{e.message}", file=sys.stderr)
        return 1
    print(f"android-check OK in {result.seconds:.1f} s: {result.apk} ({result.apk_bytes / 1024:.1f} KiB)")
    print("It compiles and packages. It does not show that the app runs (no runtimes in this APK).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
