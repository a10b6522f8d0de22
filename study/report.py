"""OUT/study/report.md, from results.json alone."""

from __future__ import annotations

from benchmarks.report import num, pct
from converters import REGISTRY
from benchmarks.report import table as markdown_table

from .context import SECTIONS, TITLES

HOW = {"runtime": "runtime", "readback": "read back (Linux)", "simulated": "simulated (PyTorch)", "pytorch": "PyTorch",
       None: "—"}


def pp(x) -> str:
    return num(x, "+.2f")


def kb(n) -> str:
    return num(None if n is None else n / 1e3, ",.1f")


def table(header: list[str], rows: list[list]) -> list[str]:
    """The bench report's Markdown table (text left, numbers right), then a blank line."""
    return markdown_table(header, [[str(c) for c in row] for row in rows]) + [""]


def write(results: dict, plots: dict[str, str]) -> str:
    acc, ds, model = results["accuracy"], results["dataset"], results["model"]
    lines = [f"# Quantization study: {model['name']} on {ds['name']}", "",
             f"Run {results.get('run_id')} · {results['created']} · {ds['n_train']} training and {ds['n_test']} test "
             f"images · host: {results['host'].get('cpu_model', '?')}, load average {results['host'].get('load_average')}", "",
             f"Scheme: `{results['scheme']['tag']}` ({results['scheme']['summary']}). Test accuracy measured in this "
             f"run: fp32 {pct(acc['fp32'])}, PTQ {pct(acc['ptq'])}, OUT's quantized model ({acc['chosen'].upper()}, "
             f"what `export` ships) {pct(acc['quantized'])} (PyTorch; the int8 graphs simulate the runtimes' "
             "arithmetic with quantize/dequantize ops).", "",
             "Every figure is a test accuracy, a ratio measured in this run, or a size. Each row says how it ran:",
             "**runtime** (the exported file ran in its own runtime on the test set), **read back** (a Core ML "
             "file's weights, read back into the PyTorch network: Core ML itself runs only on macOS), "
             "**simulated** (a PT2E graph run in PyTorch with quantize/dequantize ops, or with some of them "
             "bypassed), **PyTorch** (a float model).", ""]
    sections = results["sections"]
    lines += table(["section", "status", "seconds"],
                   [[TITLES[s], sections[s]["status"] + (f": {sections[s]['error']}" if sections[s]["error"] else ""),
                     num(sections[s]["seconds"], ".0f")] for s in SECTIONS])
    writers = {"error": _error, "sensitivity": _sensitivity, "mixed": _mixed, "sweep": _sweep, "pruning": _pruning,
               "wa": _wa}
    for i, s in enumerate(SECTIONS, 1):
        lines += [f"## {i}. {TITLES[s]}", ""]
        sec = sections[s]
        if sec["status"] != "done":
            lines += [f"Not run: {sec['status']}" + (f" ({sec['error']})" if sec["error"] else " (--study-sections)"), ""]
            continue
        lines += writers[s](sec["result"], results)
        if s in plots:
            lines += [f"![{TITLES[s]}]({plots[s]})", ""]
    return "\n".join(lines) + "\n"


def _restored(counts: dict) -> str:
    """The exported graphs hold grid-snapped weights and biases; the measurement starts from the float ones."""
    line = (f"The exported graph's weights and biases are snapped to their int8/int32 grids (so that the .pte and "
            f"the .tflite hold the same integers); the float values were put back before measuring: "
            f"{counts['weights_restored']} weights and {counts['biases_restored']} biases.")
    if counts["layers_left_on_grid"]:
        line += (f" {counts['layers_left_on_grid']} layers have no matching float weight (e.g. BatchNorm folded into "
                 "the conv) and are measured on their on-grid values: their weight error reads as zero.")
    return line


