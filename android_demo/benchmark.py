#!/usr/bin/env python3
"""Benchmark the exported models on an Android phone over adb (`make bench-android`).

Steps: pick the device, install or update the app, push the models and their side
files to /data/local/tmp/<package>/, start the app with the settings as intent extras
(`am start -W -S`), poll `run-as <package> cat files/benchmark_results.json` until
the file of this run appears, then validate it against
benchmarks/schemas/device_results.schema.json, save it with the thermal state and CPU
frequencies from before and after, and print a table.

Output, in OUT/device/android/ (OUT defaults to artifacts). The folder always holds one
complete session: the new files are staged in a hidden folder beside them and replace the
previous session's only once every run has validated. Any failure leaves the previous
results as they were.
  benchmark_results.json              one run
  benchmark_results_run1.json ...     with --repeat N, one file per run
  report.md                           the tables
  benchmark_results*.json.invalid     a rejected run (fails the schema), kept for reading
  benchmark_results*.json.unparseable a results file that is not JSON, as the phone had it

--timeout bounds the wait for each run's results and every single adb call.

Exit status: 0 done, 1 failure (also: results rejected), 2 no usable device (also: the
device went offline), 3 the app died, 4 timed out (also: an adb call hung).

Needs Python 3.9+ and jsonschema (the project venv has it).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from android_results_store import (commit_session, keep_rejected, new_staging, recover_interrupted,  # noqa: E402
                           write_file)
REPO = HERE.parent
PACKAGE = "com.example.mobilebench"
ACTIVITY = ".BenchmarkActivity"
REMOTE_DIR = f"/data/local/tmp/{PACKAGE}/"
RESULTS_PATH = "files/benchmark_results.json"
DEFAULT_APK = HERE / "app" / "build" / "outputs" / "apk" / "debug" / "app-debug.apk"
DEFAULT_MODELS = HERE / "app" / "src" / "main" / "assets"
SCHEMA = REPO / "benchmarks" / "schemas" / "device_results.schema.json"
SIDE_FILES = ("models.json", "labels.txt", "test_sample.json", "test_sample.u8", "golden_outputs.json")
MODEL_SUFFIXES = (".pte", ".tflite")
LOG_TAGS = ("MobileBench", "AndroidRuntime", "DEBUG", "libc")
THERMAL_NAMES = {0: "none", 1: "light", 2: "moderate", 3: "severe", 4: "critical", 5: "emergency", 6: "shutdown"}


class BenchError(Exception):
    exit_code = 1


class DeviceError(BenchError):
    exit_code = 2


class AppCrashed(BenchError):
    exit_code = 3


class BenchTimeout(BenchError):
    exit_code = 4


class ResultsUnparseable(BenchError):
    exit_code = 1

    def __init__(self, message: str, text: str = ""):
        super().__init__(message)
        self.text = text  # the file as read from the phone


# --- adb -----------------------------------------------------------------------------

class Adb:
    """Runs `adb [-s SERIAL] ...`; every call goes through here (tests swap the binary).

    Every call is bounded by `timeout` (the --timeout flag); a call may ask for less, never more.
    """

    def __init__(self, binary: str, serial: str | None = None, timeout: float = 900.0):
        self.binary = binary
        self.serial = serial
        self.timeout = timeout

    def call(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        limit = self.timeout if timeout is None else min(timeout, self.timeout)
        cmd = [self.binary] + (["-s", self.serial] if self.serial else []) + [str(a) for a in args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired as e:
            raise BenchTimeout(f"`{shlex.join(cmd)}` did not return within {limit:g} s (--timeout); "
                               "the phone or adb is stuck: check `adb devices`, unlock the phone, "
                               "or raise --timeout") from e

    def run(self, *args: str, timeout: float | None = None) -> str:
        r = self.call(*args, timeout=timeout)
        if r.returncode != 0:
            raise BenchError(f"`adb {' '.join(args)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")
        return r.stdout

    def shell(self, command: str, timeout: float | None = None) -> str:
        return self.run("shell", command, timeout=timeout)

    def shell_quiet(self, command: str, timeout: float | None = 60) -> tuple[int, str, str]:
        r = self.call("shell", command, timeout=timeout)
        return r.returncode, r.stdout, r.stderr

    def state(self) -> str | None:
        """`adb get-state`: 'device' when usable; otherwise what adb said (offline, not found, ...);
        None when adb itself does not answer (then nothing can be said about the device)."""
        try:
            r = self.call("get-state", timeout=10)
        except BenchTimeout:
            return None
        return r.stdout.strip() if r.returncode == 0 else (r.stderr or r.stdout).strip() or "unknown"


def went_offline(adb: Adb, during: str) -> DeviceError | None:
    """A DeviceError when `adb get-state` no longer says 'device', else None."""
    state = adb.state()
    if state is None or state == "device":
        return None
    return DeviceError(f"device {adb.serial} went offline {during} (adb get-state: {state}). Reconnect it "
                       "(cable, USB debugging prompt; `adb devices` must say `device`) and run again")


def find_adb(flag: str | None) -> str:
    name = flag or os.environ.get("ADB") or "adb"
    path = shutil.which(name)
    if path is None:
        raise BenchError(f"adb not found: `{name}` (install platform-tools, or set ADB=/path/to/adb)")
    return path


def parse_devices(text: str) -> list[tuple[str, str]]:
    """(serial, state) pairs from `adb devices` output; state as adb prints it."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("*") or line.startswith("List of devices") or line.startswith("adb "):
            continue
        parts = line.split(None, 1)
        out.append((parts[0], parts[1].strip() if len(parts) > 1 else "unknown"))
    return out


