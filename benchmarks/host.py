"""`bench` and `report`: measure every artifact in OUT on this host, then write the results and plots.

bench(cfg)           measures; writes OUT/bench/results.json, then the report and plots
rebuild_reports(cfg) rewrites OUT/bench/report.md and the plots from results.json and the
                     device JSONs (OUT/device/<platform>/*.json), without running anything

Each model runs in its own fresh process (`benchmarks.measure`), so its peak RSS is its own.
The PyTorch eager fp32 model is measured in the same run, and every latency is also given as
a ratio to it: absolute times on a shared machine drift, ratios drift much less.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core import io as atomic
from core import manifest as mf
from core import quantize
from core.config import FIELDS, RunConfig
from core.console import say
from core.errors import BadInput
from core.schemes import Scheme
from core.workspace import Workspace
from converters import REGISTRY, origin

from . import compare, device_agreement, plots, report, training

SCHEMA_VERSION = 1
SCHEMA = Path(__file__).parent / "schemas" / "results.schema.json"
BENCH_DIR = "bench"
RESULTS = "results.json"
THROUGHPUT_BATCH = 32
CHILD_TIMEOUT_S = 1800
# RunConfig fields that belong to this bench run rather than to the run that built OUT.
BENCH_SETTINGS = ("bench_warmup", "bench_iterations", "bench_seconds", "bench_train_steps", "bench_train_seconds")


def backend_names() -> dict[str, str]:
    """PyTorch, then every registered backend, by the name each gives itself (the order of the tables)."""
    return {"pytorch": "PyTorch", **{name: c.display_name for name, c in REGISTRY.items()}}


def thread_control() -> dict[str, str]:
    return {"pytorch": "torch.set_num_threads(n)", **{name: c.thread_control for name, c in REGISTRY.items()}}


RSS_METHOD = ("Each model runs in a fresh `python -m benchmarks.measure` process. *Baseline*: that process's RSS "
              "after it imported everything the model's runtime needs (numpy, torch, the project, the runtime), "
              "before any model is loaded; the kernel's peak-RSS mark is then reset to it (Linux: "
              "/proc/self/clear_refs). *Peak*: VmHWM after loading and running the model at every thread count "
              "and the batch-32 throughput. Reported: peak minus baseline. The bare interpreter's RSS (stdlib only) "
              "and the baseline are recorded too.")


class BenchError(BadInput, RuntimeError):
    """Nothing to benchmark, or no results to report on; the message says which command to run first."""


def bench_dir(cfg) -> Path:
    return Path(cfg.out) / BENCH_DIR


# ---- the host -----------------------------------------------------------------------------
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimd", "asimddp")


def host_info() -> dict:
    cpu, features = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as fh:
            info = dict(line.split(":", 1) for line in fh if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu = info.get("model name", cpu)
        flags = set((info.get("flags") or info.get("Features") or "").split())
        features = [f for f in SIMD_FLAGS if f in flags]  # what int8/fp32 kernels can use
    except OSError:
        if sys.platform == "darwin":
            cpu = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True).stdout.strip() or cpu
    ram_mb = None
    try:
        ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu_model": cpu, "cpu_features": features, "logical_cores": os.cpu_count(), "usable_cores": usable_cores(),
            "machine": platform.machine(), "os": platform.platform(), "total_ram_mb": ram_mb}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


# ---- what to measure ----------------------------------------------------------------------
def bench_config(cfg, manifest: dict) -> RunConfig:
    """The data and model settings the artifacts were built with (from the manifest), with this run's OUT."""
    recorded = {k: v for k, v in manifest.get("config", {}).items() if k in FIELDS}
    for name in ("dataset", "model"):
        if name in recorded and recorded[name] != getattr(cfg, name):
            say(f"bench: {cfg.out} was built with --{name} {recorded[name]}; benchmarking that, not {getattr(cfg, name)}")
    return RunConfig(**{**recorded, "out": cfg.out, "threads": 0})