def _error(r: dict, results: dict) -> list[str]:
    lines = [f"The exported quantized model ({r['model']}), simulated in PyTorch. Δ is each quantizer's step (per output "
             "channel for weights, per tensor for activations); rounding to a grid of step Δ adds uniform noise of "
             "variance Δ²/12 when nothing is clipped and values are not already on the grid. *Clipped*: the rounded "
             "integer fell outside the int8 range. Activations: the output of each layer (after its activation "
             f"function), over {r['test_images']} test images; *vs float* compares it with the same point of the "
             "float network (the same graph with every quantizer bypassed), so it includes the error of every "
             "layer before.", "", _restored(r["float_restored"]), "", "**Weights**", ""]
    lines += table(["layer", "elements", "SQNR dB", "measured MSE", "Δ²/12", "ratio", "clipped"],
                   [[w["layer"], f"{w['elements']:,}", num(w["sqnr_db"], ".1f"), f"{w['measured_mse']:.3g}",
                     f"{w['predicted_mse']:.3g}",
                     num(w["measured_mse"] / w["predicted_mse"] if w["predicted_mse"] else None, ".2f"),
                     f"{100 * w['clipped_fraction']:.3f}%"] for w in r["weights"]])
    lines += ["**Output activations**", ""]
    lines += table(["layer", "SQNR dB (own quantizer)", "SQNR dB vs float", "measured MSE", "Δ²/12", "ratio", "clipped",
                    "exact zeros"],
                   [[a["layer"], num(a["sqnr_db"], ".1f"), num(a["sqnr_vs_float_db"], ".1f"),
                     f"{a['measured_mse']:.3g}", f"{a['predicted_mse']:.3g}",
                     num(a["measured_mse"] / a["predicted_mse"] if a["predicted_mse"] else None, ".2f"),
                     f"{100 * a['clipped_fraction']:.3f}%", f"{100 * a['zero_fraction']:.1f}%"] for a in r["activations"]])
    lines += ["Reading the ratio: about 1 where the noise model holds; below 1 where many values are exactly on the "
              "grid (ReLU zeros; the input's pixel levels); far above 1 where clipping dominates.", ""]
    return lines


def _sensitivity(r: dict, results: dict) -> list[str]:
    rows = sorted(r["layers"], key=lambda x: r["ranking"].index(x["layer"]))
    lines = [f"{r['method']}. fp32 {pct(r['fp32_accuracy'])}, all layers int8 {pct(r['ptq_int8_accuracy'])}. "
             "Ranked by how much keeping the layer float recovers.", ""]
    lines += table(["rank", "layer", "only this layer int8", "drop vs fp32 (pp)", "only this layer float",
                    "recovery vs all int8 (pp)"],
                   [[i, x["layer"], pct(x["only_quantized_accuracy"]), pp(x["drop_when_quantized_pp"]),
                     pct(x["only_float_accuracy"]), pp(x["recovery_when_float_pp"])] for i, x in enumerate(rows, 1)])
    return lines


def _interval(point: dict) -> str:
    v = point.get("verdict")
    return f"[{100 * v['low']:.2f}, {100 * v['high']:.2f}], n={v['n']}" if v else "–"


def _mixed(r: dict, results: dict) -> list[str]:
    c = r["choice"]
    if c["mode"] == "auto":
        head = (f"`--keep-float auto:{c['budget_pp']}`: layers are kept float in the sensitivity order until the test "
                f"set no longer shows PTQ more than {c['budget_pp']} pp below fp32 (paired interval on the same images)"
                + ("" if c.get("reached") in (True, None) else " (not reached even with every layer float)") + ".")
    elif c["mode"] == "explicit":
        head = f"`--keep-float {','.join(c['chosen'])}`."
    else:
        head = "`--keep-float none`."
    lines = [head, "", "Selection (PTQ, simulated):", ""]
    lines += table(["layers kept float", "PTQ accuracy", "drop vs fp32 (pp)", "interval (pp)", "vs budget"],
                   [[", ".join(t["kept"]) or "none", pct(t["ptq_accuracy"]), pp(t["drop_pp"]), _interval(t),
                     (t.get("verdict") or {}).get("outcome", "–")] for t in c["trace"]])
    if r.get("note"):
        return lines + [f"Result: {r['note']}.", ""]
    how = (f"QAT with those layers float ({r.get('qat_steps')} steps, the `qat` stage's schedule)"
           if r.get("mode") == "qat" else "PTQ with those layers float (as OUT's model: the `qat` stage kept PTQ)")
    lines += [f"Kept float: **{', '.join(c['chosen'])}**. {how}: {pct(r.get('quantized_accuracy'))} (simulated). "
              "Exported and verified:", ""]
    lines += table(["file", "accuracy", "full int8 file", "full int8 accuracy", "verified", "how",
                    "latency / full int8"],
                   [[f"`{f['file']}`", pct(f["accuracy"]), f"`{f['full_int8_file']}`" if f.get("full_int8_file") else "—",
                     pct(f.get("full_int8_accuracy")),
                     "✓" if f["verification"]["passed"] else "✗ " + "; ".join(f["verification"]["failures"]),
                     HOW[f["how"]], num(r["latency"].get(f["backend"], {}).get("ratio_to_full_int8"), ".2f", "×")]
                    for f in r["files"]])
    for backend, lat in r["latency"].items():
        if lat.get("ratio_fp32_to_full_int8"):
            lines.append(f"- {backend}: batch-1 latency of the mixed file is {lat['ratio_to_full_int8']:.2f}× the full "
                         f"int8 file's (fp32: {lat['ratio_fp32_to_full_int8']:.2f}×), timed interleaved in this run.")
    if r.get("tflite_float_layers"):
        stayed = [k for k, v in r["tflite_float_layers"].items() if v]
        went = [k for k, v in r["tflite_float_layers"].items() if not v]
        lines.append(f"- TFLite: float in the .tflite: {', '.join(stayed) or 'none'}"
                     + (f"; quantized by the converter anyway (its static int8 passes extend int8 across float ops "
                        f"between quantized tensors): {', '.join(went)}" if went else "") + ".")
    for backend, reason in r.get("failures", {}).items():
        lines.append(f"- {backend}: export failed: {reason}")
    dense = r.get("coreml_dense_anyway") or []
    lines.append("- Core ML: the kept layers' weights stay dense fp16 (per-op config)"
                 + (f"; {', '.join(dense)} stayed dense in the full file too (below --weight-threshold)" if dense else "")
                 + ". Core ML latency needs macOS.")
    return lines + [""]


