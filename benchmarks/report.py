"""OUT/bench/report.md from results.json and the device JSONs: tables first, then how it was measured."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from converters import REGISTRY

from . import device_agreement

DEVICE_SCHEMA = Path(__file__).parent / "schemas" / "device_results.schema.json"
DASH = "–"


def pct(value) -> str:
    return DASH if value is None else f"{100 * value:.2f}%"


def num(value, fmt: str = ".3f", suffix: str = "") -> str:
    return DASH if value is None else f"{value:{fmt}}{suffix}"


def table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + ["| " + " | ".join(r) + " |" for r in rows]


# ---- device results ---------------------------------------------------------------------------
def load_device_results(out: Path) -> dict:
    """Every OUT/device/<platform>/*.json, checked against the device results schema."""
    schema = json.loads(DEVICE_SCHEMA.read_text())
    valid, invalid = [], []
    for path in sorted((Path(out) / "device").glob("*/*.json")):
        name = str(path.relative_to(out))
        try:
            doc = json.loads(path.read_text())
            jsonschema.validate(doc, schema)
        except json.JSONDecodeError as exc:
            invalid.append({"file": name, "error": f"not valid JSON: {exc}"})
            continue
        except jsonschema.ValidationError as exc:
            where = "/".join(map(str, exc.absolute_path)) or "(top level)"
            invalid.append({"file": name, "error": f"does not match {DEVICE_SCHEMA.name} at {where}: {exc.message}"})
            continue
        valid.append({"file": name, "data": doc})
    return {"valid": valid, "invalid": invalid}


def device_label(doc: dict) -> str:
    d = doc["device"]
    sim = ", simulator" if d.get("is_simulator") else ""
    return f"{d['model']} ({d['soc']}, {doc['settings']['threads']} threads{sim})"


# ---- sections -----------------------------------------------------------------------------------
def _lat(row: dict, threads_label_prefix: str):
    return next((lat for lat in row["latency"] if lat["label"].startswith(threads_label_prefix)), None)


def summary_table(results: dict) -> list[str]:
    header = ["model", "runtime", "quant", "size (MB)", "compression", "accuracy", "load (ms)",
              "p50 1 thread (ms)", "×fp32", "p50 all cores (ms)", "×fp32", "GMAC/s", "batch-32 (img/s)", "×fp32",
              "peak RSS Δ (MB)"]
    rows = []
    for r in results["rows"]:
        one, many = _lat(r, "1 thread"), _lat(r, "all cores") or _lat(r, "runtime default")
        best = max((lat["gmac_per_s"] or 0 for lat in r["latency"]), default=None)
        tp = r["throughput"]
        name = f"`{r['name']}`" + (" **FAILED**" if r["error"] else "")
        rows.append([
            name, r["backend"], r["quant"], f"{r['size_bytes'] / 1e6:.3f}", f"{r['compression_ratio']:.2f}x",
            pct(r["accuracy"]), num(r["load_ms"], ".1f"),
            num(one and one["p50_ms"]), num(one and one["vs_fp32"] and one["vs_fp32"]["p50"], ".2f", "x"),
            num(many and many["p50_ms"]), num(many and many["vs_fp32"] and many["vs_fp32"]["p50"], ".2f", "x"),
            num(best or None, ".2f"), num(tp and tp["images_per_s"], ".0f"), num(tp and tp["vs_fp32"], ".2f", "x"),
            num(r["memory"] and r["memory"]["delta_mb"], ".1f"),
        ])
    return table(header, rows, right_from=3)


def empty_cells(results: dict) -> list[str]:
    notes = []
    for r in results["rows"]:
        for what, note in (("error", r["error"]), ("latency", r["latency_note"]),
                           ("batch-32", r["throughput_note"] if not r["error"] else None)):
            if note:
                notes.append(f"- `{r['name']}`, {what}: {note}")
    return notes


def latency_table(results: dict) -> list[str]:
    header = ["model", "threads", "calls", "p50 (ms)", "p90 (ms)", "mean (ms)", "min (ms)", "p50 ×fp32", "p90 ×fp32",
              "mean ×fp32", "p50 × same runtime's fp32", "GMAC/s at p50"]
    rows = []
    for r in results["rows"]:
        for lat in r["latency"]:
            ratio = lat["vs_fp32"] or {}
            rows.append([f"`{r['name']}`", lat["label"], str(lat["iterations"]), num(lat["p50_ms"]), num(lat["p90_ms"]),
                         num(lat["mean_ms"]), num(lat["min_ms"]), num(ratio.get("p50"), ".2f", "x"),
                         num(ratio.get("p90"), ".2f", "x"), num(ratio.get("mean"), ".2f", "x"),
                         num(lat.get("vs_runtime_fp32"), ".2f", "x"), num(lat["gmac_per_s"], ".2f")])
    return table(header, rows, right_from=2)


