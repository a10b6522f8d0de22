"""Device ↔ host agreement in the report: did the phone compute what the host computed, and if not, why.

The demo apps compare each model's logits on the bundled images with golden_outputs.json (the host runtime's
logits on the same uint8 pixels, written by `bundle`) and record `host_agreement` per result row. A file is
flagged when its top-1 agreement is below 100% or its largest |Δlogit| is above its tolerance (one output step
for an int8 output, 1e-3 of the largest logit for a float one). The likely cause comes from comparing files of
one run: a float file runs the same input through float kernels whose differences across CPUs stay far below
its tolerance, so when the fp32 file disagrees too, the input differed (preprocessing: resize, normalization,
channel order, layout); when only the quantized file disagrees, its int8 kernels computed differently
(numerics).
"""

from __future__ import annotations

DASH = "–"
PREPROCESSING = ("preprocessing: the fp32 file disagrees with the host too, so the app's input differs from the "
                 "host's (resize, normalization, channel order or layout)")
PREPROCESSING_SELF = ("preprocessing: a float file differs across CPUs far less than its tolerance, so the app's "
                      "input differs from the host's (resize, normalization, channel order or layout)")
NUMERICS = ("numerics: the fp32 file agrees with the host, so the input is the same and this file's quantized "
            "kernels compute differently on the device (rounding, requantization, a different runtime version)")
UNDETERMINED = "undetermined: no fp32 file with agreement in this run to tell preprocessing from numerics"


def is_float(row: dict) -> bool:
    quant = row.get("quant") or ""
    return quant in ("fp32", "fp16") if quant else "fp32" in row["model"]


def disagreement(agreement: dict | None) -> list[str]:
    """What is wrong with one row's host agreement (empty: nothing, or nothing was checked)."""
    if not agreement or not agreement.get("available"):
        return []
    problems = []
    top1 = agreement.get("top1_agreement")
    if top1 is None or top1 < 1.0:
        problems.append(f"top-1 agreement {pct(top1)} < 100%")
    diff, tol = agreement.get("max_abs_logit_diff"), agreement.get("tolerance")
    if diff is None and agreement.get("logits_compared", True):
        problems.append("max |Δlogit| not finite (NaN or infinity on the device)")
    elif diff is not None and tol is not None and diff > tol:
        problems.append(f"max |Δlogit| {diff:.4g} > tolerance {tol:.4g}")
    return problems


def pct(value) -> str:
    return DASH if value is None else f"{100 * value:.2f}%"


def assess(doc: dict) -> list[dict]:
    """Per result row of one device results file: agreement, what is wrong, and the likely cause."""
    rows = [r for r in doc["results"] if r["status"] == "ok"]
    problems = {id(r): disagreement(r.get("host_agreement")) for r in rows}
    checked = [r for r in rows if (r.get("host_agreement") or {}).get("available")]

    def float_verdict(runtime: str | None) -> bool | None:
        """True if a float file (of `runtime`, else any) disagrees, False if the float files agree, None if none."""
        floats = [r for r in checked if is_float(r) and (runtime is None or r["runtime"] == runtime)]
        return any(problems[id(r)] for r in floats) if floats else None

    out = []
    for r in rows:
        issues, cause = problems[id(r)], None
        if issues:
            if is_float(r):
                cause = PREPROCESSING_SELF
            else:
                verdict = float_verdict(r["runtime"])
                verdict = float_verdict(None) if verdict is None else verdict
                cause = UNDETERMINED if verdict is None else PREPROCESSING if verdict else NUMERICS
        out.append({"row": r, "agreement": r.get("host_agreement"), "problems": issues, "cause": cause})
    return out


def accelerator_text(row: dict) -> str:
    acc = row.get("accelerator")
    if not acc:
        return f"{row['compute_units']} requested" if row.get("compute_units") else DASH
    used = acc.get("used") or "not reported"
    backends = f"; backends {', '.join(acc['backends'])}" if acc.get("backends") else ""
    return f"asked {acc['requested']}, ran {used}{backends}"


def agreement_cell(agreement: dict | None) -> tuple[str, str]:
    if not agreement:
        return DASH, "not recorded (an app without golden-output checks)"
    if not agreement.get("available"):
        return DASH, f"not checked: {agreement.get('reason', 'no golden outputs')}"
    diff, tol = agreement.get("max_abs_logit_diff"), agreement.get("tolerance")
    shown = "no logits" if diff is None and not agreement.get("logits_compared", True) else (
        "not finite" if diff is None else f"{diff:.4g}")
    return f"{pct(agreement.get('top1_agreement'))} of {agreement.get('images')}", f"{shown} (tolerance {tol:.4g})"


def section(devices: dict, label) -> list[str]:
    """Markdown: per device file and model, latency beside agreement with the host and what ran it."""
    rows, flags = [], []
    for entry in devices["valid"]:
        doc = entry["data"]
        for a in assess(doc):
            r = a["row"]
            top1, diff = agreement_cell(a["agreement"])
            verdict = "**FLAGGED**: " + "; ".join(a["problems"]).replace("|", "\\|") if a["problems"] else (
                "agrees" if (a["agreement"] or {}).get("available") else DASH)
            p50 = r["metrics"].get("p50_inference_latency(ms)")
            rows.append(f"| {doc['platform']} | {label(doc)} | `{r['model']}` | {r['runtime']} | "
                        f"{accelerator_text(r)} | {DASH if p50 is None else f'{p50:.3f}'} | {top1} | {diff} | {verdict} |")
            if a["problems"]:
                flags.append(f"- `{r['model']}` on {label(doc)} (`{entry['file']}`): {'; '.join(a['problems'])}. "
                             f"Likely cause: {a['cause']}.")
    if not rows:
        return []
    return ["Each app compares its logits on the bundled images with `golden_outputs.json`, the host runtime's "
            "logits on the same pixels (written by `bundle`). A file is flagged below 100% top-1 agreement or above "
            "its tolerance (one output step for an int8 output; 1e-3 of the largest logit for a float one).", "",
            "| platform | device | model | runtime | what ran it | p50 (ms) | top-1 agreement with host | "
            "max \\|Δlogit\\| | verdict |", "|---|---|---|---|---|---:|---:|---:|---|", *rows, ""] + (
        ["Flagged files:", "", *flags, ""] if flags else [])


def console_lines(devices: dict, label) -> list[str]:
    """One line per device file's model that disagrees with the host, with its likely cause."""
    lines = []
    for entry in devices["valid"]:
        for a in assess(entry["data"]):
            if a["problems"]:
                lines.append(f"[x] device: {entry['data']['platform']} {label(entry['data'])}: {a['row']['model']}: "
                             f"{'; '.join(a['problems'])}; likely {a['cause'].split(':')[0]}")
    return lines