def select_device(devices: list[tuple[str, str]], serial: str | None) -> str:
    """The serial to use, or DeviceError saying exactly what to do."""
    listing = ", ".join(f"{s} ({st})" for s, st in devices) or "none"
    if serial:
        match = [d for d in devices if d[0] == serial]
        if not match:
            raise DeviceError(f"device {serial} is not connected; adb sees: {listing}")
        state = match[0][1]
    else:
        if not devices:
            raise DeviceError("no device found: connect the phone by USB, enable USB debugging in "
                              "Developer options, and accept the prompt on the phone (`adb devices` is empty)")
        if len(devices) > 1:
            raise DeviceError(f"{len(devices)} devices connected ({listing}); choose one with -s SERIAL "
                              "or ANDROID_SERIAL=SERIAL")
        serial, state = devices[0]
    if state == "device":
        return serial
    if state == "unauthorized":
        raise DeviceError(f"device {serial} is unauthorized: unlock the phone and accept the "
                          "'Allow USB debugging?' prompt, then retry")
    if state == "offline":
        raise DeviceError(f"device {serial} is offline: reconnect the cable, or run `adb kill-server` and retry")
    raise DeviceError(f"device {serial} is not usable (state: {state})")


# --- device steps ----------------------------------------------------------------------

def install(adb: Adb, apk: Path) -> None:
    if not apk.is_file():
        raise BenchError(f"APK not found: {apk}\nbuild it first: cd android_demo && ./gradlew assembleDebug")
    out = adb.run("install", "-r", "-t", str(apk))
    if "Success" not in out:
        hint = ""
        if "INSTALL_FAILED_UPDATE_INCOMPATIBLE" in out:
            hint = f"\nan app with another signature is installed: adb uninstall {PACKAGE}"
        raise BenchError(f"adb install failed:\n{out.strip()}{hint}")


def require_installed(adb: Adb) -> None:
    if "package:" not in adb.shell(f"pm path {PACKAGE}"):
        raise BenchError(f"{PACKAGE} is not installed (drop --no-install)")


def files_to_push(models_dir: Path) -> list[Path]:
    if not models_dir.is_dir():
        raise BenchError(f"model folder not found: {models_dir} (run `make export-android`)")
    models = sorted(p for p in models_dir.iterdir() if p.suffix in MODEL_SUFFIXES)
    if not models:
        raise BenchError(f"no .pte or .tflite in {models_dir} (run `make export-android`)")
    side = [models_dir / n for n in SIDE_FILES if (models_dir / n).is_file()]
    return models + side


def push_models(adb: Adb, files: list[Path]) -> None:
    adb.shell(f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR}")
    for f in files:
        adb.run("push", str(f), REMOTE_DIR)
    adb.shell(f"chmod -R a+rX {REMOTE_DIR}")


