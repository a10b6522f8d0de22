"""Where the Android tools come from (toolchain.py): Debian packages, $ANDROID_HOME's SDK, or
nowhere. Nowhere means SKIPPED with a reason that names what is missing and how to get it (no
apt-get, no SDK: a Mac without Android Studio); never a silent pass, and never a skip where
apt-get exists (CI)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLCHAIN_PY = REPO / "android_demo" / "toolchain.py"


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def bare_env(tmp_path: Path, with_apt: bool) -> dict[str, str]:
    """An environment whose PATH holds no Android tools, no JDK, no npm; apt-get only if asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if with_apt:
        executable(bin_dir / "apt-get", "#!/bin/sh\necho 'E: fake apt-get' >&2\nexit 100\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ANDROID_HOME", "ANDROID_SDK_ROOT", "JAVA_HOME")}
    env["PATH"] = str(bin_dir)
    return env


# --- where nothing can be had --------------------------------------------------------

def test_toolchain_step_skips_visibly_without_apt_get_or_sdk(tmp_path):
    """`make android-toolchain` on a Mac without an SDK: exit 0, and it says what is skipped and why."""
    env = bare_env(tmp_path, with_apt=False)
    r = subprocess.run([sys.executable, str(TOOLCHAIN_PY), "ensure", "--dir", str(tmp_path / "cache"),
                        "--shared-sdk", str(tmp_path / "no-debs")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "Android checks SKIPPED: no apt-get on this machine and ANDROID_HOME is not set" in out
    for named in ("`aapt2`", "`apksigner`", "`javac`", "android-23.jar", "executorch-classes.jar",
                  "set ANDROID_HOME", "sdkmanager", "npm"):
        assert named in out, named


def test_toolchain_step_fails_where_apt_get_exists(tmp_path):
    """CI (Debian): a toolchain that cannot be completed is an error, not a skip."""
    env = bare_env(tmp_path, with_apt=True)
    r = subprocess.run([sys.executable, str(TOOLCHAIN_PY), "ensure", "--dir", str(tmp_path / "cache"),
                        "--shared-sdk", str(tmp_path / "no-debs")], capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert "SKIPPED" not in r.stdout + r.stderr
    assert "still missing" in r.stderr


@pytest.mark.parametrize("with_apt", [False, True], ids=["no-apt-get", "apt-get"])
def test_pytest_reports_the_skip_reason_or_fails(tmp_path, with_apt):
    """The Android tests themselves, in a bare environment: skipped with the reason shown, or failed."""
    env = bare_env(tmp_path, with_apt)
    if not with_apt:  # what macOS has without a JDK: java and javac that only say so
        for name in ("java", "javac"):
            executable(tmp_path / "bin" / name, "#!/bin/sh\necho 'Unable to locate a Java Runtime.' >&2\nexit 1\n")
    env["ANDROID_TOOLCHAIN"] = str(tmp_path / "empty-cache")
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider",
                        "tests/android/test_android_build.py", "tests/android/test_android_java_math.py"],
                       capture_output=True, text=True, env=env, cwd=REPO)
    out = r.stdout + r.stderr
    summary = out.strip().splitlines()[-1]
    if with_apt:
        assert r.returncode != 0, out
        assert "8 errors" in summary and "skipped" not in summary, summary
        assert "Android toolchain missing" in out and "make android-toolchain" in out
    else:
        assert r.returncode == 0, out
        # everything that needs the tools is skipped; only the "says what to run" test runs
        assert "1 passed, 8 skipped" in summary, summary
        assert out.count("SKIPPED [1] tests/android/test_android_build.py") == 5
        assert "Android checks SKIPPED: no apt-get on this machine" in out
        assert "Java checks SKIPPED: no working javac or java" in out
        assert "a working `javac`" in out  # the stub is found, and named as not working


# --- $ANDROID_HOME -------------------------------------------------------------------

def fake_sdk(root: Path, build_tools: dict[str, list[str]], platforms: list[str]) -> Path:
    for version, tools in build_tools.items():
        for tool in tools:
            executable(root / "build-tools" / version / tool)
    for level in platforms:
        jar = root / "platforms" / f"android-{level}" / "android.jar"
        jar.parent.mkdir(parents=True)
        jar.write_bytes(b"PK fake")
    executable(root / "platform-tools" / "adb")
    return root


def test_sdk_tools_are_the_newest_build_tools_and_platform(toolchain_mod, tmp_path):
    sdk = fake_sdk(tmp_path / "sdk", {"9.0.0": ["aapt2", "zipalign", "apksigner", "dx"],
                                     "35.0.0": ["aapt2", "aapt", "zipalign", "apksigner", "d8"],
                                     "30.0.3": ["aapt2", "zipalign", "apksigner", "d8", "dx"]},
                   platforms=["9", "23", "36"])
    jdk = tmp_path / "jdk"
    for name in ("javac", "java", "keytool"):
        executable(jdk / "bin" / name)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "executorch-classes.jar").write_bytes(b"PK fake")
    env = {"ANDROID_HOME": str(sdk), "JAVA_HOME": str(jdk), "PATH": str(tmp_path / "empty")}
    tc = toolchain_mod.detect(cache, env)
    assert tc.sdk == sdk and tc.build_tools == sdk / "build-tools" / "35.0.0"
    assert tc.tool("aapt2") == str(sdk / "build-tools" / "35.0.0" / "aapt2")
    assert tc.tool("adb") == str(sdk / "platform-tools" / "adb")
    assert tc.tool("javac") == str(jdk / "bin" / "javac")
    assert tc.dexer() == ("d8", str(sdk / "build-tools" / "35.0.0" / "d8"))
    assert tc.android_jar == sdk / "platforms" / "android-36" / "android.jar" and tc.api_level == 36
    assert tc.missing() == []
    assert toolchain_mod.skip_reason(tc) is None


