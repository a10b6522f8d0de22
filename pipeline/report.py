"""OUT/report.md: what was exported, how big, how accurate, and whether it matches its reference."""

from __future__ import annotations

from pathlib import Path

from core import io as atomic

from . import parity_report

FP32_BASELINES = ("_xnnpack_fp32.pte", "_tflite_fp32.tflite")


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def fp32_bytes(manifest: dict) -> int | None:
    """Size of the fp32 artifact every compression ratio is measured against."""
    for suffix in FP32_BASELINES:
        for file, a in manifest.get("artifacts", {}).items():
            if file.endswith(suffix):
                return a["bytes"]
    return None


def export_table(manifest: dict) -> list[str]:
    base = fp32_bytes(manifest)
    rows = ["| artifact | backend | quant | size (MB) | vs fp32 | accuracy | reference | agreement | agree w/ QAT | max abs Δlogit | export (s) | verified by |",
            "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for file, a in sorted(manifest.get("artifacts", {}).items()):
        v = a.get("verification", {})
        ratio = f"{base / a['bytes']:.2f}x" if base else "–"
        mark = "" if v.get("passed") else " **FAILED**"
        diff = v.get("max_abs_logit_diff")
        rows.append(f"| `{file}`{mark} | {a['backend']} | {a['quant']} | {a['bytes'] / 1e6:.3f} | {ratio} | "
                    f"{_pct(v.get('accuracy'))} | {a['reference']} ({_pct(v.get('reference_accuracy'))}) | "
                    f"{_pct(v.get('agreement'))} | {_pct(v.get('agreement_with_qat'))} | "
                    f"{'–' if diff is None else f'{diff:.4g}'} | {a.get('export_seconds', 0):.1f} | {v.get('method', '–')} |")
    return rows


def quantization_error_table(manifest: dict) -> list[str]:
    rows = manifest.get("quantization_error")
    if not rows:
        return []
    lines = ["## Int8 weight rounding error", "",
             "Per layer, the mean squared error of rounding the QAT weights to int8 (symmetric, one step Δ per "
             "output channel), beside the uniform-noise prediction Δ²/12. Weights beyond ±127Δ are clipped.", "",
             "| layer | channels | mean Δ | measured MSE | Δ²/12 | ratio | clipped |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['channels']} | {r['mean_step']:.3g} | {r['measured_mse']:.3g} | "
                     f"{r['predicted_mse']:.3g} | {r['measured_mse'] / r['predicted_mse']:.2f} | {100 * r['clipped_fraction']:.2f}% |")
    return lines + [""]


def export_report(manifest: dict) -> str:
    data, model, acc = manifest.get("dataset", {}), manifest.get("model", {}), manifest.get("accuracy", {})
    lines = [
        f"# Export report: {model.get('name')} on {data.get('name')}",
        "",
        f"Run `{manifest.get('run_id')}`; {data.get('n_train')} training / {data.get('n_test')} test images "
        f"from {data.get('source')}.",
    ]
    if data.get("note"):
        lines += ["", f"**Note:** {data['note']}"]
    lines += [
        "",
        "## PyTorch accuracy (test set)",
        "",
        "| fp32 | PTQ int8 | QAT int8 | QAT weights, float |",
        "|---:|---:|---:|---:|",
        f"| {_pct(acc.get('fp32'))} | {_pct(acc.get('ptq'))} | {_pct(acc.get('qat'))} | {_pct(acc.get('qat_float'))} |",
        "",
        *quantization_error_table(manifest),
        "## Artifacts",
        "",
        "Each artifact ran over the whole test set in its runtime. *Agreement* is top-1 agreement with its PyTorch "
        "reference (`qat`: the converted QAT int8 graph; `fp32`: the fp32 checkpoint; `qat_float`: the QAT-trained "
        "weights in float, which Core ML palettizes). *vs fp32* is the size ratio against the fp32 artifact. "
        "Core ML cannot run on Linux: there, its stored weights are decompressed and run in PyTorch, which checks "
        "the file's weights but not Core ML's kernels; on macOS `MLModel.predict` runs it.",
        "",
        *export_table(manifest),
    ]
    cross = manifest.get("verification", {}).get("cross_backend", {})
    if cross:
        lines += ["", "## Cross-backend agreement", "", "| pair | top-1 agreement | max abs Δlogit |", "|---|---:|---:|"]
        lines += [f"| {pair} | {_pct(v['agreement'])} | {v['max_abs_logit_diff']:.4g} |" for pair, v in cross.items()]
    lines += ["", *parity_report.parity_section(manifest)] if manifest.get("parity") else []
    failed = {n: b for n, b in manifest.get("backends", {}).items() if b.get("status") != "ok"}
    if failed:
        lines += ["", "## Backends that failed", ""] + [f"- **{n}**: {b.get('reason')}" for n, b in failed.items()]
    return "\n".join(lines) + "\n"


def write_export_report(out: Path, manifest: dict) -> Path:
    return atomic.write_text(Path(out) / "report.md", export_report(manifest))