def device_state(adb: Adb) -> dict:
    """Thermal status, battery temperature and current CPU frequencies; never fatal."""
    state: dict = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    rc, out, _ = adb.shell_quiet("dumpsys thermalservice")
    for line in out.splitlines():
        if line.strip().startswith("Thermal Status:"):
            try:
                level = int(line.split(":", 1)[1].strip())
                state["thermal_status"] = level
                state["thermal_status_name"] = THERMAL_NAMES.get(level, str(level))
            except ValueError:
                pass
            break
    rc, out, _ = adb.shell_quiet("dumpsys battery")
    for line in out.splitlines():
        if line.strip().startswith("temperature:"):
            try:
                state["battery_temp_c"] = int(line.split(":", 1)[1]) / 10.0
            except ValueError:
                pass
    rc, out, _ = adb.shell_quiet(
        'for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq; do echo "$f $(cat $f)"; done')
    freqs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            freqs[parts[0].split("/")[5]] = int(parts[1])
    if freqs:
        state["cpufreq_khz"] = freqs
    return state


def logcat_excerpt(adb: Adb, lines: int = 60) -> str:
    """Crash buffer plus the app's and the crash handlers' tags."""
    seen: list[str] = []
    for args in (("logcat", "-d", "-b", "crash"),
                 ("logcat", "-d", "-v", "brief", "-s", *[f"{t}:V" for t in LOG_TAGS])):
        r = adb.call(*args, timeout=60)
        for ln in r.stdout.splitlines():
            if ln.strip() and not ln.startswith("---------") and ln not in seen:
                seen.append(ln)
    return "\n".join(seen[-lines:]) or "(logcat had nothing relevant)"


def start_app(adb: Adb, run_id: str, args: argparse.Namespace, models: list[str] | None) -> None:
    """models: the pushed model file names (None: use the models bundled in the APK)."""
    extras = [f"--ei warmup {args.warmup}", f"--ei iterations {args.iterations}",
              f"--ei threads {args.threads}", f"--es run_id {run_id}", "--ez autorun true"]
    if models is not None:
        # Naming the files spares the app listing /data/local/tmp, which it may not be allowed to do.
        extras[:0] = [f"--es model_dir {REMOTE_DIR}", "--es model_files " + shlex.quote(",".join(models))]
    out = adb.shell(f"am start -W -S -n {PACKAGE}/{ACTIVITY} " + " ".join(extras))
    if "Error" in out or "Exception" in out:
        raise BenchError("am start failed:\n" + out.strip())


class Unparseable:
    """A results file that exists but is not JSON: the text as read, and the parser's complaint."""

    def __init__(self, text: str, error: json.JSONDecodeError):
        self.text = text
        self.error = error

    def describe(self) -> str:
        head = self.text.strip()[:120].replace("\n", " ")
        return f"{self.error.msg} at line {self.error.lineno} column {self.error.colno}; it begins {head!r}"


def read_results(adb: Adb) -> tuple[dict | Unparseable | None, str]:
    """(document, "") when the file is JSON; (Unparseable, "") when it is not; (None, adb's words) when absent."""
    rc, out, err = adb.shell_quiet(f"run-as {PACKAGE} cat {RESULTS_PATH}")
    if rc == 0 and out.strip():
        try:
            doc = json.loads(out)
        except json.JSONDecodeError as e:
            return Unparseable(out, e), ""
        if not isinstance(doc, dict):
            return Unparseable(out, json.JSONDecodeError("not a JSON object", out, 0)), ""
        return doc, ""
    return None, (err or out).strip()