def test_sdk_gaps_are_named_with_the_sdkmanager_package(toolchain_mod, tmp_path):
    sdk = fake_sdk(tmp_path / "sdk", {"28.0.3": ["aapt2", "zipalign"]}, platforms=[])
    env = {"ANDROID_SDK_ROOT": str(sdk), "PATH": str(tmp_path / "empty")}
    tc = toolchain_mod.detect(tmp_path / "cache", env)
    missing = "; ".join(tc.missing())
    assert "`apksigner` in" in missing and "`d8` (or `dx`)" in missing
    assert "command `javac` (a JDK 17)" in missing and "android.jar" in missing
    reason = toolchain_mod.skip_reason(tc)
    assert reason.startswith(f"Android checks SKIPPED: no apt-get on this machine and ANDROID_HOME is {sdk}")
    assert "sdkmanager 'build-tools;35.0.0' 'platforms;android-36'" in reason


WRAPPER = """#!/bin/sh
echo "{name} $*" >> {log}
exec {real} "$@"
"""

# d8's command line, carried out with Debian's dx.jar (the real d8 cannot be had here).
FAKE_D8 = """#!{python}
import subprocess, sys
args = sys.argv[1:]
open({log!r}, "a").write("d8 " + " ".join(args) + "\\n")
def take(flag):
    i = args.index(flag)
    value = args[i + 1]
    del args[i:i + 2]
    return value
min_api, lib, out = take("--min-api"), take("--lib"), take("--output")
assert lib.endswith("android.jar") and len(args) == 1 and args[0].endswith(".jar"), args
sys.exit(subprocess.call(["java", "-jar", {dx!r}, "--dex", "--min-sdk-version=" + min_api,
                          "--output=" + out + "/classes.dex", args[0]]))
"""


def test_check_runs_on_the_sdk_tools(check_build, toolchain_mod, toolchain, tmp_path):
    """The whole check with an $ANDROID_HOME layout whose build-tools log every call."""
    if toolchain.sdk is not None or not toolchain.dx_jar.is_file():
        pytest.skip("builds its fake SDK from the Debian toolchain")
    log = tmp_path / "calls.log"
    sdk = tmp_path / "sdk"
    bt = sdk / "build-tools" / "35.0.0"
    for name in ("aapt2", "aapt", "zipalign", "apksigner"):
        executable(bt / name, WRAPPER.format(name=name, log=log, real=toolchain.tool(name)))
    executable(bt / "d8", FAKE_D8.format(python=sys.executable, log=str(log), dx=str(toolchain.dx_jar)))
    platform = sdk / "platforms" / "android-23"
    platform.mkdir(parents=True)
    (platform / "android.jar").symlink_to(toolchain.android_jar)
    env = dict(os.environ, ANDROID_HOME=str(sdk))
    tc = toolchain_mod.detect(toolchain.root, env)
    assert tc.missing() == []
    lines: list[str] = []
    result = check_build.run_check(REPO / "android_demo", tmp_path / "work", tc, log=lines.append)
    assert result.apk.is_file() and "launchable-activity" in result.badging
    assert "[✓] d8: classes.dex defines" in "\n".join(lines)
    called = [line.split()[0] for line in log.read_text().splitlines()]
    assert {"aapt2", "d8", "zipalign", "apksigner", "aapt"} <= set(called), called
    d8 = next(line for line in log.read_text().splitlines() if line.startswith("d8 "))
    assert f"--lib {platform / 'android.jar'}" in d8 and "--min-api 26" in d8
