"""The parity section of OUT/report.md and its plots (OUT/parity/<pair>.png)."""

from __future__ import annotations

from pathlib import Path

from converters.parity import PAIRS, RUNTIME_NAMES, pct
from core import io as atomic

PLOT_DIR = "parity"
TITLES = {pair: f"{RUNTIME_NAMES[a]} ↔ {RUNTIME_NAMES[b]}" for pair, (a, b) in PAIRS.items()}


def plot_pair(pair: str, block: dict, path: Path) -> Path:
    """Max and mean |difference| (output steps) and the share of equal values, by layer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = block["rows"]
    x = list(range(len(rows)))
    fig = Figure(figsize=(max(6.0, 0.16 * len(rows) + 2), 5.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    top.bar(x, [r["max_steps"] for r in rows], color="#1f77b4", label="max |Δ|")
    top.plot(x, [r["mean_steps"] for r in rows], "o-", color="#ff7f0e", markersize=3, label="mean |Δ|")
    top.set_ylabel("output steps")
    top.set_ylim(0, max(1.0, max((r["max_steps"] for r in rows), default=1)) * 1.15)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(TITLES[pair], fontsize=10)
    bottom.plot(x, [100 * (1 - r["equal_share"]) for r in rows], "s-", color="#2ca02c", markersize=3)
    bottom.set_ylabel("% values that differ")
    bottom.set_yscale("symlog", linthresh=0.01)
    bottom.set_ylim(0, 100)
    div = block.get("first_divergence")
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
        if div:
            ax.axvline(div["index"], color="#d62728", linestyle="--", linewidth=1)
    if div:
        top.annotate(f"first divergence: {div['layer']}", (div["index"], top.get_ylim()[1] * 0.92), fontsize=8,
                     color="#d62728", xytext=(4, 0), textcoords="offset points")
    bottom.set_xticks(x)
    bottom.set_xticklabels([r["layer"] for r in rows], rotation=90, fontsize=6)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def write_plots(out: Path, parity: dict) -> dict[str, str]:
    """One PNG per compared pair, under OUT/parity/; returns pair -> path relative to OUT."""
    plots = {}
    for pair, block in parity.get("pairs", {}).items():
        if block["rows"]:
            rel = f"{PLOT_DIR}/{pair}.png"
            plot_pair(pair, block, Path(out) / rel)
            plots[pair] = rel
    return plots


def _db(v) -> str:
    return {"inf": "∞", "-inf": "-∞"}.get(v, None) or f"{v:.1f}"


def _pair_table(rows: list[dict]) -> list[str]:
    lines = ["| # | layer | op | max Δ (steps) | mean Δ (steps) | equal | SQNR (dB) |", "|---:|---|---|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        lines.append(f"| {i} | `{r['layer']}` | {r['op']} | {r['max_steps']:g} | {r['mean_steps']:.3g} | "
                     f"{pct(r['equal_share'])} | {_db(r['sqnr_db'])} |")
    return lines


def _mapping_table(layers: list[dict]) -> list[str]:
    lines = ["| # | layer | op | shape | .tflite tensor | matched by | computed in float |", "|---:|---|---|---|---|---|---|"]
    for r in layers:
        t = r.get("tflite")
        tensor = "–" if t is None else f"{t['index']} ({t['producer']}, {t['layout']})"
        how = (r.get("tflite_missing") or "not found") if t is None else t["method"]
        floats = ", ".join(f"{k}: {v}" for k, v in r.get("float_in", {}).items()) or "–"
        lines.append(f"| {r['index']} | `{r['name']}` | {r['op']} | {'×'.join(map(str, r['shape']))} | {tensor} | "
                     f"{how} | {floats} |")
    return lines


def _coreml(coreml: dict, references: dict) -> list[str]:
    if not coreml:
        return []
    lines = ["### Core ML weights against the weights they were made from", "",
             "Core ML's kernels run only on macOS; here each file's weights are read back (`decompress_weights`) "
             "and held to the float weights it was converted from (the fp32 checkpoint for the fp16 baseline, the "
             "scheme's float weights for the others), BatchNorm folded as the Core ML converter folds it. "
             "Differences are in units of each tensor's symmetric int8 step (max |w| / 127 per output channel).", "",
             "| file | compared with | weights | worst tensor | its max Δ (int8 steps) | median SQNR (dB) | lowest SQNR (dB) |",
             "|---|---|---:|---|---:|---:|---:|"]
    for file, rows in coreml.items():
        ref = references.get(file, "–")
        if isinstance(rows, str):
            lines.append(f"| `{file}` | {ref} | – | could not read: {rows} | | | |")
            continue
        worst = max(rows, key=lambda r: r["max_steps"])
        sqnrs = sorted((r["sqnr_db"] for r in rows), key=lambda v: float(v))
        lines.append(f"| `{file}` | {ref} | {len(rows)} | `{worst['weight']}` | {worst['max_steps']:.3g} | "
                     f"{_db(sqnrs[len(sqnrs) // 2])} | {_db(sqnrs[0])} |")
    for file, rows in coreml.items():
        if isinstance(rows, str):
            continue
        lines += ["", f"<details><summary>{file}: every weight</summary>", "",
                  "| weight | shape | max Δ (int8 steps) | mean Δ | equal | SQNR (dB) |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| `{r['weight']}` | {'×'.join(map(str, r['shape']))} | {r['max_steps']:.3g} | {r['mean_steps']:.3g} | "
                  f"{pct(r['equal_share'])} | {_db(r['sqnr_db'])} |" for r in rows]
        lines += ["", "</details>"]
    return lines + [""]


def _mapping_summary(parity: dict) -> str:
    layers = parity["layers"]
    methods = [r["tflite"]["method"] if r.get("tflite") else None for r in layers]
    if not any(methods):
        return f"{len(layers)} layers."
    guesses = [r["name"] for r, m in zip(layers, methods) if m and "guess" in m]
    missing = [r["name"] for r, m in zip(layers, methods) if m is None]
    fused = [r["name"] for r in layers if r.get("tflite_missing", "") and "fused" in r["tflite_missing"]]
    by = {"tensor name": sum(m == "tensor name" for m in methods),
          "model input or output": sum(m in ("model input", "model output") for m in methods),
          "the only tensor with that scale, zero point and size (no name; an inference)":
              sum(bool(m) and "only fit" in m for m in methods)}
    text = f"Layer mapping, {len(layers)} layers to .tflite tensors: " + ", ".join(f"{n} by {k}" for k, n in by.items() if n)
    text += f"; **guessed** {len(guesses)}" + (f" ({', '.join(guesses)})" if guesses else "")
    if fused:
        text += (f"; {len(fused)} have no tensor because litert-torch fused the activation after them into "
                 "their op (they are compared between PyTorch and the .pte only)")
    rest = [m for m in missing if m not in fused]
    if rest:
        text += f"; not found {len(rest)} ({', '.join(rest)})"
    return text + "."


def _local(parity: dict) -> list[str]:
    """Teacher-forced parity: each runtime's layers against PyTorch's computation of them from the runtime's
    own values of the layers before (so a difference is that one op's, not inherited)."""
    checks = parity.get("local_check") or {}
    if not checks:
        return []
    lines = ["", "**Each op on its own** (teacher-forced: PyTorch computes every layer from the runtime's own int8 "
                 "values of the layers before it, so what differs is that op's rounding, not what came before):", ""]
    for rt, check in checks.items():
        worst = check["worst"]
        if check["passed"]:
            state = (f"every one of {check['layers']} layers within {check['max_steps']:g} output step(s); worst "
                     f"`{worst['layer']}` ({worst['op']}), {worst['max_steps']:g} step(s) on "
                     f"{100 * (1 - worst['equal_share']):.2g}% of its values")
        else:
            state = "**over the limit**: " + "; ".join(check["failures"])
        lines.append(f"- {RUNTIME_NAMES[rt]}: {state}")
    rows = {rt: {r["layer"]: r for r in parity["local"][rt]["rows"]} for rt in checks}
    differing = [r for r in parity["layers"] if any(r["name"] in v and v[r["name"]]["equal_share"] < 1 for v in rows.values())]
    if differing:
        names = list(checks)
        lines += ["", "<details><summary>Layers where an op on its own differs (teacher-forced)</summary>", "",
                  "| layer | op | " + " | ".join(f"{RUNTIME_NAMES[rt]}: max Δ, equal" for rt in names) + " |",
                  "|---|---|" + "---:|" * len(names)]
        for layer in differing:
            cells = [f"{v[layer['name']]['max_steps']:g}, {pct(v[layer['name']]['equal_share'])}"
                     if layer["name"] in v else "–" for v in (rows[rt] for rt in names)]
            lines.append(f"| `{layer['name']}` | {layer['op']} | " + " | ".join(cells) + " |")
        lines += ["", "</details>"]
    return lines


def parity_section(manifest: dict) -> list[str]:
    parity = manifest.get("parity")
    if not parity:
        return []
    lines = ["## Layer-by-layer parity", ""]
    if parity.get("error"):
        return lines + [f"Parity could not run: {parity['error']}", ""]
    runtimes = parity.get("runtimes", {})
    artifacts = manifest.get("artifacts", {})
    stale = [f for f, sha in parity.get("files", {}).items() if artifacts.get(f, {}).get("sha256") != sha]
    if stale:
        lines += [f"**Stale:** {', '.join(stale)} changed since this comparison; run `mobile-pipeline parity` again.", ""]
    scheme = parity.get("scheme") or {}
    lines += [f"Scheme `{scheme.get('tag', 'int8')}`: {parity['images']} test images through every quantized layer "
              f"({len(parity['layers'])}) of the converted PT2E graph and its .pte and .tflite. A *layer* is one int8 activation, named after the "
              "module that computes it. Differences are in that layer's output quantization steps; SQNR is of "
              "the second runtime against the first.", "", "How each runtime was read:", ""]
    for name, info in runtimes.items():
        extra = ""
        if "final_output_equals_shipped" in info:
            extra = f"; its final output equals the shipped file's on {info['final_output_equals_shipped']} images"
        if info.get("float_kernels"):
            extra += f"; XNNPACK float kernels (ETDump): {', '.join(info['float_kernels'])}"
        if info.get("ops_outside_delegate"):
            extra += f"; ops outside the delegate: {info['ops_outside_delegate']}"
        lines.append(f"- {RUNTIME_NAMES[name]}: {info['method']}{extra}")
    lines += ["", "**Verdicts**", ""] + [f"- {block['verdict']}" for block in parity["pairs"].values()]
    check = parity.get("check")
    if check:
        state = "passed" if check["passed"] else "FAILED: " + "; ".join(check["failures"])
        lines += ["", f"Check (`verify`): .pte and .tflite may differ by {check['max_steps']} output steps per layer "
                      f"({check['max_steps_float']} where a runtime computes the op in float): **{state}**"]
    lines += _local(parity)
    lines += ["", _mapping_summary(parity), ""]
    for pair, block in parity["pairs"].items():
        lines += [f"### {TITLES[pair]}", ""]
        if parity.get("plots", {}).get(pair):
            lines += [f"![{pair}]({parity['plots'][pair]})", ""]
        lines += _pair_table(block["rows"]) + [""]
    lines += ["<details><summary>Layers and their .tflite tensors</summary>", ""] + _mapping_table(parity["layers"])
    lines += ["", "</details>", ""]
    return lines + _coreml(parity.get("coreml", {}), parity.get("coreml_reference", {}))