def _sweep(r: dict, results: dict) -> list[str]:
    if not r["rows"]:
        return [f"Core ML export failed: {r['failures']}", ""]
    s = r["settings"]
    weights = "QAT-trained float weights" if r.get("weights_from") == "qat" else "fp32 weights"
    lines = [f"Core ML packages of the scheme's {weights} (PyTorch float accuracy {pct(r.get('reference_accuracy'))}). "
             f"Palettization: k-means, {s['granularity']}" + (f" (groups of {s['group_size']})" if s['granularity'] ==
                                                                 "per_grouped_channel" else "")
             + f"; linear: {s['linear']}. Weights under {s['weight_threshold']} elements stay fp16 in every file: "
             f"{', '.join(r.get('dense_layers') or []) or 'none'}. **Accuracy on Linux comes from reading each "
             "package's weights back into the PyTorch network** (float32 activations; Core ML would compute in fp16).",
             ""]
    lines += table(["scheme", "bits", "size kB", "zip kB", "size / fp16", "accuracy", "agreement with float",
                    "within verify thresholds", "how"],
                   [[x["scheme"], x["bits"], kb(x["bytes"]), kb(x["zip_bytes"]), f"{x['size_ratio_to_fp16']:.3f}",
                     pct(x["accuracy"]), pct(x.get("agreement_with_float")), "✓" if x["within_thresholds"] else "✗",
                     HOW[x["how"]]] for x in r["rows"]])
    return lines