def memory_table(results: dict) -> list[str]:
    header = ["model", "bare interpreter (MB)", "baseline: runtime imported (MB)", "peak (MB)", "peak − baseline (MB)",
              "import (s)", "first load (ms)"]
    rows = []
    for r in results["rows"]:
        m = r["memory"]
        if m:
            rows.append([f"`{r['name']}`", num(m["bare_interpreter_mb"], ".1f"), num(m["baseline_mb"], ".1f"),
                         num(m["peak_mb"], ".1f"), num(m["delta_mb"], ".1f"), num(r["import_s"], ".2f"),
                         num(r["load_ms"], ".1f")])
        else:
            rows.append([f"`{r['name']}`", DASH, DASH, DASH, DASH, DASH, r["memory_note"] or r["error"] or DASH])
    return table(header, rows)


def threads_section(results: dict) -> list[str]:
    lines = [f"- **{backend}**: {how}" for backend, how in results["methods"]["thread_control"].items()]
    for name, converter in REGISTRY.items():  # each runtime says what it read back of the counts it was given
        note = converter.threads_note([t for r in results["rows"] if r["backend"] == name for t in r["threads_reported"]])
        if note:
            lines.append(f"- {note}")
    return lines


def training_section(results: dict) -> list[str]:
    t = results["training"]
    rows = []
    for stage, label in (("fp32", "fp32 training"), ("qat", "QAT fine-tuning")):
        e = t[stage]
        timed = (f"{e['bare_steps']} × {e.get('rounds', t.get('rounds', 1))}" if e["bare_steps"] else DASH)
        rows.append([label, num(e["pipeline_images_per_s"], ".0f"), num(e.get("pipeline_loop_images_per_s"), ".0f"),
                     num(e["bare_images_per_s"], ".0f"), num(e["pipeline_vs_bare"], ".2f", "x"), timed])
    lines = [
        f"Batch {t['batch_size']}, {t['threads']} torch threads, images/s. *Recorded*: what the `train` and `qat` "
        "stages wrote into the manifest (whole epochs, measured when they ran, under whatever load the host had then). "
        f"*Pipeline loop* and *bare loop* are both timed in this run on copies of the same model, batch size and "
        "optimizer, in alternating rounds (*timed*: steps per loop and round × rounds) after up to "
        f"{t['warmup_steps']} untimed steps (medians shown)"
        + (f"; rounds and steps are cut to fit a budget of {t['budget_s']:g} s per stage (`--bench-train-seconds`)"
           if t.get("budget_s") else "") + ": the pipeline loop is "
        "`core.train.run_epoch` over a `core.loaders.TrainLoader` (shuffles and normalizes each batch, keeps "
        "loss/accuracy, drives the progress bar); the bare loop is forward, loss, backward, Adam step over batches "
        "normalized beforehand. For QAT both run the model prepared by `prepare_qat_pt2e` as `core.qat` prepares "
        "it. *Pipeline / bare* below 1 is what the pipeline's loop costs.",
        "",
        *table(["stage", "recorded (img/s)", "pipeline loop (img/s)", "bare loop (img/s)", "pipeline / bare", "timed"],
               rows),
    ]
    for stage in ("fp32", "qat"):
        if t[stage].get("error"):
            lines += ["", f"The {stage} loops could not run: {t[stage]['error']}"]
    lines += ["", *table(["stage", "wall time (s)"], [[s["stage"], num(s["wall_time_s"], ".1f")] for s in results["stages"]])]
    return lines


