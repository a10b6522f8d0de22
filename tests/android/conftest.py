"""Fixtures for the Android checks: the android_demo scripts as modules, the offline
toolchain, and an adb test double.

A missing toolchain fails the checks wherever apt-get exists (CI: `make android-toolchain`
installs it). Only where the tools cannot be had (no apt-get, e.g. macOS, and no usable
$ANDROID_HOME) are they skipped, with a reason that names what is missing and how to get it."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANDROID = REPO / "android_demo"
DATA = Path(__file__).resolve().parent / "data"
SCHEMA = REPO / "benchmarks" / "schemas" / "device_results.schema.json"


def _load(name: str):
    """Import android_demo/<name>.py (the folder is not a package)."""
    key = f"android_demo_{name}"
    if key in sys.modules:
        return sys.modules[key]
    if str(ANDROID) not in sys.path:
        sys.path.insert(0, str(ANDROID))  # check_build.py imports toolchain.py
    spec = importlib.util.spec_from_file_location(key, ANDROID / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def toolchain_mod():
    return _load("toolchain")


@pytest.fixture(scope="session")
def check_build():
    return _load("check_build")


@pytest.fixture(scope="session")
def bench():
    return _load("benchmark")


@pytest.fixture(scope="session")
def toolchain(toolchain_mod):
    tc = toolchain_mod.detect(Path(os.environ.get("ANDROID_TOOLCHAIN", toolchain_mod.DEFAULT_DIR)))
    missing = tc.missing()
    if missing:
        reason = toolchain_mod.skip_reason(tc)
        if reason:
            pytest.skip(reason)
        pytest.fail(f"Android toolchain missing ({tc.source}: " + "; ".join(missing)
                    + "): run `make android-toolchain`", pytrace=False)
    return tc


@pytest.fixture(scope="session")
def jdk(toolchain_mod):
    """javac and java, for the checks that need only a JDK (skipped, with the reason, where none can be had)."""
    tc = toolchain_mod.detect(toolchain_mod.DEFAULT_DIR)
    found = {name: tc.tool(name) for name in ("javac", "java")}
    if all(found.values()) and all(toolchain_mod.runs(path) for path in found.values()):
        return found
    absent = [name for name, path in found.items() if path is None or not toolchain_mod.runs(path)]
    if shutil.which("apt-get", path=tc.path) is None:
        pytest.skip(f"Java checks SKIPPED: no working {' or '.join(absent)} on PATH or in $JAVA_HOME, and no "
                    "apt-get to install one. To run them: install a JDK 17 (e.g. `brew install openjdk@17`) and put "
                    "its bin/ on PATH or set JAVA_HOME.")
    pytest.fail(f"{' and '.join(absent)} missing: run `make android-toolchain`", pytrace=False)


@pytest.fixture
def sample_results() -> dict:
    return json.loads((DATA / "sample_benchmark_results.json").read_text())


FAKE_ADB = r'''#!{python} -S
"""adb test double: answers like adb, driven by scenario.json, logs every call."""
import json, os, re, sys, time
D = {folder!r}
sc = json.load(open(os.path.join(D, "scenario.json")))
st_path = os.path.join(D, "state.json")
st = json.load(open(st_path)) if os.path.exists(st_path) else {{"cat": 0, "pidof": 0, "run_id": None,
                                                                  "offline": False, "starts": 0}}
argv = sys.argv[1:]
with open(os.path.join(D, "calls.jsonl"), "a") as f:
    f.write(json.dumps(argv) + "\n")

def out(text="", code=0, err=""):
    json.dump(st, open(st_path, "w"))
    sys.stdout.write(text)
    sys.stderr.write(err)
    sys.exit(code)

targeted = argv[:1] == ["-s"]
if targeted:
    argv = argv[2:]
cmd = argv[0] if argv else ""
if cmd == "get-state":
    if st["offline"]:
        out("", 1, "error: device offline\n")
    out(sc.get("state", "device") + "\n")
if targeted and st["offline"]:
    out("", 1, "error: device offline\n")
if cmd == "devices":
    out(sc["devices"])
if cmd == "install":
    out(sc.get("install", "Performing Streamed Install\nSuccess\n"))
if cmd == "push":
    out(argv[1] + ": 1 file pushed, 0 skipped.\n")
if cmd == "logcat":
    if "-c" in argv:
        out()
    if "crash" in argv:
        out(sc.get("logcat_crash", ""))
    out(sc.get("logcat", ""))
if cmd == "shell":
    c = argv[1]
    if c.startswith("getprop"):
        out("Pixel Fake\n")
    if c.startswith("pm path"):
        out("package:/data/app/base.apk\n")
    if c.startswith("am start"):
        if sc.get("am_start_hang"):
            time.sleep(sc["am_start_hang"])
        m = re.search(r"--es run_id (\S+)", c)
        st["run_id"] = m.group(1) if m else None
        st["cat"] = 0
        st["pidof"] = 0
        st["starts"] += 1
        out(sc.get("am_start", "Starting: Intent {{ cmp=com.example.mobilebench/.BenchmarkActivity }}\n"
                               "Status: ok\nLaunchState: COLD\nTotalTime: 420\nComplete\n"))
    crashed = sc.get("crash_on_start") == st["starts"]
    if c.startswith("run-as"):
        st["cat"] += 1
        if crashed:
            out("", 1, "cat: files/benchmark_results.json: No such file or directory\n")
        if sc.get("run_as_error"):
            out("", 1, sc["run_as_error"])
        if sc.get("stale_first") and st["cat"] == 1:
            doc = dict(sc["results"], run_id="stale-run")
            out(json.dumps(doc))
        if sc.get("results_raw") is not None and st["cat"] > sc.get("results_after", 1):
            out(sc["results_raw"])
        if sc.get("results") is not None and st["cat"] > sc.get("results_after", 1):
            doc = dict(sc["results"])
            if doc.get("run_id") == "$RUN_ID":
                doc["run_id"] = st["run_id"]
            out(json.dumps(doc))
        out("", 1, "cat: files/benchmark_results.json: No such file or directory\n")
    if c.startswith("pidof"):
        st["pidof"] += 1
        if sc.get("offline_after") is not None and st["pidof"] >= sc["offline_after"]:
            st["offline"] = True
            out("", 1, "error: device offline\n")
        if crashed:
            out("", 1)
        dies = sc.get("dies_after")
        if dies is not None and st["pidof"] >= dies:
            out("", 1)
        out("12345\n")
    if "thermalservice" in c:
        out("IsStatusOverride: false\nThermal Status: 1\n")
    if "dumpsys battery" in c:
        out("Current Battery Service state:\n  temperature: 301\n")
    if "scaling_cur_freq" in c:
        out("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq 1804800\n"
            "/sys/devices/system/cpu/cpu4/cpufreq/scaling_cur_freq 2419200\n")
    out("")
out("", 1, "fake adb: unknown command " + " ".join(argv) + "\n")
'''


class FakeAdb:
    """A fake `adb` executable in a temp folder. Configure .scenario, then read .calls()."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / "adb"
        self.path.write_text(FAKE_ADB.format(python=sys.executable, folder=str(folder)))
        self.path.chmod(self.path.stat().st_mode | stat.S_IEXEC)
        self.scenario: dict = {"devices": "List of devices attached\nFAKE123\tdevice\n\n"}

    def write(self) -> None:
        (self.folder / "scenario.json").write_text(json.dumps(self.scenario))
        for f in ("state.json", "calls.jsonl"):
            (self.folder / f).unlink(missing_ok=True)

    def calls(self) -> list[list[str]]:
        log = self.folder / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def fake_adb(tmp_path) -> FakeAdb:
    folder = tmp_path / "fake-adb"
    folder.mkdir()
    return FakeAdb(folder)


@pytest.fixture
def export_dir(tmp_path) -> Path:
    """What `make export-android` leaves in the assets folder (tiny stand-in files)."""
    d = tmp_path / "assets"
    d.mkdir()
    for name in ("convnet_xnnpack_int8.pte", "convnet_xnnpack_fp32.pte",
                 "convnet_tflite_int8.tflite", "convnet_tflite_fp32.tflite"):
        (d / name).write_bytes(b"\0" * 16)
    (d / "models.json").write_text('{"schema_version": 1, "models": []}')
    (d / "labels.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    (d / "test_sample.json").write_text('{"count": 1, "shape": [1, 28, 28], "dtype": "uint8", '
                                        '"pixels": "test_sample.u8", "labels": [7]}')
    (d / "test_sample.u8").write_bytes(bytes(784))
    (d / "notes.md").write_text("not pushed")
    return d