def targets(manifest: dict) -> list[dict]:
    """The PyTorch baselines (fp32 eager, and each scheme's quantized graph), then every artifact of the manifest."""
    rows = [{"name": "pytorch_fp32", "label": "PyTorch eager fp32", "kind": "baseline", "backend": "pytorch",
             "quant": "fp32", "format": "nn.Module", "file": None, "target": "pytorch_fp32"}]
    for tag, entry in sorted(manifest.get("stages", {}).get("quantize", {}).items()):
        if entry.get("status") == "done":
            rows.append({"name": f"pytorch_{tag}", "label": f"PyTorch {tag} reference", "kind": "baseline",
                         "backend": "pytorch", "quant": tag, "format": "pt2", "scheme": tag,
                         "file": f"{quantize.folder(Path('.'), tag) / quantize.PROGRAM}", "target": "pytorch_quantized"})
    names = backend_names()
    order = list(names)
    by_backend = sorted(manifest["artifacts"].items(),
                        key=lambda kv: (order.index(kv[1]["backend"]) if kv[1]["backend"] in order else len(order), kv[0]))
    for file, a in by_backend:
        rows.append({"name": file, "label": f"{names.get(a['backend'], a['backend'])} {a['quant']}",
                     "kind": "artifact", "backend": a["backend"], "quant": a["quant"], "format": a["format"],
                     "file": file, "target": "artifact"})
    return rows


def batch_support(row: dict, artifact: dict | None) -> tuple[bool, str | None]:
    """Can this model run a batch of THROUGHPUT_BATCH in one call? If not, why (the backend says)."""
    if row["backend"] == "pytorch":
        return True, None
    why = REGISTRY[row["backend"]].batch_support(artifact, THROUGHPUT_BATCH)
    return why is None, why


def can_run(row: dict) -> tuple[bool, str | None]:
    why = REGISTRY[row["backend"]].runs_here() if row["backend"] in REGISTRY else None
    return why is None, why


# ---- size and accuracy (no model run needed) ------------------------------------------------
def state_dict_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def size_of(row: dict, out: Path, fp32_bytes: int) -> tuple[int, str]:
    if row["name"] == "pytorch_fp32":
        return fp32_bytes, "fp32 state_dict as torch.save writes it (the checkpoint file also holds optimizer state)"
    path = out / row["file"]
    what = "directory, all files" if path.is_dir() else "file"
    if row["target"] == "pytorch_quantized":
        what = "torch.export .pt2 file of the scheme's quantized graph, as the pipeline saved it"
    return atomic.size_bytes(path), what


def accuracy_of(row: dict, manifest: dict, workspace: Workspace) -> tuple[float | None, str]:
    """Test-set accuracy recorded by the pipeline, or computed now when the manifest lacks it."""
    n = manifest.get("dataset", {}).get("n_test")
    if row["name"] == "pytorch_fp32" and "fp32" in manifest["accuracy"]:
        return manifest["accuracy"]["fp32"], f"manifest: train stage, {n} test images"
    scheme_acc = manifest["accuracy"].get(row.get("scheme") or "", {})
    if row["target"] == "pytorch_quantized" and "quantized" in scheme_acc:
        return scheme_acc["quantized"], f"manifest: qat stage ({scheme_acc.get('chosen')}), {n} test images"
    if row["kind"] == "artifact":
        v = manifest["artifacts"][row["file"]].get("verification", {})
        if "accuracy" in v:
            return v["accuracy"], f"manifest: verify, {v.get('images', n)} test images, {v.get('method')}"
    from converters.verify import run_artifact
    from core.evaluate import accuracy, predict

    data = workspace.data
    labels = data.test_labels.numpy()
    if row["kind"] == "baseline":
        model = workspace.fp32_model() if row["name"] == "pytorch_fp32" else workspace.quantized_program(row["scheme"])
        return accuracy(predict(model, data), labels), f"computed by bench, {len(labels)} test images"
    artifact = manifest["artifacts"][row["file"]]
    tag = (artifact.get("scheme") or {}).get("tag")
    entry = manifest.get("stages", {}).get("quantize", {}).get(tag, {})
    scheme = Scheme.from_dict(entry.get("scheme", {})) if tag else None
    source = workspace.export_source(scheme)
    logits, method = run_artifact(workspace.out / row["file"], artifact, source, data)
    return accuracy(logits, labels), f"computed by bench, {len(labels)} test images, {method}"


