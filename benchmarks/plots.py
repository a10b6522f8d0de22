"""PNG plots of the bench results (matplotlib, Agg canvas: no display needed)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator
from matplotlib.transforms import Bbox

from core import io as atomic

COLORS = {"pytorch": "#555555", "executorch": "#1f77b4", "tflite": "#ff7f0e", "coreml": "#2ca02c"}
MARKERS = {"fp32": "o", "int8": "s", "fp16": "^"}  # palettized (palN): diamond
THREAD_COLORS = ["#9ecae1", "#3182bd", "#08519c"]
DEVICE_COLORS = ["#e6550d", "#31a354", "#756bb1", "#d6616b", "#636363"]
ACCURACY_PLOT, LATENCY_PLOT, DEVICE_PLOT = "accuracy_vs_size.png", "latency.png", "device_vs_host.png"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def short_label(row: dict) -> str:
    if row["kind"] == "baseline":
        return row["label"]
    return f"{row['label']} (.{row['format']})"


def _group(rows: list[dict]) -> list[list[dict]]:
    """Models of near-equal size (5%) and accuracy (0.2 pp) would hide each other: group them."""
    groups: list[list[dict]] = []
    for r in sorted(rows, key=lambda r: r["size_bytes"]):
        for g in groups:
            if (abs(r["size_bytes"] / g[0]["size_bytes"] - 1) < 0.05
                    and abs(r["accuracy"] - g[0]["accuracy"]) < 0.002):
                g.append(r)
                break
        else:
            groups.append([r])
    return groups


def _spread_labels(fig: Figure, ax, labels: list, points: list[tuple[float, float]]) -> None:
    """Move labels down (then up) until no two overlap and none covers a marker."""
    renderer = fig.canvas.get_renderer()
    r = 10 * fig.dpi / 72  # a marker's half-width, in pixels
    placed = [Bbox.from_extents(x - r, y - r, x + r, y + r) for x, y in ax.transData.transform(points)]
    if ax.get_legend():
        placed.append(ax.get_legend().get_window_extent(renderer))

    def box(label):  # the text and its frame, without the connecting line
        label.update_positions(renderer)
        return Text.get_window_extent(label, renderer).expanded(1.03, 1.25)

    for label in labels:
        x, y0 = label.get_position()
        for attempt in range(60):  # try 0, -1, +1, -2, +2 ... steps of 8 points
            step = 8 * ((attempt + 1) // 2) * (-1 if attempt % 2 else 1)
            label.set_position((x, y0 + step))
            if not any(box(label).overlaps(other) for other in placed):
                break
        placed.append(box(label))


def accuracy_vs_size(results: dict, path: Path) -> Path:
    """One marker per model; models at the same spot are drawn as nested markers and share one label."""
    rows = [r for r in results["rows"] if r["accuracy"] is not None]
    fig = Figure(figsize=(10, 6.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = []
    for g in _group(rows):
        for k, r in enumerate(g):  # biggest marker at the back, so every model of the group shows
            ax.scatter(r["size_bytes"] / 1e6, 100 * r["accuracy"], s=max(18 - 6 * k, 5) ** 2, color=COLORS.get(r["backend"], "k"),
                       marker=MARKERS.get(r["quant"], "D"), edgecolors="black", linewidths=0.7, zorder=3 + k)
        text = "\n".join(f"{short_label(r)}: {r['size_bytes'] / 1e6:.2f} MB, {100 * r['accuracy']:.1f}%" for r in g)
        labels.append(ax.annotate(text, (g[0]["size_bytes"] / 1e6, 100 * g[0]["accuracy"]), xytext=(18, 0),
                                  textcoords="offset points", fontsize=8.5, va="center",
                                  arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6},
                                  bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.8", "alpha": 0.9}))
    sizes = [r["size_bytes"] / 1e6 for r in rows]
    accs = [100 * r["accuracy"] for r in rows]
    if sizes:
        ax.set_xlim(0, max(sizes) * 1.7)
        span = max(max(accs) - min(accs), 1.0)
        ax.set_ylim(min(accs) - 0.7 * span, max(accs) + 0.5 * span)
    seen = {r["backend"] for r in rows}
    for backend in [*COLORS, *sorted(seen - set(COLORS))]:  # a backend without a colour of its own is black
        if backend in seen:
            ax.scatter([], [], color=COLORS.get(backend, "k"), marker="o", s=60, label=backend)
    for quant, marker in {**MARKERS, "palettized": "D"}.items():
        if any(r["quant"] == quant or (quant == "palettized" and r["quant"].startswith("pal")) for r in rows):
            ax.scatter([], [], color="white", edgecolors="black", marker=marker, s=60, label=quant)
    ax.legend(loc="lower right", fontsize=9, ncol=2, title="runtime / weights", title_fontsize=9)
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy vs size: {results['model'].get('name')} on {results['dataset'].get('name')} "
                 f"({results['dataset'].get('n_test')} test images)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()  # first, so the label boxes are measured where they will be drawn
    _spread_labels(fig, ax, labels, list(zip(sizes, accs)))
    return _save(fig, path)


def _log_ms_axis(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _bars(ax, y: float, height: float, p50: float, p90: float, color: str, label: str | None, text: str) -> None:
    ax.barh(y, p50, height=height, color=color, edgecolor="black", linewidth=0.5, label=label,
            xerr=[[0], [max(p90 - p50, 0)]], capsize=3, error_kw={"elinewidth": 1, "ecolor": "black"})
    ax.text(max(p90, p50) * 1.08, y, text, va="center", fontsize=8)


def latency(results: dict, path: Path) -> Path:
    """Batch-1 p50 per model and thread count; the whisker reaches p90."""
    rows = results["rows"]
    labels = sorted({lat["label"] for r in rows for lat in r["latency"]}, key=lambda s: (s != "1 thread", s))
    fig = Figure(figsize=(11, 1.5 + 0.42 * len(rows) * max(len(labels), 1)))
    ax = fig.add_subplot()
    height = 0.8 / max(len(labels), 1)
    values = [lat["p90_ms"] for r in rows for lat in r["latency"]]
    used = set()
    for i, r in enumerate(rows):
        if not r["latency"]:
            note = r["error"] or r["latency_note"] or "not measured"
            ax.text(0.01, i, "not measured: " + note.split(";")[0], va="center", fontsize=8, style="italic",
                    color="0.35", transform=ax.get_yaxis_transform())  # x in axes fraction, y in rows
        for lat in r["latency"]:
            j = labels.index(lat["label"])
            ratio = lat["vs_fp32"]["p50"] if lat["vs_fp32"] else None
            text = f"{lat['p50_ms']:.3f} ms" + (f"  ({ratio:.2f}× fp32)" if ratio is not None else "")
            _bars(ax, i - 0.4 + height * (j + 0.5), height * 0.9, lat["p50_ms"], lat["p90_ms"],
                  THREAD_COLORS[j % len(THREAD_COLORS)], None if lat["label"] in used else lat["label"], text)
            used.add(lat["label"])
    ax.set_yticks(range(len(rows)), [short_label(r) for r in rows], fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # top to bottom, a full slot for the last row too
    _log_ms_axis(ax)
    if values:
        ax.set_xlim(min(lat["p50_ms"] for r in rows for lat in r["latency"]) * 0.5, max(values) * 6)
    ax.set_xlabel("batch-1 latency, ms (log scale): bar = p50, whisker = p90")
    s = results["settings"]
    ax.set_title(f"Host latency per model ({results['host']['cpu_model']}; {s['iterations']} runs after "
                 f"{s['warmup']} warm-up)", fontsize=10)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    if used:
        ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path)


def device_vs_host(results: dict, devices: list[dict], path: Path) -> Path:
    """For each model a device ran: this host's bars (per thread count) above each device's; p50, p90 whisker."""
    host = {r["name"]: r for r in results["rows"]}
    thread_labels = sorted({lat["label"] for r in results["rows"] for lat in r["latency"]}, key=lambda s: (s != "1 thread", s))
    colors = {f"host, {t}": THREAD_COLORS[i % len(THREAD_COLORS)] for i, t in enumerate(thread_labels)}
    bars: dict[str, list[tuple[str, float, float]]] = {}  # model (with Core ML compute units) -> (series, p50, p90)
    for entry in devices:
        doc = entry["data"]
        series = f"{doc['platform']}: {doc['device']['model']} ({doc['settings']['threads']} threads)"
        colors.setdefault(series, DEVICE_COLORS[(len(colors) - len(thread_labels)) % len(DEVICE_COLORS)])
        for res in doc["results"]:
            if res["status"] == "ok":
                m = res["metrics"]
                key = res["model"] + (f" [{res['compute_units']}]" if res.get("compute_units") else "")
                bars.setdefault(key, []).append((series, m["p50_inference_latency(ms)"], m["p90_inference_latency(ms)"]))
    rows: list[tuple[str, str, float, float]] = []  # (model, series or "note: ...", p50, p90)
    ticks = []
    for model in sorted(bars):
        first = len(rows)
        name = model.split(" [")[0]
        host_row = host.get(name)
        for lat in (host_row or {}).get("latency", []):
            rows.append((model, f"host, {lat['label']}", lat["p50_ms"], lat["p90_ms"]))
        if not (host_row or {}).get("latency"):
            why = (host_row or {}).get("latency_note") or "not in this host's results"
            rows.append((model, "note: host not measured: " + why.split(";")[0], 0, 0))
        rows += [(model, series, p50, p90) for series, p50, p90 in bars[model]]
        ticks.append(((first + len(rows) - 1) / 2 + len(ticks) * 0.6, model))
    fig = Figure(figsize=(11, 1.6 + 0.3 * len(rows) + 0.2 * len(ticks)))
    ax = fig.add_subplot()
    values = [v for _, s, p50, p90 in rows if not s.startswith("note:") for v in (p50, p90)]
    left = min(values, default=0.1) * 0.5
    used, group, previous = set(), -1, None
    for i, (model, series, p50, p90) in enumerate(rows):
        group += model != previous
        previous = model
        y = i + group * 0.6
        if series.startswith("note:"):
            ax.text(left * 1.1, y, series.removeprefix("note: "), va="center", fontsize=8, style="italic", color="0.35")
            continue
        _bars(ax, y, 0.85, p50, p90, colors[series], None if series in used else series, f"{p50:.3f} ms")
        used.add(series)
    ax.set_yticks([t for t, _ in ticks], [m for _, m in ticks], fontsize=9)
    ax.invert_yaxis()
    _log_ms_axis(ax)
    if values:
        ax.set_xlim(left, max(values) * 6)
    ax.set_xlabel("batch-1 latency, ms (log scale): bar = p50, whisker = p90")
    ax.set_title("Devices beside this host (same model files)", fontsize=10)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: list(colors).index(labels[k]))  # host first, then devices
    ax.legend([handles[k] for k in order], [labels[k] for k in order], loc="lower right", fontsize=8)
    return _save(fig, path)


def write_plots(results: dict, devices: list[dict], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    written = [accuracy_vs_size(results, out_dir / ACCURACY_PLOT), latency(results, out_dir / LATENCY_PLOT)]
    if devices:
        written.append(device_vs_host(results, devices, out_dir / DEVICE_PLOT))
    else:
        (out_dir / DEVICE_PLOT).unlink(missing_ok=True)  # no device files any more: no stale plot
    return written
