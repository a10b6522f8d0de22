"""Measure one model in a fresh process: load time, batch-1 latency, batch throughput and peak RSS.

    python -m benchmarks.measure SPEC.json RESULT.json

`benchmarks.host` starts one such process per model, so each runtime's memory is counted
alone. Only the standard library is imported at the top: the RSS of the bare interpreter is
read first, then the model's runtime is imported and the RSS read again (the *baseline*),
then the model is loaded and run. The peak RSS is reported as a delta over that baseline.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import time
from pathlib import Path

PYTORCH_TARGETS = ("pytorch_fp32", "pytorch_quantized")


# ---- memory (Linux: /proc; elsewhere: getrusage) ------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Set the kernel's peak-RSS mark to the current RSS (Linux >= 4.0), so import-time spikes do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---- timing -------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (q in [0, 100])."""
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


MIN_TIMED_CALLS = 10


def time_batch1(fn, inputs, warmup: int, iterations: int, seconds: float = 0.0) -> dict:
    """Warm up, then time single-image calls one by one (cycling over the inputs).

    At most `iterations` calls, and when `seconds` is set, no more than fit in that budget (but at
    least MIN_TIMED_CALLS): a 50 ms network gets ~100 calls in 5 s, a 0.1 ms one its full count.
    The warm-up is capped at a quarter of the budget.
    """
    n = len(inputs)
    start = time.perf_counter()
    done_warmup = 0
    for i in range(warmup):
        fn(inputs[i % n:i % n + 1])
        done_warmup += 1
        if seconds and time.perf_counter() - start > seconds / 4 and done_warmup >= 2:
            break
    times = []
    deadline = time.perf_counter() + seconds if seconds else None
    for i in range(iterations):
        x = inputs[i % n:i % n + 1]
        t0 = time.perf_counter_ns()
        fn(x)
        times.append((time.perf_counter_ns() - t0) / 1e6)
        if deadline and len(times) >= MIN_TIMED_CALLS and time.perf_counter() > deadline:
            break
    times.sort()
    return {"p50_ms": percentile(times, 50), "p90_ms": percentile(times, 90), "mean_ms": sum(times) / len(times),
            "min_ms": times[0], "max_ms": times[-1], "iterations": len(times), "warmup": done_warmup,
            "budget_s": seconds or None}


def time_throughput(fn, batch, iterations: int) -> dict:
    fn(batch)  # warm-up: first call at this batch size may resize buffers
    start = time.perf_counter()
    for _ in range(iterations):
        fn(batch)
    seconds = time.perf_counter() - start
    return {"batch": len(batch), "iterations": iterations, "images_per_s": len(batch) * iterations / seconds}


# ---- loading each kind of model -----------------------------------------------------------
def import_runtime(spec: dict) -> None:
    """Everything the model's runner needs, imported before the baseline RSS is read."""
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import converters

    if spec["target"] == "pytorch_fp32":
        from core import workspace  # noqa: F401
    elif spec["target"] == "pytorch_quantized":
        from core import quantize  # noqa: F401
        import torchao.quantization  # noqa: F401
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    else:  # a backend registered at run time is not in this process's REGISTRY: the spec says where its class is
        for module in converters.restore(spec["backend"], spec.get("converter")).runtime_modules:
            importlib.import_module(module)


def set_threads(spec: dict, n: int | None) -> dict:
    """Apply the thread count the runtime will use; returns what the runtime reports back."""
    import torch

    if n:
        torch.set_num_threads(n)
    reported = {"torch": torch.get_num_threads()}
    if n:
        from converters import REGISTRY

        if spec.get("backend") in REGISTRY:  # each runtime takes its thread count its own way
            reported.update(REGISTRY[spec["backend"]].set_threads(n))
    return reported


def load(spec: dict, threads: int | None):
    """Return (fn, method): fn maps a normalized float32 NCHW numpy batch to logits."""
    import numpy as np
    import torch

    target = spec["target"]
    if target in PYTORCH_TARGETS:
        if target == "pytorch_fp32":
            from core.config import RunConfig
            from core.workspace import Workspace

            model = Workspace(RunConfig(**spec["config"])).fp32_model()
            method = "PyTorch eager (fp32 checkpoint)"
        else:
            from core import quantize

            model = quantize.load_program(Path(spec["out"]) / spec["file"])
            method = "PyTorch, the scheme's quantized graph (torch.export program with quantize/dequantize ops)"

        def run(batch):
            with torch.no_grad():
                return model(torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()

        return run, method
    from types import SimpleNamespace

    from converters import REGISTRY

    meta = spec["source"]  # runners of .pte/.tflite ignore it; Core ML on macOS reads mean, std and labels
    source = SimpleNamespace(model_name=meta["model_name"], input_shape=tuple(meta["input_shape"]),
                             labels=meta["labels"], mean=meta["mean"], std=meta["std"])
    path = Path(spec["out"]) / spec["file"]
    return REGISTRY[spec["backend"]].runner(path, spec["artifact"], source, threads or 1)


# ---- one model ----------------------------------------------------------------------------
def measure(spec: dict, rss_bare: float | None) -> dict:
    start = time.perf_counter()
    import_runtime(spec)
    import_s = time.perf_counter() - start
    import numpy as np

    inputs = np.load(spec["inputs"])
    gc.collect()
    peak_reset = reset_peak_rss()
    baseline = rss_mb() if peak_reset else peak_rss_mb()
    result = {"method": None, "import_s": import_s, "load_ms": None, "latency": [], "throughput": None, "threads_reported": []}
    for threads in spec["threads"]:
        reported = set_threads(spec, threads)
        start = time.perf_counter()
        fn, method = load(spec, threads)
        load_ms = (time.perf_counter() - start) * 1e3
        if result["load_ms"] is None:  # the first load in this fresh process
            result["load_ms"], result["method"] = load_ms, method
        fn(inputs[:1])
        timing = time_batch1(fn, inputs, spec["warmup"], spec["iterations"], spec.get("seconds", 0.0))
        result["latency"].append({"threads": threads, **timing, "load_ms": load_ms})
        result["threads_reported"].append({"threads": threads, **reported})
        if spec["throughput"] and threads == max(t or 0 for t in spec["threads"]):
            result["throughput"] = {"threads": threads, **time_throughput(fn, inputs[:spec["batch"]], spec["batch_iterations"])}
        del fn
        gc.collect()
    peak = peak_rss_mb()
    result["memory"] = {
        "bare_interpreter_mb": rss_bare,
        "baseline_mb": baseline,
        "peak_mb": peak,
        "delta_mb": peak - baseline,
        "peak_reset": peak_reset,
    }
    return result


def main(argv: list[str]) -> int:
    rss_bare = rss_mb()
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore")
    result = measure(spec, rss_bare)
    Path(argv[1]).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