# ---- running one model in its own process ---------------------------------------------------
def run_child(spec: dict, work: Path) -> dict:
    spec_path, result_path = work / f"{spec['name']}.spec.json", work / f"{spec['name']}.result.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.measure", str(spec_path), str(result_path)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0 or not result_path.exists():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"measuring process exited with status {proc.returncode}: {tail}")
    return json.loads(result_path.read_text())


def measure_row(row: dict, manifest: dict, cfg: RunConfig, inputs: Path, work: Path, threads: list[int]) -> dict:
    artifact = manifest["artifacts"].get(row["file"]) if row["kind"] == "artifact" else None
    supported, row["throughput_note"] = batch_support(row, artifact)
    runnable, note = can_run(row)
    row.update({"method": None, "load_ms": None, "latency": [], "throughput": None, "memory": None, "import_s": None,
                "threads_reported": [], "latency_note": note, "memory_note": note, "error": None})
    if not runnable:
        return row
    dataset = manifest["dataset"]
    spec = {"name": row["name"], "target": row["target"], "backend": row["backend"], "file": row["file"],
            "artifact": artifact, "out": str(Path(cfg.out).resolve()), "config": {**cfg.to_dict(), "threads": 0},
            "inputs": str(inputs), "threads": threads, "warmup": cfg.bench_warmup,
            "iterations": cfg.bench_iterations, "seconds": cfg.bench_seconds, "throughput": supported,
            "batch": THROUGHPUT_BATCH, "converter": origin(REGISTRY[row["backend"]]) if row["backend"] in REGISTRY else None,
            "batch_iterations": max(3, cfg.bench_iterations // 10),
            "source": {"model_name": cfg.model, "input_shape": manifest["model"]["input_shape"],
                       "labels": dataset["labels"], "mean": dataset["mean"], "std": dataset["std"]}}
    if row["backend"] in REGISTRY and not REGISTRY[row["backend"]].takes_threads:  # one measurement, its own scheduling
        spec["threads"] = [None]
    try:
        result = run_child(spec, work)
    except Exception as exc:  # one failing runtime must not stop the others
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    row.update({k: result[k] for k in ("method", "load_ms", "import_s", "threads_reported", "throughput", "memory")})
    row["latency"] = [{**lat, "label": thread_label(lat["threads"])} for lat in result["latency"]]
    row["memory_note"] = None if result["memory"]["peak_reset"] else "peak includes import-time spikes (no clear_refs)"
    return row


def thread_label(threads: int | None) -> str:
    if threads is None:
        return "runtime default"
    return "1 thread" if threads == 1 else f"all cores ({threads})"


# ---- derived numbers ------------------------------------------------------------------------
def add_ratios(rows: list[dict], macs: int | None) -> None:
    """Latency as a ratio to PyTorch eager fp32 at the same thread count, and to the same runtime's fp32
    artifact (int8 against fp32 in one runtime); implied GMAC/s."""
    base = next((r for r in rows if r["name"] == "pytorch_fp32"), None)
    base_lat = {lat["threads"]: lat for lat in (base or {}).get("latency", [])}
    base_tp = (base or {}).get("throughput")
    runtime_fp32 = {r["backend"]: {lat["threads"]: lat for lat in r["latency"]}
                    for r in rows if r["kind"] == "artifact" and r["quant"] == "fp32"}
    for row in rows:
        for lat in row["latency"]:
            ref = base_lat.get(lat["threads"] or max(base_lat, default=None))  # None: the runtime picks, vs all cores
            lat["vs_fp32"] = {k: lat[f"{k}_ms"] / ref[f"{k}_ms"] for k in ("p50", "p90", "mean")} if ref else None
            same = runtime_fp32.get(row["backend"], {}).get(lat["threads"]) if row["kind"] == "artifact" else None
            lat["vs_runtime_fp32"] = lat["p50_ms"] / same["p50_ms"] if same and row["quant"] != "fp32" else None
            lat["gmac_per_s"] = macs / (lat["p50_ms"] * 1e-3) / 1e9 if macs else None
        tp = row["throughput"]
        if tp:
            tp["vs_fp32"] = tp["images_per_s"] / base_tp["images_per_s"] if base_tp else None
            tp["gmac_per_s"] = macs * tp["images_per_s"] / 1e9 if macs else None


def training_throughput(workspace: Workspace, manifest: dict, steps: int, seconds: float | None = None) -> dict:
    """Images/s: recorded by the pipeline's stages; its loop and a bare loop, both timed now on the same model
    (at most `steps` steps a round, fewer where the rounds would not fit in `seconds`)."""
    cfg, data = workspace.cfg, workspace.data
    stages = manifest.get("stages", {})
    torch.manual_seed(cfg.seed)
    loops = {"fp32": training.fp32_loops(workspace.build_model(len(data.labels)), data, cfg.batch_size, cfg.lr,
                                         steps, cfg.seed, seconds=seconds)}
    errors = {"fp32": None, "qat": None}
    try:
        loops["qat"] = training.qat_loops(workspace.fp32_model(), workspace.shape, data, cfg.batch_size, cfg.qat_lr,
                                          steps, cfg.seed, seconds=seconds)
    except Exception as exc:  # the QAT loops are a bonus; the table says why they are missing
        loops["qat"], errors["qat"] = (None, None), f"{type(exc).__name__}: {exc}"

    quantized = [e for e in stages.get("quantize", {}).values() if e.get("images_per_s")]
    recorded_by = {"fp32": stages.get("train", {}).get("images_per_s"),
                   "qat": quantized[0]["images_per_s"] if quantized else None}

    def entry(stage: str, name: str) -> dict:
        return {"pipeline_images_per_s": recorded_by[name], **training.entry(*loops[name]), "error": errors[name]}

    return {"batch_size": cfg.batch_size, "threads": torch.get_num_threads(), "warmup_steps": training.WARMUP_STEPS,
            "rounds": training.ROUNDS, "budget_s": seconds, "fp32": entry("train", "fp32"), "qat": entry("qat", "qat")}


def stage_times(manifest: dict) -> list[dict]:
    stages = manifest.get("stages", {})
    times = [{"stage": "train", "wall_time_s": stages.get("train", {}).get("wall_time_s")}]
    times += [{"stage": f"quantize: {tag}", "wall_time_s": e.get("wall_time_s")}
              for tag, e in stages.get("quantize", {}).items()]
    times += [{"stage": f"export: {name}", "wall_time_s": b.get("wall_time_s")}
              for name, b in manifest.get("backends", {}).items() if b.get("status") == "ok"]
    return times


# ---- the two commands -----------------------------------------------------------------------
def bench(cfg, compare_to: str | None = None) -> bool:
    """Measure; with `compare_to` (an earlier results.json, checked first) also the ratios against it."""
    start, load_at_start = time.perf_counter(), load_average()
    out = Path(cfg.out)
    manifest = mf.load(out)
    if not manifest.get("artifacts"):
        raise BenchError(f"{out / mf.MANIFEST} lists no artifacts; run `export` first (or `make export OUT={out}`)")
    try:
        old = compare.load_old(compare_to, validate) if compare_to else None
    except compare.CompareError as exc:
        raise BenchError(str(exc)) from exc
    run_cfg = bench_config(cfg, manifest)
    for name in BENCH_SETTINGS:
        setattr(run_cfg, name, getattr(cfg, name))
    workspace = Workspace(run_cfg)
    data, macs = workspace.data, manifest.get("model", {}).get("macs")
    threads = sorted({1, usable_cores()})
    fp32_bytes = state_dict_bytes(workspace.fp32_model())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        images = data.test_images[:THROUGHPUT_BATCH]
        images = images.repeat(-(-THROUGHPUT_BATCH // len(images)), 1, 1, 1)[:THROUGHPUT_BATCH]
        np.save(work / "inputs.npy", data.normalize(images).numpy().astype(np.float32))
        for row in targets(manifest):
            row["size_bytes"], row["size_note"] = size_of(row, out, fp32_bytes)
            row["compression_ratio"] = fp32_bytes / row["size_bytes"]
            row["accuracy"], row["accuracy_source"] = accuracy_of(row, manifest, workspace)
            measure_row(row, manifest, run_cfg, work / "inputs.npy", work, threads)
            print_row(row)
            rows.append(row)
    add_ratios(rows, macs)
    say("bench: bare PyTorch training loops ...")
    train = training_throughput(workspace, manifest, cfg.bench_train_steps, cfg.bench_train_seconds)
    results = {
        "schema_version": SCHEMA_VERSION,
        "created": mf.now(),
        "run_id": manifest.get("run_id"),
        "out": str(out),
        "host": {**host_info(), "load_average_start": load_at_start, "load_average_end": load_average()},
        "versions": mf.tool_versions(),
        "model": manifest.get("model", {}),
        "dataset": {k: manifest.get("dataset", {}).get(k) for k in ("name", "source", "n_train", "n_test", "note")},
        "settings": {"warmup": cfg.bench_warmup, "iterations": cfg.bench_iterations, "seconds": cfg.bench_seconds,
                     "throughput_batch": THROUGHPUT_BATCH, "threads": threads,
                     "train_steps": cfg.bench_train_steps, "train_seconds": cfg.bench_train_seconds},
        "methods": {"thread_control": thread_control(), "rss": RSS_METHOD,
                    "compression_ratio": "fp32 PyTorch state_dict bytes / this model's bytes",
                    "latency": "batch 1, one call from Python per image (input conversion included), "
                               "time.perf_counter_ns around each call after the warm-up"},
        "rows": rows,
        "training": train,
        "stages": stage_times(manifest) + [{"stage": "bench (this run)", "wall_time_s": time.perf_counter() - start}],
    }
    validate(results)
    atomic.write_json(bench_dir(cfg) / RESULTS, results)
    say(f"bench: wrote {bench_dir(cfg) / RESULTS}")
    rebuild_reports(cfg)
    if old is not None:
        path, table = compare.write(bench_dir(cfg), compare.compare(old, results))
        say(table.rstrip())
        say(f"bench: compared with {old['_path']}: wrote {path} and compare.json")
    failed = [r["name"] for r in rows if r["error"]]
    for name in failed:
        say(f"[x] bench: {name}: {next(r['error'] for r in rows if r['name'] == name)}")
    return not failed


def rebuild_reports(cfg) -> bool:
    """report.md and the plots, from OUT/bench/results.json and OUT/device/*/*.json only."""
    path = bench_dir(cfg) / RESULTS
    if not path.exists():
        raise BenchError(f"{path} not found; run `bench` first (make bench OUT={cfg.out})")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path} is not valid JSON ({exc}); rerun `bench`") from exc
    validate(results, path)
    devices = report.load_device_results(Path(cfg.out))
    written = plots.write_plots(results, devices["valid"], bench_dir(cfg))
    md = atomic.write_text(bench_dir(cfg) / "report.md", report.bench_report(results, devices, [p.name for p in written]))
    say(f"report: wrote {md} and {', '.join(p.name for p in written)}")
    for line in device_agreement.console_lines(devices, report.device_label):
        say(line)
    return True


def validate(results: dict, path: Path | None = None) -> None:
    import jsonschema

    try:
        jsonschema.validate(results, json.loads(SCHEMA.read_text()))
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "(top level)"
        raise BenchError(f"{path or 'bench results'} do not match {SCHEMA.name} at {where}: {exc.message}") from exc


def print_row(row: dict) -> None:
    if row["error"]:
        say(f"[x] bench: {row['name']}: {row['error']}")
        return
    parts = [f"{row['size_bytes'] / 1e6:.2f} MB", f"accuracy {report.pct(row['accuracy'])}"]
    parts += [f"p50 {lat['p50_ms']:.3f} ms ({lat['label']})" for lat in row["latency"]]
    if row["memory"]:
        parts.append(f"peak RSS +{row['memory']['delta_mb']:.1f} MB")
    if row["latency_note"]:
        parts.append(row["latency_note"])
    say(f"[✓] bench: {row['name']}: " + ", ".join(parts))