def wait_for_results(adb: Adb, run_id: str, timeout: float, poll: float) -> dict:
    """This run's results document. The app deletes the old file when it starts and writes the new
    one atomically, so a file that is not JSON twice in a row, or after the app exited, is final."""
    deadline = time.monotonic() + timeout
    unparseable_before = False
    while True:
        doc, problem = read_results(adb)
        if isinstance(doc, dict) and doc.get("run_id") == run_id:
            return doc
        if "not debuggable" in problem or "is unknown" in problem:
            raise BenchError(f"run-as cannot read the results: {problem}\n(install the debug APK)")
        if isinstance(doc, Unparseable):
            if unparseable_before:
                raise ResultsUnparseable(f"results file unparseable: {RESULTS_PATH} on the phone: {doc.describe()}",
                                         doc.text)
            unparseable_before = True
        else:
            unparseable_before = False
        rc, pid, _ = adb.shell_quiet(f"pidof {PACKAGE}")
        if not pid.strip():
            offline = went_offline(adb, "while the app was running")
            if offline:
                raise offline
            doc, _ = read_results(adb)  # it may have written the file and then exited
            if isinstance(doc, dict) and doc.get("run_id") == run_id:
                return doc
            if isinstance(doc, Unparseable):
                raise ResultsUnparseable(f"results file unparseable: the app exited after writing {RESULTS_PATH}, "
                                         f"which is not JSON: {doc.describe()}", doc.text)
            raise AppCrashed(f"the app process died before writing its results. logcat:\n{logcat_excerpt(adb)}")
        if time.monotonic() >= deadline:
            raise BenchTimeout(f"no results after {timeout:.0f} s (the app is still running; raise --timeout "
                               f"or lower --iterations). logcat:\n{logcat_excerpt(adb)}")
        time.sleep(poll)


# --- results ---------------------------------------------------------------------------

def schema_errors(doc: dict, schema_path: Path = SCHEMA) -> list[str]:
    try:
        import jsonschema
    except ImportError as e:
        raise BenchError("jsonschema is needed to validate results (use .venv/bin/python)") from e
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        errors.append(f"{where}: {e.message}")
    return errors


def device_warnings(doc: dict) -> list[str]:
    dev = doc.get("device", {})
    out = [f"device.{k} is '{dev.get(k)}'" for k in ("model", "manufacturer", "soc", "abi")
           if str(dev.get(k, "unknown")).lower() in ("", "unknown")]
    out += [f"device.{k} is {dev.get(k)}" for k in ("cores", "total_ram_mb") if not dev.get(k)]
    return out


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


COLUMNS = [
    ("load ms", "model_load_time(ms)"), ("1st ms", "first_inference_latency(ms)"),
    ("avg ms", "avg_inference_latency(ms)"), ("std", "std_inference_latency(ms)"),
    ("p50", "p50_inference_latency(ms)"), ("p90", "p90_inference_latency(ms)"),
    ("p99", "p99_inference_latency(ms)"), ("trimmed", "trimmean_inference_latency(ms)"),
    ("PSS before MB", "memory_before_load(mb)"), ("PSS peak MB", "ram_pss_usage(mb)"),
    ("native heap MB", "native_heap(mb)"), ("accuracy", "accuracy"),
]


def results_table(doc: dict) -> str:
    head = ["model", "runtime", "quant"] + [c for c, _ in COLUMNS]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["results"]:
        if r["status"] != "ok":
            cells = [r["model"], r["runtime"], r.get("quant", ""), f"error: {r.get('error')}"]
            cells += [""] * (len(head) - len(cells))
        else:
            m = r["metrics"]
            cells = [r["model"], r["runtime"], r.get("quant", "")] + [_fmt(m.get(k)) for _, k in COLUMNS]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def summary_table(runs: list[dict]) -> str:
    """Across repeats: median and spread of each model's per-run mean latency."""
    by_model: dict[tuple[str, str], list[dict]] = {}
    for doc in runs:
        for r in doc["results"]:
            if r["status"] == "ok":
                by_model.setdefault((r["model"], r["runtime"]), []).append(r["metrics"])
    rows = ["| model | runtime | runs ok | avg ms (median of runs) | avg ms (min–max) | p90 ms (median) "
            "| PSS peak MB (max) |", "|---|---|---|---|---|---|---|"]
    for (model, runtime), ms in sorted(by_model.items()):
        avgs = [m["avg_inference_latency(ms)"] for m in ms]
        p90s = [m["p90_inference_latency(ms)"] for m in ms]
        rows.append(f"| {model} | {runtime} | {len(ms)}/{len(runs)} | {_fmt(statistics.median(avgs))} | "
                    f"{_fmt(min(avgs))}–{_fmt(max(avgs))} | {_fmt(statistics.median(p90s))} | "
                    f"{_fmt(max(m['ram_pss_usage(mb)'] for m in ms))} |")
    return "\n".join(rows)


