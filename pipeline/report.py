"""OUT/report.md: what was exported, how big, how accurate, and whether it matches its reference."""

from __future__ import annotations

from pathlib import Path

from core import io as atomic
from converters import REGISTRY
from core.manifest import scheme_tag

from . import palette, parity_report

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
    rows = ["| artifact | backend | scheme | size (MB) | vs fp32 | accuracy | reference | agreement | max abs Δlogit "
            "| drop vs fp32 / PTQ (pp) | export (s) | verified by |",
            "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for file, a in sorted(manifest.get("artifacts", {}).items()):
        v = a.get("verification", {})
        ratio = f"{base / a['bytes']:.2f}x" if base else "–"
        mark = "" if v.get("passed") else " **FAILED**"
        diff = v.get("max_abs_logit_diff")
        drops = v.get("quant_drop_pp") or {}
        drop = " / ".join(f"{drops[k]:+.2f}" if k in drops else "–" for k in ("fp32", "ptq")) if drops else "–"
        scheme = (a.get("scheme") or {}).get("summary", "fp32 baseline" if a["quant"] in ("fp32", "fp16") else "–")
        rows.append(f"| `{file}`{mark} | {a['backend']} | {a['quant']}: {scheme} | {a['bytes'] / 1e6:.3f} | {ratio} | "
                    f"{_pct(v.get('accuracy'))} | {a['reference']} ({_pct(v.get('reference_accuracy'))}) | "
                    f"{_pct(v.get('agreement'))} | {'–' if diff is None else f'{diff:.4g}'} | {drop} | "
                    f"{a.get('export_seconds', 0):.1f} | {v.get('method', '–')} |")
    return rows


def accuracy_table(manifest: dict) -> list[str]:
    """fp32, PTQ and QAT side by side for every scheme in OUT, which one was exported, and the paired test that
    decided it under --quant-mode auto."""
    acc = manifest.get("accuracy", {})
    stages = manifest.get("stages", {}).get("quantize", {})
    lines = ["| scheme | fp32 | PTQ | QAT | PTQ vs QAT (exact McNemar) | exported | its float weights |",
             "|---|---:|---:|---:|---|---|---:|"]
    for tag, entry in sorted(stages.items()):
        a = acc.get(tag) or {}
        summary = (entry.get("scheme") or {}).get("summary", tag)
        test = a.get("choice")
        if test:
            significant = test["p"] < test.get("alpha", 0.05)
            versus = (f"{test['only_first']} vs {test['only_second']} images, p = {test['p']:.2g}, n = {test['n']}"
                      + (" (significant)" if significant else " (within noise)"))
        else:
            versus, significant = "–", False
        warn = " ⚠ PTQ significantly better" if significant and a.get("qat") is not None and a["qat"] < a.get("ptq", 0) else ""
        d = entry.get("distill")
        taught = f" (distilled: T {d['temperature']:g}, weight {d['weight']:g})" if d and a.get("qat") is not None else ""
        lines.append(f"| `{tag}`: {summary} | {_pct(acc.get('fp32'))} | {_pct(a.get('ptq'))} | {_pct(a.get('qat'))}{taught} | "
                     f"{versus} | {(a.get('chosen') or '–').upper()}{warn} | {_pct(a.get('float'))} |")
    if not stages:
        lines.append(f"| – | {_pct(acc.get('fp32'))} | – | – | – | – | – |")
    return lines


def verdict_table(manifest: dict) -> list[str]:
    """Each check of each file: what was observed, its interval, the threshold and what the data show."""
    rows = []
    for file, a in sorted(manifest.get("artifacts", {}).items()):
        for v in (a.get("verification") or {}).get("verdicts", []):
            pp = v["method"].startswith("Newcombe")
            unit, fmt = (" pp", "{:.2f}") if pp else ("%", "{:.2f}")
            value = lambda x: fmt.format(100 * x) + unit
            shown = {"pass": "shown within", "fail": "**shown beyond: fails**", "inconclusive": "not distinguishable"}[v["outcome"]]
            if v["outcome"] == "inconclusive":
                shown += (f" (~{v['needed']:,} images would decide)" if v.get("needed") else " (no size decides)")
            p = "–" if v.get("p_value") is None else f"{v['p_value']:.2g}"
            rows.append(f"| `{file}` | {v['name']} | {value(v['observed'])} | [{value(v['low'])}, {value(v['high'])}] | "
                        f"{'≤' if pp else '≥'} {value(v['threshold'])} | {v['n']} | {v['method']} | {p} | {shown} |")
    if not rows:
        return []
    level = next(iter(a["verification"]["confidence"] for a in manifest["artifacts"].values()
                      if (a.get("verification") or {}).get("confidence")), 0.95)
    return ["## Verdicts", "",
            f"Every check compares answers on the same test images. Agreement: Clopper-Pearson interval; an accuracy "
            f"drop: Newcombe's interval for paired proportions, with the exact McNemar p of 'no difference'. All "
            f"intervals at {100 * level:g}% (--confidence). A check fails only when its whole interval lies beyond "
            "its threshold; one that straddles it is not distinguishable with these images, and does not fail.", "",
            "| artifact | check | observed | interval | threshold | n | method | p | verdict |",
            "|---|---|---:|---|---|---:|---|---:|---|", *rows, ""]


def quantization_error_table(manifest: dict) -> list[str]:
    lines = []
    for tag, entry in sorted(manifest.get("stages", {}).get("quantize", {}).items()):
        rows = entry.get("weight_error")
        if not rows:
            continue
        lines += [f"## Weight rounding error: `{tag}`", "",
                  "Per layer, the mean squared error of rounding the weights to the scheme's grid (one step Δ per "
                  "channel, block or tensor), beside the uniform-noise prediction Δ²/12. *Clipped*: weights outside "
                  "the representable range.", "",
                  "| layer | channels | mean Δ | measured MSE | Δ²/12 | ratio | clipped |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            ratio = r["measured_mse"] / r["predicted_mse"] if r["predicted_mse"] else float("nan")
            lines.append(f"| {r['layer']} | {r['channels']} | {r['mean_step']:.3g} | {r['measured_mse']:.3g} | "
                         f"{r['predicted_mse']:.3g} | {ratio:.2f} | {100 * r['clipped_fraction']:.2f}% |")
        lines.append("")
    return lines


def placement_section(manifest: dict) -> list[str]:
    """Which ops ran where, per exported file: XNNPACK delegation, float ops in the .tflite, Core ML's program."""
    arts = manifest.get("artifacts", {})
    if not arts:
        return []
    lines = ["## Op placement", ""]
    rewrites = manifest.get("model", {}).get("rewrites") or []
    if rewrites:
        lines += ["Exact rewrites applied before quantization and export (checked against the original network in "
                  f"float: max relative difference {manifest['model'].get('rewrite_float_diff', 0):.1e}):", ""]
        lines += [f"- {r['from']} → {r['to']} ×{r['count']}: {r['why']}" for r in rewrites] + [""]
    rows = ["| artifact | where the ops run | outside the fast path |", "|---|---|---|"]
    for file, a in sorted(arts.items()):
        backend = REGISTRY.get(a["backend"])
        if backend is not None:  # each backend says where its file's ops run
            where, outside = backend.placement(a)
            rows.append(f"| `{file}` | {where} | {outside} |")
    lines += rows + ["", "Core ML decides on the device which compute unit runs each op; the file fixes only the "
                     "ops, their precision and how each weight is stored.", ""]
    return lines


def export_report(manifest: dict) -> str:
    data, model = manifest.get("dataset", {}), manifest.get("model", {})
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
        "Each scheme is quantized by PTQ, and by QAT where it trains; `--quant-mode auto` exports the better one. "
        "*Distilled*: QAT learned from the fp32 model as teacher (--distill: weight x T² x KL of the "
        "temperature-softened answers, plus (1 - weight) x cross-entropy).",
        "",
        *accuracy_table(manifest),
        "",
        *quantization_error_table(manifest),
        "## Artifacts",
        "",
        "Each artifact ran over the whole test set in its runtime. *Agreement* is top-1 agreement with its PyTorch "
        "reference (`quantized`: the scheme's quantized graph in PyTorch; `fp32`: the fp32 checkpoint; `float`: the "
        "float weights the scheme was made from, which Core ML palettizes). *Drop* is the cost of quantization: "
        "accuracy below fp32 and below PTQ of the same scheme, held to --max-quant-drop. *vs fp32* is the size "
        "ratio against the fp32 artifact. "
        "Core ML cannot run on Linux: there, its stored weights are decompressed and run in PyTorch, which checks "
        "the file's weights but not Core ML's kernels; on macOS `MLModel.predict` runs it.",
        "",
        *export_table(manifest),
        "",
        *verdict_table(manifest),
    ]
    loosened = {f: a["verification"]["loosened"] for f, a in sorted(manifest.get("artifacts", {}).items())
                if (a.get("verification") or {}).get("loosened")}
    if loosened:
        lines += ["", "Checks loosened where a runtime computes differently by design (the agreement floor "
                  "there is the one shown in the manifest; the cost of quantization against fp32 and PTQ still "
                  "holds):", ""] + [f"- `{f}`: {why}{_near_ties(manifest['artifacts'][f]['verification'])}"
                                    for f, why in loosened.items()]
    lines += [""] + keep_float_section(manifest)
    lines += palette.section(manifest)
    lines += [""] + placement_section(manifest)
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


def summary_line(manifest: dict, backends: list[str] | None = None) -> str:
    """One line closing a failed export or verify: how many files verified, which failed verification, which
    backend parts failed to export (their files are not in OUT). `backends` limits it to those selected."""
    chosen = {f: a for f, a in manifest.get("artifacts", {}).items() if backends is None or a["backend"] in backends}
    passed = [f for f, a in chosen.items() if (a.get("verification") or {}).get("passed")]
    failed = [f for f in chosen if f not in passed]
    parts = [name for name, b in manifest.get("backends", {}).items()
             if b.get("status") == "failed" and (backends is None or name.split(":")[0] in backends)]
    line = f"summary: {len(passed)} of {len(chosen)} file(s) verified"
    if failed:
        line += f"; failed verification: {', '.join(failed)}"
    if parts:
        line += f"; export failed: {', '.join(parts)} (see the [x] export lines above)"
    if (manifest.get("verification") or {}).get("parity_passed") is False:
        line += "; the .pte/.tflite layer parity failed"
    return line


def kept_float_in(artifact: dict, kept: list[str]) -> str:
    """What the file itself shows of the layers --keep-float left float, read from its export checks (its backend says)."""
    converter = REGISTRY.get(artifact["backend"])
    return converter.kept_float_note(artifact, tuple(kept)) if converter else "–"


def keep_float_section(manifest: dict) -> list[str]:
    """--keep-float in the shipped files: the layers chosen, how, and per runtime what each file shows."""
    lines = []
    for tag, entry in sorted(manifest.get("stages", {}).get("quantize", {}).items()):
        kf = entry.get("keep_float")
        if not kf:
            continue
        choice = kf.get("choice") or {}
        trace = "; ".join(f"{len(t['kept'])} float: PTQ {100 * t['ptq_accuracy']:.2f}% ({t['drop_pp']:+.2f} pp below fp32)"
                          for t in choice.get("trace", []))
        lines += [f"## Layers kept float: `{tag}` (--keep-float {kf['setting']})", "",
                  f"Kept float: {', '.join(f'`{n}`' for n in kf['layers']) or 'none (full int8 is within the budget)'}. "
                  f"Chosen {choice.get('mode', '?')}" + (f" with a budget of {choice['budget_pp']} pp" if choice.get("budget_pp") is not None else "")
                  + (f"; PTQ trace: {trace}" if trace else "") + ".", ""]
        files = {f: a for f, a in sorted(manifest.get("artifacts", {}).items())
                 if str(a.get("quant", "")).endswith("_mixed") and scheme_tag(a) == tag}
        if files and kf["layers"]:
            lines += ["| file | runtime | what the file shows |", "|---|---|---|"]
            lines += [f"| `{f}` | {a['backend']} | {kept_float_in(a, kf['layers'])} |" for f, a in files.items()]
            lines.append("")
    return lines


def _near_ties(verification: dict) -> str:
    near = verification.get("near_ties")
    if not near:
        return ""
    return (f"; {near['images']} near ties left out of the agreement count (the reference leads by at most "
            f"{near['steps']:g} output steps), {near['changed']} of them changed; overall agreement "
            f"{100 * verification['agreement']:.2f}%")