def device_section(results: dict, devices: dict) -> list[str]:
    host = {r["name"]: r for r in results["rows"]}
    rows = []
    for entry in devices["valid"]:
        doc = entry["data"]
        for res in doc["results"]:
            h = host.get(res["model"])
            h_lat = h and (_lat(h, "1 thread"))
            if res["status"] != "ok":
                rows.append([doc["platform"], device_label(doc), f"`{res['model']}`", res["runtime"], DASH, DASH, DASH,
                             DASH, DASH, DASH, f"error: {res.get('error')}"])
                continue
            m = res["metrics"]
            p50 = m["p50_inference_latency(ms)"]
            rows.append([doc["platform"], device_label(doc), f"`{res['model']}`", res["runtime"] + (
                f" ({res['compute_units']})" if res.get("compute_units") else ""),
                num(m["model_load_time(ms)"], ".1f"), num(p50), num(m["p90_inference_latency(ms)"]),
                num(h_lat and h_lat["p50_ms"]), num(h_lat and p50 / h_lat["p50_ms"], ".2f", "x"),
                num(m["memory_peak_inference(mb)"], ".1f") + f" ({doc.get('memory_kind', 'memory')})",
                f"{pct(m['accuracy'])} of {m['sample_size']}"])
    lines = []
    if rows:
        lines += [
            "Measured by the demo apps (`OUT/device/<platform>/*.json`, checked against "
            "`benchmarks/schemas/device_results.schema.json`). *Host p50* is this host at 1 thread; *device / host* is "
            "device p50 over host p50. Device accuracy is over the bundled test sample only.",
            "",
            *table(["platform", "device", "model", "runtime", "load (ms)", "p50 (ms)", "p90 (ms)", "host p50 (ms)",
                    "device / host", "peak memory (MB)", "accuracy"], rows, right_from=4),
        ]
    else:
        lines.append("No device results yet. Run the demo apps' benchmarks (`android_demo/benchmark.py`, "
                     "`ios_demo/benchmark.py`); they write `OUT/device/android/*.json` and `OUT/device/ios/*.json`, "
                     "and `mobile-pipeline report` merges them here.")
    for bad in devices["invalid"]:
        lines += ["", f"- skipped `{bad['file']}`: {bad['error']}"]
    return lines


def bench_report(results: dict, devices: dict, plots: list[str]) -> str:
    host, model, data, s = results["host"], results["model"], results["dataset"], results["settings"]
    v = results["versions"]
    macs = model.get("macs")
    lines = [
        f"# Host benchmark: {model.get('name')} on {data.get('name')}",
        "",
        f"Run `{results.get('run_id')}`, measured {results['created']} on **{host['cpu_model']}** "
        f"({host['logical_cores']} logical cores, {host['usable_cores']} usable, "
        f"SIMD: {', '.join(host.get('cpu_features') or []) or 'unknown'}, "
        f"{num(host['total_ram_mb'] and host['total_ram_mb'] / 1024, '.1f')} GB RAM, {host['os']}).",
        f"Python {v.get('python')}, torch {v.get('torch')}, executorch {v.get('executorch')}, "
        f"ai-edge-litert {v.get('ai-edge-litert')}, litert-torch {v.get('litert-torch')}, coremltools {v.get('coremltools')}.",
        "",
        f"Model: {model.get('parameters', 0) / 1e6:.2f} M parameters, "
        f"{num(macs and macs / 1e6, '.2f')} M MACs per image (convolutions and linear layers). "
        f"Accuracy is over the {data.get('n_test')} test images.",
    ]
    if data.get("note"):
        lines += ["", f"**Note:** {data['note']}"]
    load = [host.get("load_average_start"), host.get("load_average_end")]
    if all(load):
        busy = load[0][0] > 0.5 * host["usable_cores"]
        lines += ["", f"1-minute load average: {load[0][0]:.2f} when bench started, {load[1][0]:.2f} at its end "
                  "(the end value includes the bench's own work)."
                  + (f" **Busy host:** other processes competed for the {host['usable_cores']} cores, so absolute "
                     "times, and above all the all-cores ones, are inflated; the ×fp32 ratios suffer less." if busy
                     else "")]
    lines += [
        "",
        "## Summary",
        "",
        f"Latency: batch 1, median (p50) of {s['iterations']} calls after {s['warmup']} warm-up calls, one call from "
        "Python per image, input conversion included. **×fp32** is the ratio to PyTorch eager fp32 measured in this "
        "run at the same thread count (below 1 = faster). **GMAC/s** = MACs / p50 latency, at the faster thread "
        f"count. **batch-{s['throughput_batch']}**: images/s at all cores where the model takes that batch in one "
        "call. **Compression**: fp32 PyTorch state_dict bytes / this model's bytes. **Peak RSS Δ**: see Memory.",
        "",
        *summary_table(results),
    ]
    notes = empty_cells(results)
    if notes:
        lines += ["", "Empty cells:", "", *notes]
    lines += ["", "## Latency per thread count", "", *latency_table(results),
              "", "## Memory", "", results["methods"]["rss"], "", *memory_table(results),
              "", "## Threads", "", *threads_section(results),
              "", "## Training throughput and stage wall times", "", *training_section(results),
              "", "## Device results", "", *device_section(results, devices)]
    agreement = device_agreement.section(devices, device_label)
    lines += ["", "## Device ↔ host agreement", "", *agreement] if agreement else []
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.removesuffix('.png').replace('_', ' ')}]({p})" for p in plots]
    lines += ["", f"Tool versions: {', '.join(f'{k} {val}' for k, val in v.items())}.",
              f"Regenerate this file and the plots from `results.json` with `mobile-pipeline report --out {results['out']}`."]
    return "\n".join(lines) + "\n"