def _thermal(state: dict | None) -> str:
    if not state:
        return "not recorded"
    parts = []
    if "thermal_status_name" in state:
        parts.append(state["thermal_status_name"])
    if "battery_temp_c" in state:
        parts.append(f"battery {state['battery_temp_c']:.1f} °C")
    if "cpufreq_khz" in state:
        f = state["cpufreq_khz"].values()
        parts.append(f"cpufreq {min(f) // 1000}–{max(f) // 1000} MHz")
    return ", ".join(parts) or "unavailable"


def markdown_report(runs: list[dict]) -> str:
    first = runs[0]
    d, s = first["device"], first["settings"]
    lines = [
        "# Android on-device benchmark",
        "",
        f"- Device: {d['manufacturer']} {d['model']}, SoC {d['soc']}, {d['abi']}, {d['os_version']}, "
        f"{d['cores']} cores, {d['total_ram_mb']:.0f} MB RAM{' (emulator)' if d.get('is_simulator') else ''}",
        f"- Settings: warm-up {s['warmup']}, iterations {s['iterations']}, threads {s['threads']}; "
        f"app {first['app']['name']} {first['app']['version']}",
        "- Latency in ms over the timed iterations (trimmed = mean without the fastest and slowest 10 %). "
        "Memory is PSS in MiB; PSS peak is sampled during the accuracy pass. Accuracy is top-1 on the "
        "bundled test sample.",
        "",
    ]
    for i, doc in enumerate(runs, 1):
        ctx = doc.get("run_context", {})
        lines += [f"## Run {i} of {len(runs)}", "",
                  f"Started {doc['started_at']}, run_id `{doc.get('run_id', '?')}`. "
                  f"Before: {_thermal(ctx.get('before'))}. After: {_thermal(ctx.get('after'))}.", "",
                  results_table(doc), ""]
        for e in doc.get("errors", []):
            lines.append(f"- app reported: {e}")
        if doc.get("errors"):
            lines.append("")
    if len(runs) > 1:
        lines += ["## Across runs", "", summary_table(runs), ""]
    return "\n".join(lines)


def output_names(repeat: int) -> list[str]:
    if repeat == 1:
        return ["benchmark_results.json"]
    return [f"benchmark_results_run{i}.json" for i in range(1, repeat + 1)]


