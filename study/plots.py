"""PNG plots of the study (matplotlib, Agg canvas: no display needed). Each takes one section's result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from core import io as atomic

COLORS = {"executorch": "#1f77b4", "tflite": "#ff7f0e", "coreml": "#2ca02c", "pytorch": "#555555"}


SIZES = {"executorch": 90, "tflite": 30, "coreml": 50}  # .pte and .tflite often coincide: a dot inside a disc


def _log_kb(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig: Figure, path: Path) -> str:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path.name


def layer_error(result: dict, path: Path) -> str:
    weights = {r["layer"]: r for r in result["weights"]}
    acts = {r["layer"]: r for r in result["activations"]}
    layers = list(dict.fromkeys([*acts, *weights]))
    x = np.arange(len(layers))
    fig = Figure(figsize=(max(7, 0.6 * len(layers) + 3), 7.5))
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    series = [("weights", weights, "sqnr_db", "#1f77b4"), ("activations (own quantizer)", acts, "sqnr_db", "#ff7f0e"),
              ("activations vs the float network", acts, "sqnr_vs_float_db", "#d62728")]
    for i, (label, rows, key, color) in enumerate(series):
        values = [rows[l][key] if l in rows and rows[l].get(key) is not None else np.nan for l in layers]
        ax1.bar(x + (i - 1) * 0.27, values, 0.27, label=label, color=color)
    ax1.set_ylabel("SQNR (dB)")
    ax1.legend(fontsize=8)
    ax1.set_title("Per-layer int8 error (higher SQNR is better)")
    for i, (label, rows, color) in enumerate((("weights", weights, "#1f77b4"), ("activations", acts, "#ff7f0e"))):
        ratio = [rows[l]["measured_mse"] / rows[l]["predicted_mse"] if l in rows and rows[l]["predicted_mse"] else np.nan
                 for l in layers]
        ax2.bar(x + (i - 0.5) * 0.4, ratio, 0.4, label=label, color=color)
    ax2.axhline(1.0, color="k", lw=0.8, ls="--")
    ax2.set_yscale("log")
    ax2.set_ylabel("measured MSE / (Δ²/12)")
    ax2.legend(fontsize=8)
    for i, (label, rows, color) in enumerate((("weights", weights, "#1f77b4"), ("activations", acts, "#ff7f0e"))):
        clipped = [100 * rows[l]["clipped_fraction"] if l in rows else np.nan for l in layers]
        ax3.bar(x + (i - 0.5) * 0.4, clipped, 0.4, label=label, color=color)
    ax3.set_ylabel("clipped (%)")
    ax3.set_xticks(x, layers, rotation=45 if len(layers) > 8 else 0, ha="right" if len(layers) > 8 else "center")
    ax3.legend(fontsize=8)
    return _save(fig, path)


def sensitivity(result: dict, path: Path) -> str:
    rows = sorted(result["layers"], key=lambda r: result["ranking"].index(r["layer"]))
    y = np.arange(len(rows))
    fig = Figure(figsize=(8, max(3, 0.35 * len(rows) + 1.5)))
    ax = fig.subplots()
    ax.barh(y - 0.2, [r["drop_when_quantized_pp"] for r in rows], 0.4, label="drop when only this layer is int8", color="#d62728")
    ax.barh(y + 0.2, [r["recovery_when_float_pp"] for r in rows], 0.4, label="recovery when only this layer is float",
            color="#2ca02c")
    ax.set_yticks(y, [r["layer"] for r in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("test accuracy, percentage points (PTQ, simulated)")
    ax.set_title("Sensitivity, most sensitive first")
    ax.legend(fontsize=8)
    return _save(fig, path)


def mixed(result: dict, fp32: float, path: Path) -> str:
    trace = result["choice"]["trace"]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(range(len(trace)), [100 * t["ptq_accuracy"] for t in trace], "o-", label="PTQ int8, listed layers float")
    ax.axhline(100 * fp32, color="k", ls="--", lw=0.8, label="fp32")
    budget = result["choice"].get("budget_pp")
    if budget is not None:
        ax.axhline(100 * fp32 - budget, color="#d62728", ls=":", lw=1, label=f"budget: fp32 - {budget} pp")
    ax.set_xticks(range(len(trace)), ["none"] + ["+" + t["kept"][-1] for t in trace[1:]], rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Layers kept float, most sensitive first")
    ax.legend(fontsize=8)
    return _save(fig, path)


def sweep(result: dict, path: Path) -> str:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    rows = [r for r in result["rows"] if r["accuracy"] is not None]
    for scheme, marker, color in (("palettized", "o-", "#2ca02c"), ("linear", "s", "#9467bd"), ("fp16", "^", "#555555")):
        pts = sorted((r for r in rows if r["scheme"] == scheme), key=lambda r: r["bytes"])
        if not pts:
            continue
        ax.plot([r["bytes"] / 1e3 for r in pts], [100 * r["accuracy"] for r in pts], marker, color=color, label=scheme)
        for r in pts:
            ax.annotate(f"{'lin' if scheme == 'linear' else ''}{r['bits']}b", (r["bytes"] / 1e3, 100 * r["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    _log_kb(ax)
    ax.set_xlabel("package size (kB, log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Core ML weight compression: accuracy against size (weights read back)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def pruning(result: dict, path: Path) -> str:
    fig = Figure(figsize=(11, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    markers = {"baseline": "o", "unstructured": "s", "structured": "D"}
    for r in result["table"]:
        if r["accuracy"] is None:
            continue
        filled = r["quant"] not in ("fp32", "fp16")
        ax1.scatter(r["zip_bytes"] / 1e3, 100 * r["accuracy"], marker=markers.get(r["variant"], "x"),
                    facecolors=COLORS.get(r["backend"], "k") if filled else "none", edgecolors=COLORS.get(r["backend"], "k"),
                    s=SIZES.get(r["backend"], 50), zorder=3 if r["backend"] == "tflite" else 2)
    for backend, color in COLORS.items():
        if any(r["backend"] == backend for r in result["table"]):
            ax1.scatter([], [], color=color, label=backend, s=30)
    ax1.legend(fontsize=8, loc="lower right")
    _log_kb(ax1)
    ax1.set_xlabel("zip-compressed size (kB, log)")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("filled: quantized; hollow: float\no baseline, □ unstructured, ◇ structured", fontsize=9)
    timed = [r for r in result["table"] if r["latency_ratio"] is not None]
    labels = [f"{r['variant'][:5]} {r['backend'][:5]} {r['quant']}" for r in timed]
    ax2.barh(np.arange(len(timed)), [r["latency_ratio"] for r in timed], color=[COLORS.get(r["backend"], "k") for r in timed])
    ax2.set_yticks(np.arange(len(timed)), labels, fontsize=7)
    ax2.axvline(1.0, color="k", lw=0.8, ls="--")
    ax2.invert_yaxis()
    ax2.set_xlabel("batch-1 latency / baseline's, same runtime and precision")
    return _save(fig, path)


def weights_activations(result: dict, path: Path) -> str:
    rows = [r for r in result["rows"] if r["accuracy"] is not None]
    fig = Figure(figsize=(9, max(3, 0.35 * len(rows) + 1.5)))
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.barh(y, [100 * r["accuracy"] for r in rows], color=["#1f77b4" if r["model"] == "PTQ" else "#ff7f0e" for r in rows])
    for i, r in enumerate(rows):
        ax.text(100 * r["accuracy"], i, f" {100 * r['accuracy']:.2f}% ({r['how']})", va="center", fontsize=7)
    ax.set_yticks(y, [f"{r['model']}: W {r['weights'].split(' ')[0]} / A {r['activations'].split(' ')[0]}" for r in rows],
                  fontsize=8)
    ax.invert_yaxis()
    low = min(100 * r["accuracy"] for r in rows)
    ax.set_xlim(max(0, low - 5), 100)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title("Weights only, activations only, both (blue: PTQ model, orange: QAT model)")
    return _save(fig, path)