def _pruning(r: dict, results: dict) -> list[str]:
    v = r["variants"]
    lines = []
    for name in ("unstructured", "structured"):
        if name not in v:
            continue
        x, stats = v[name], v[name].get("stats", {})
        if name == "unstructured":
            after = x.get("sparsity_after_qat") or {}
            lines.append(f"- **unstructured**: global magnitude pruning to {100 * x['target']:.0f}% of conv/linear weights "
                         f"({stats.get('pruning_events')} steps over {stats.get('fine_tune_steps')} fine-tuning steps); "
                         f"weight sparsity {100 * stats.get('weight_sparsity', 0):.1f}% after pruning, "
                         f"{100 * after.get('weight_sparsity', 0):.1f}% after QAT (the masks are held during QAT); "
                         f"float {pct(x['float_accuracy'])}, QAT int8 {pct(x['qat_accuracy'])} (simulated).")
        else:
            lines.append(f"- **structured**: {100 * x['target']:.0f}% of the channels of each layer removed (torch-pruning; "
                         f"{stats.get('pruning_events')} steps over {stats.get('fine_tune_steps')} fine-tuning steps); "
                         f"parameters {stats.get('parameters_before', 0):,} → {stats.get('parameters_after', 0):,}, "
                         f"MACs {stats.get('macs_before', 0):,} → {stats.get('macs_after', 0):,}; float "
                         f"{pct(x['float_accuracy'])}, QAT int8 {pct(x['qat_accuracy'])} (simulated).")
        for backend, reason in x.get("failures", {}).items():
            lines.append(f"  - {backend}: export failed: {reason}")
    lines += ["", "Each pruned variant is quantized with QAT of the scheme: the .pte, the .tflite and Core ML's W8A8 "
              "package hold that int8 graph (Core ML's on Linux: checked to hold its numbers, the graph then run in "
              "PyTorch, so simulated). Core ML's palettization is post-training, so its palettized files hold each "
              "variant's float network, the same one as the fp32 .pte and .tflite.",
              "", "Every file below ran on the whole test set (Core ML: read back). Sizes relative to the baseline's "
              "float file of the same runtime; latency relative to the baseline's file of the same runtime and "
              "precision, batch 1, all files of a runtime timed interleaved in this run (Core ML: macOS only). "
              "XNNPACK has no sparse int8 kernels, so unstructured zeros are not expected to make a .pte faster, "
              "only smaller once compressed.", ""]
    lines += table(["variant", "what", "runtime", "precision", "accuracy", "size kB", "zip kB", "size ratio", "zip ratio",
                    "latency ratio", "verified", "how"],
                   [[x["variant"], x["what"], x["backend"], x["quant"], pct(x["accuracy"]), kb(x["bytes"]),
                     kb(x["zip_bytes"]), num(x["size_ratio"], ".3f"), num(x["zip_ratio"], ".3f"),
                     num(x["latency_ratio"], ".2f", "×"), "✓" if x["passed"] else "✗", HOW[x["how"]]]
                    for x in r["table"]])
    lines += ["**Quantization alone, pruning alone, both** (accuracy · zip-compressed size relative to the baseline's "
              "float file · latency relative to the baseline's float file):", ""]
    lines += table(["runtime", "method", "quantization alone", "pruning alone", "both"], summary(r))
    return lines


def summary(r: dict) -> list[list]:
    rows = []
    table_rows = r["table"]
    lat = r.get("latency", {})

    def cell(row) -> str:
        if row is None:
            return "—"
        base_float = next((x for x in table_rows if x["variant"] == "baseline" and x["backend"] == row["backend"]
                           and x["quant"] in ("fp32", "fp16")), None)
        speed = None
        if base_float:
            a, b = lat.get(row["backend"], {}).get(row["file"]), lat.get(row["backend"], {}).get(base_float["file"])
            speed = a["p50_ms"] / b["p50_ms"] if a and b else None
        return f"{pct(row['accuracy'])} · {num(row['zip_ratio'], '.3f')} · {num(speed, '.2f', '×')}"

    for backend in REGISTRY:
        base_q = next((x for x in table_rows if x["variant"] == "baseline" and x["backend"] == backend
                       and x["what"] == "quantization alone"), None)
        for method in ("unstructured", "structured"):
            alone = next((x for x in table_rows if x["variant"] == method and x["backend"] == backend
                          and x["what"] == "pruning alone"), None)
            both = next((x for x in table_rows if x["variant"] == method and x["backend"] == backend
                         and x["what"] == "both"), None)
            if alone or both:
                rows.append([backend, method, cell(base_q), cell(alone), cell(both)])
            joint = next((x for x in table_rows if x["variant"] == method and x["backend"] == backend
                          and x["what"].startswith("both (sparse")), None)
            if joint:
                rows.append([backend, f"{method}, stored sparse", cell(base_q),
                             cell(next((x for x in table_rows if x["variant"] == method and x["backend"] == backend
                                        and x["what"] == "pruning alone (stored sparse)"), None)), cell(joint)])
    return rows


def _wa(r: dict, results: dict) -> list[str]:
    lines = [f"PTQ model: OUT's fp32 network calibrated once ({r['calibration_batches']} batches); OUT's QAT model "
             "(trained with both quantized) for comparison where the `qat` stage kept it. Simulated rows bypass the "
             "other kind of quantizer in the same graph. Weights only also ran for real: the weight-only scheme "
             f"({', '.join(t for t, x in r.get('schemes', {}).items() if x['activations'] == 'none')}) in LiteRT "
             "(Core ML's weight-only files are section 4's linear rows). No runtime here exports float weights with "
             "int8 activations, so activation-only exists only simulated.", ""]
    lines += table(["model", "weights", "activations", "accuracy", "how", "what"],
                   [[x["model"], x["weights"], x["activations"], pct(x["accuracy"]), HOW[x["how"]], x["what"]]
                    for x in r["rows"]])
    for backend, reason in r.get("failures", {}).items():
        lines.append(f"- {backend}: export failed: {reason}")
    return lines