# --- main ------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-s", "--serial", help="device serial (default: $ANDROID_SERIAL, or the only device)")
    ap.add_argument("--adb", help="adb binary (default: $ADB, or adb on PATH)")
    ap.add_argument("--apk", type=Path, default=DEFAULT_APK, help="debug APK to install (default: Gradle's output)")
    ap.add_argument("--no-install", action="store_true", help="use the app already on the phone")
    ap.add_argument("--models", type=Path, default=DEFAULT_MODELS,
                    help="folder with the .pte/.tflite files and models.json, test_sample.* "
                         "(default: the app's assets, filled by `make export-android`)")
    ap.add_argument("--no-push", action="store_true", help="benchmark the models bundled in the APK instead")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "artifacts")),
                    help="artifacts folder; results go to OUT/device/android/ (default: $OUT or artifacts)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="run the whole benchmark N times, keeping every run")
    ap.add_argument("--cooldown", type=float, default=0.0, help="seconds to wait between repeats")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds to wait for one run's results; also the limit for every adb call "
                         "(a call that hangs longer ends the script with exit status 4)")
    ap.add_argument("--poll-interval", type=float, default=2.0)
    ap.add_argument("--no-device-state", action="store_true",
                    help="do not record thermal status, battery temperature and cpufreq")
    args = ap.parse_args(argv)
    for name in ("warmup", "iterations", "threads", "repeat"):
        low = 0 if name == "warmup" else 1
        if getattr(args, name) < low:
            ap.error(f"--{name} must be >= {low}")
    for name in ("timeout", "poll_interval"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0 seconds")
    return args


def run_once(adb: Adb, i: int, args: argparse.Namespace, models: list[str] | None, staging: Path,
             out_dir: Path, name: str) -> dict:
    """One run of the app; its validated results go to the staging folder."""
    run_id = uuid.uuid4().hex[:12]
    before = None if args.no_device_state else device_state(adb)
    adb.call("logcat", "-c")
    print(f"run {i}/{args.repeat} (run_id {run_id}): warm-up {args.warmup}, "
          f"iterations {args.iterations}, threads {args.threads}")
    start_app(adb, run_id, args, models)
    try:
        doc = wait_for_results(adb, run_id, args.timeout, args.poll_interval)
    except ResultsUnparseable as e:
        kept = keep_rejected(out_dir, name + ".unparseable", e.text)
        raise ResultsUnparseable(f"{e} (the file as read: {kept})", e.text) from None
    after = None if args.no_device_state else device_state(adb)
    doc["run_context"] = {"serial": adb.serial, "repeat": i, "of": args.repeat,
                          "model_dir": REMOTE_DIR if models is not None else "assets",
                          "before": before, "after": after}
    problems = schema_errors(doc)
    if problems:
        bad = keep_rejected(out_dir, name + ".invalid", json.dumps(doc, indent=2) + "\n")
        raise BenchError(f"results of run {i} do not match {SCHEMA.name} (saved to {bad}):\n  "
                         + "\n  ".join(problems))
    write_file(staging, name, json.dumps(doc, indent=2) + "\n")
    for w in device_warnings(doc):
        print(f"warning: {w}", file=sys.stderr)
    for e in doc.get("errors", []):
        print(f"app reported: {e}", file=sys.stderr)
    return doc


def run_session(adb: Adb, args: argparse.Namespace, staging: Path, out_dir: Path) -> list[dict]:
    name = adb.shell("getprop ro.product.model").strip()
    print(f"device {adb.serial} ({name or 'unknown model'})")
    if args.no_install:
        require_installed(adb)
    else:
        install(adb, args.apk)
        print(f"installed {args.apk.name}")
    models = None
    if not args.no_push:
        files = files_to_push(args.models)
        push_models(adb, files)
        models = [f.name for f in files if f.suffix in MODEL_SUFFIXES]
        print(f"pushed {len(files)} files to {REMOTE_DIR}")
    names = output_names(args.repeat)
    runs = []
    for i in range(1, args.repeat + 1):
        runs.append(run_once(adb, i, args, models, staging, out_dir, names[i - 1]))
        if i < args.repeat and args.cooldown > 0:
            time.sleep(args.cooldown)
    return runs


def benchmark(args: argparse.Namespace) -> list[dict]:
    adb_bin = find_adb(args.adb)
    serial = select_device(parse_devices(Adb(adb_bin, timeout=args.timeout).run("devices")),
                           args.serial or os.environ.get("ANDROID_SERIAL"))
    adb = Adb(adb_bin, serial, timeout=args.timeout)
    out_dir = args.out / "device" / "android"
    out_dir.mkdir(parents=True, exist_ok=True)
    recover_interrupted(out_dir)
    previous = sorted(out_dir.glob("benchmark_results*.json"))
    staging = new_staging(out_dir)
    try:
        runs = run_session(adb, args, staging, out_dir)
        report = markdown_report(runs)
        write_file(staging, "report.md", report)
        try:
            written = commit_session(staging, out_dir)
        except OSError as e:
            raise BenchError(f"could not move the new results into {out_dir}: {e}") from e
    except BenchError as e:
        if not isinstance(e, DeviceError):
            offline = went_offline(adb, "during the benchmark")
            if offline:
                offline.note = e.note = _kept_note(previous, out_dir)
                raise offline from e
        e.note = _kept_note(previous, out_dir)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for path in written:
        print(f"wrote {path}")
    print()
    print(report)
    failed = [r["model"] for doc in runs for r in doc["results"] if r["status"] != "ok"]
    if failed:
        print(f"warning: {len(failed)} model run(s) ended in an error row: {sorted(set(failed))}", file=sys.stderr)
    return runs


def _kept_note(previous: list[Path], out_dir: Path) -> str:
    if previous:
        return f"nothing replaced: the previous results in {out_dir} are as they were"
    return "no results written"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        benchmark(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        if getattr(e, "note", None):
            print(e.note, file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
