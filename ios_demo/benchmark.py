#!/usr/bin/env python3
"""Run the iOS benchmark with `xcodebuild test` and collect its results.

Needs macOS with Xcode 16+ and XcodeGen, and an iPhone (or a simulator, which the
results label as such). Steps:

1. `xcodegen generate` if ios_demo/ConvNetBench.xcodeproj does not exist yet;
2. `xcodebuild test -scheme ConvNetBench -destination DEST` (Release build); the XCTest
   `BenchmarkTests` measures every bundled model and prints the results JSON to the
   log as numbered base64 chunks between CONVNETBENCH_JSON_BEGIN / _END markers;
3. the JSON is taken from the log (if the log lost it: from the .xcresult attachment),
   XCTest's own metrics (XCTClockMetric, XCTMemoryMetric) are parsed from the
   "measured [...]" lines, and everything is checked against
   benchmarks/schemas/device_results.schema.json;
4. OUT/device/ios/benchmark_results.json, report.md, xcodebuild.log and the .xcresult are
   written and a table is printed.

A run writes into a hidden staging folder first. Only results that validate replace the
previous session in OUT/device/ios/; when a run fails (no results, schema errors, xcodebuild
missing), the previous files stay as they were and this run's log, report and rejected JSON
go to OUT/device/ios/last-failed-run/.

On Linux only `--help` and `--from-log FILE` (re-parse a saved xcodebuild log) work.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from ios_results_store import FAILED_DIR, commit_session, keep_failed, new_staging, recover_interrupted  # noqa: E402
SCHEMA = REPO / "benchmarks" / "schemas" / "device_results.schema.json"
SCHEME = "ConvNetBench"

# Keep in step with ResultsWriter.swift.
MARK_BEGIN = "CONVNETBENCH_JSON_BEGIN"
MARK_CHUNK = "CONVNETBENCH_JSON_CHUNK"
MARK_END = "CONVNETBENCH_JSON_END"
CHUNK_LENGTH = 512

BEGIN_RE = re.compile(MARK_BEGIN + r" chunks=(\d+) bytes=(\d+)")
CHUNK_RE = re.compile(MARK_CHUNK + r" (\d+)/(\d+) ([A-Za-z0-9+/=]+)")
METRIC_RE = re.compile(
    r"Test Case '-\[(?P<suite>[\w.]+) (?P<test>\w+)\]' measured "
    r"\[(?P<metric>[^,\]]+), (?P<unit>[^\]]+)\] average: (?P<average>[-+\deE.]+), "
    r"relative standard deviation: (?P<rsd>[-+\deE.]+)%, values: \[(?P<values>[^\]]*)\]"
)
SUMMARY_RE = re.compile(r"Executed (\d+) tests?, with (\d+) failures?")


class BenchmarkError(Exception):
    """A failure with a message meant for the user."""


# ---------------------------------------------------------------- log parsing

def encode_for_log(data: bytes, chunk_length: int = CHUNK_LENGTH) -> list[str]:
    """The lines ResultsWriter.emitToLog prints (used by tests and to document the format)."""
    text = base64.b64encode(data).decode("ascii")
    chunks = [text[i:i + chunk_length] for i in range(0, len(text), chunk_length)]
    lines = [f"{MARK_BEGIN} chunks={len(chunks)} bytes={len(data)}"]
    lines += [f"{MARK_CHUNK} {i}/{len(chunks)} {c}" for i, c in enumerate(chunks, 1)]
    return lines + [MARK_END]


def extract_results_json(log_text: str) -> dict | None:
    """The last complete results JSON printed in an xcodebuild log, or None if there is none.

    Raises BenchmarkError when a block is there but damaged (lost chunk, wrong size, bad JSON).
    """
    lines = log_text.splitlines()
    begins = [i for i, line in enumerate(lines) if BEGIN_RE.search(line)]
    if not begins:
        return None
    start = begins[-1]
    begin = BEGIN_RE.search(lines[start])
    total, size = int(begin.group(1)), int(begin.group(2))
    chunks: dict[int, str] = {}
    for line in lines[start + 1:]:
        if MARK_END in line:
            break
        match = CHUNK_RE.search(line)
        if match and int(match.group(2)) == total:
            chunks[int(match.group(1))] = match.group(3)
    missing = [i for i in range(1, total + 1) if i not in chunks]
    if missing:
        raise BenchmarkError(f"results block in the log is missing chunk(s) {missing[:5]} of {total}")
    data = base64.b64decode("".join(chunks[i] for i in range(1, total + 1)))
    if len(data) != size:
        raise BenchmarkError(f"results block decodes to {len(data)} bytes, the marker says {size}")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise BenchmarkError(f"results block is not JSON: {exc}") from exc


def parse_xctest_metrics(log_text: str) -> list[dict]:
    """XCTest `measure` results: one dict per test and metric."""
    metrics = []
    for match in METRIC_RE.finditer(log_text):
        values = [float(v) for v in match.group("values").split(",") if v.strip()]
        metrics.append({
            "test": f"{match.group('suite')}.{match.group('test')}",
            "metric": match.group("metric").strip(),
            "unit": match.group("unit").strip(),
            "average": float(match.group("average")),
            "relative_std_percent": float(match.group("rsd")),
            "values": values,
        })
    return metrics


def parse_test_summary(log_text: str) -> dict:
    """Counts from the last "Executed N tests, with M failures" line and the final verdict."""
    counts = SUMMARY_RE.findall(log_text)
    executed, failures = (int(counts[-1][0]), int(counts[-1][1])) if counts else (0, 0)
    if "** TEST SUCCEEDED **" in log_text:
        verdict = "succeeded"
    elif "** TEST FAILED **" in log_text:
        verdict = "failed"
    else:
        verdict = "unknown"
    return {"executed": executed, "failures": failures, "verdict": verdict}


def is_simulator_destination(destination: str) -> bool:
    return "simulator" in destination.lower()


# ---------------------------------------------------------------- checks

def schema_errors(doc: dict, schema_path: Path = SCHEMA) -> list[str]:
    import jsonschema

    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def ios_errors(doc: dict, destination: str | None) -> list[str]:
    """What the shared schema allows but an iOS run must not be."""
    errors = []
    if doc.get("platform") != "ios":
        errors.append(f"platform is {doc.get('platform')!r}, expected 'ios'")
    if doc.get("memory_kind") != "phys_footprint":
        errors.append(f"memory_kind is {doc.get('memory_kind')!r}, expected 'phys_footprint'")
    if destination is not None:
        expected = is_simulator_destination(destination)
        if doc.get("device", {}).get("is_simulator") is not expected:
            errors.append(f"device.is_simulator is {doc.get('device', {}).get('is_simulator')} "
                          f"but the destination {destination!r} says {expected}")
    for i, row in enumerate(doc.get("results", [])):
        units = row.get("compute_units")
        if row.get("runtime") == "coreml" and units is None:
            errors.append(f"results/{i}: Core ML row without compute_units")
        if row.get("runtime") != "coreml" and units is not None:
            errors.append(f"results/{i}: compute_units set on a {row.get('runtime')} row")
    return errors


# ---------------------------------------------------------------- report

def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def results_table(doc: dict) -> str:
    header = ["model", "runtime", "units", "status", "cold load ms", "warm load ms", "first ms",
              "mean ms", "std", "min", "p50", "p90", "p99", "trim mean", "MiB before/after/peak", "accuracy"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in doc.get("results", []):
        m = row.get("metrics") or {}
        head = [row.get("model", "?"), row.get("runtime", "?"), row.get("compute_units") or "–", row.get("status", "?")]
        if row.get("status") != "ok":
            cells = head + [f"error: {row.get('error', '')}"] + [""] * (len(header) - 5)
        else:
            memory = "/".join(_fmt(m.get(k)) for k in
                              ("memory_before_load(mb)", "memory_after_load(mb)", "memory_peak_inference(mb)"))
            cells = head + [_fmt(m.get(k)) for k in (
                "model_load_time(ms)", "warm_load_time(ms)", "first_inference_latency(ms)",
                "avg_inference_latency(ms)", "std_inference_latency(ms)", "min_inference_latency(ms)",
                "p50_inference_latency(ms)", "p90_inference_latency(ms)", "p99_inference_latency(ms)",
                "trimmean_inference_latency(ms)")]
            cells += [memory, f"{m.get('accuracy', 0) * 100:.1f}% of {m.get('sample_size', '?')}"]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def metrics_table(metrics: list[dict]) -> str:
    lines = ["| test | metric | average | rel. std % | runs |", "|---|---|---|---|---|"]
    for m in metrics:
        lines.append(f"| {m['test']} | {m['metric']} ({m['unit']}) | {m['average']:g} | "
                     f"{m['relative_std_percent']:.1f} | {len(m['values'])} |")
    return "\n".join(lines)


def render_report(doc: dict | None, metrics: list[dict], summary: dict, destination: str | None) -> str:
    parts = ["# iOS on-device benchmark", ""]
    if doc:
        dev = doc["device"]
        where = "**SIMULATOR: these are Mac numbers, not iPhone numbers.**" if dev.get("is_simulator") else "Device run."
        parts += [where, "",
                  f"- device: {dev['model']} ({dev['soc']}), {dev['os_version']}, {dev['cores']} cores, "
                  f"{dev['total_ram_mb']:.0f} MiB RAM",
                  f"- app: {doc['app']['name']} {doc['app']['version']}, started {doc['started_at']}",
                  f"- settings: warmup {doc['settings']['warmup']}, iterations {doc['settings']['iterations']}",
                  f"- memory: {doc.get('memory_kind')} (task_vm_info), MiB",
                  "", results_table(doc), ""]
        for warning in doc.get("warnings", []):
            parts.append(f"- warning: {warning}")
    else:
        parts += ["No results JSON was found: only XCTest's own metrics are below.", ""]
    if destination:
        parts.append(f"- destination: `{destination}`")
    parts.append(f"- xcodebuild test: {summary['verdict']}, {summary['executed']} tests, {summary['failures']} failures")
    if metrics:
        parts += ["", "## XCTest metrics (XCTClockMetric, XCTMemoryMetric)", "", metrics_table(metrics)]
    return "\n".join(parts) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- running xcodebuild

def require_tool(name: str, why: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BenchmarkError(f"{name} not found on PATH: {why}")
    return path


def xcodebuild_command(project: Path, destination: str, result_bundle: Path, team: str | None) -> list[str]:
    cmd = ["xcodebuild", "test", "-project", str(project), "-scheme", SCHEME,
           "-destination", destination, "-resultBundlePath", str(result_bundle)]
    if not is_simulator_destination(destination):
        cmd.append("-allowProvisioningUpdates")
    if team:
        cmd.append(f"DEVELOPMENT_TEAM={team}")
    return cmd


def test_environment(args: argparse.Namespace) -> dict[str, str]:
    """xcodebuild passes TEST_RUNNER_X to the test process as X."""
    env = dict(os.environ)
    env["TEST_RUNNER_BENCH_WARMUP"] = str(args.warmup)
    env["TEST_RUNNER_BENCH_ITERATIONS"] = str(args.iterations)
    if args.compute_units:
        env["TEST_RUNNER_BENCH_COMPUTE_UNITS"] = args.compute_units
    return env


def run_and_tee(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> tuple[int, str]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + " ".join(cmd), flush=True)
    with open(log_path, "w", encoding="utf-8") as log, subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    return code, log_path.read_text(encoding="utf-8")


def results_from_xcresult(result_bundle: Path) -> dict | None:
    """Fallback: the JSON attached to the test (xcresulttool of Xcode 16+)."""
    if not result_bundle.exists() or shutil.which("xcrun") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["xcrun", "xcresulttool", "export", "attachments",
                               "--path", str(result_bundle), "--output-path", tmp],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return None
        for candidate in sorted(Path(tmp).rglob("*.json")):
            try:
                doc = json.loads(candidate.read_text())
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(doc, dict) and doc.get("platform") == "ios" and "results" in doc:
                return doc
    return None


# ---------------------------------------------------------------- main

def collect(log_text: str, destination: str | None, result_bundle: Path | None) -> tuple[dict | None, list[dict], dict]:
    doc = extract_results_json(log_text)
    if doc is None and result_bundle is not None:
        doc = results_from_xcresult(result_bundle)
    return doc, parse_xctest_metrics(log_text), parse_test_summary(log_text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--destination", help="xcodebuild -destination, e.g. 'platform=iOS,id=<UDID>' for an "
                        "iPhone or 'platform=iOS Simulator,name=iPhone 16' (labelled simulator)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")),
                        help="output root; results go to OUT/device/ios (default: %(default)s)")
    parser.add_argument("--project", type=Path, default=HERE / f"{SCHEME}.xcodeproj")
    parser.add_argument("--team", help="Apple development team ID for signing (device runs)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--compute-units", help="subset of Core ML settings, e.g. 'cpu,all' "
                        "(cpu, cpu_gpu, cpu_ne, all; default all four)")
    parser.add_argument("--from-log", type=Path, help="parse a saved xcodebuild log instead of running xcodebuild")
    parser.add_argument("--schema", type=Path, default=SCHEMA)
    args = parser.parse_args(argv)
    if args.from_log is None and not args.destination:
        parser.error("--destination is required unless --from-log is given")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = args.out / "device" / "ios"
    out_dir.mkdir(parents=True, exist_ok=True)
    recover_interrupted(out_dir)
    staging = new_staging(out_dir)
    try:
        return run(args, out_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run(args: argparse.Namespace, out_dir: Path, staging: Path) -> int:
    """One benchmark; everything it writes goes to `staging` until the results validate."""
    kept = ("the previous results in " + str(out_dir) + " are as they were"
            if (out_dir / "benchmark_results.json").exists() else "no results written")
    try:
        if args.from_log is not None:
            log_text = args.from_log.read_text(encoding="utf-8", errors="replace")
            write_atomic(staging / "xcodebuild.log", log_text)
            doc, metrics, summary = collect(log_text, args.destination, None)
        else:
            require_tool("xcodebuild", "running the iOS benchmark needs macOS with Xcode 16+; "
                         "on other machines only --from-log FILE works")
            if not args.project.exists():
                require_tool("xcodegen", "install it with `brew install xcodegen` to generate the Xcode project")
                subprocess.run(["xcodegen", "generate", "--spec", str(HERE / "project.yml")], cwd=HERE, check=True)
            result_bundle = staging / "ConvNetBench.xcresult"
            cmd = xcodebuild_command(args.project, args.destination, result_bundle, args.team)
            code, log_text = run_and_tee(cmd, test_environment(args), staging / "xcodebuild.log", HERE)
            doc, metrics, summary = collect(log_text, args.destination, result_bundle)
            if code != 0:
                print(f"xcodebuild exited with {code}; collecting what the log holds", file=sys.stderr)
    except (BenchmarkError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if any(staging.iterdir()):
            kept += f"; this run's log: {keep_failed(staging, out_dir)}"
        print(kept, file=sys.stderr)
        return 2

    if doc is not None and metrics:
        doc["xctest_metrics"] = metrics
    problems = (schema_errors(doc, args.schema) + ios_errors(doc, args.destination)) if doc is not None else []
    report = render_report(None if problems else doc, metrics, summary, args.destination)
    write_atomic(staging / "report.md", report)
    if doc is None or problems:
        if doc is None:
            write_atomic(staging / "xctest_metrics.json", json.dumps(metrics, indent=2) + "\n")
        else:
            write_atomic(staging / "benchmark_results.json.invalid", json.dumps(doc, indent=2) + "\n")
        failed = keep_failed(staging, out_dir)
        print(report)
        for problem in problems:
            print(f"[x] {problem}", file=sys.stderr)
        if doc is None:
            print("error: no results JSON in the log or the result bundle; XCTest metrics only", file=sys.stderr)
        else:
            print(f"error: results do not match {args.schema.name} or are not an iOS run; "
                  f"kept as {FAILED_DIR}/benchmark_results.json.invalid", file=sys.stderr)
        print(f"{kept}; this run's log and report: {failed}", file=sys.stderr)
        return 1
    write_atomic(staging / "benchmark_results.json", json.dumps(doc, indent=2) + "\n")
    commit_session(staging, out_dir)
    print(report)
    print(f"[✓] wrote {out_dir / 'benchmark_results.json'} and report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
