"""The Markdown of benchmarks/recovery.py's table (benchmarks/recovery_table.py builds it from the manifests)."""

from __future__ import annotations

from benchmarks.recovery_table import LABELS, LEVELS
from core import statistics


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _pp(c: dict) -> str:
    return f"{100 * c['diff']:+.2f} pp [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]"


def _file_cell(f: dict) -> str:
    if not f.get("file"):
        return f"– ({f.get('status')})"
    mark = "✓" if f.get("passed") else "✗"
    mb = f"{f['bytes'] / 1e6:.2f} MB" if f.get("bytes") else "? MB"
    return f"{_pct(f.get('accuracy'))} {mark} ({mb})"


def _within(w: dict | None) -> str:
    if not w:
        return ""
    words = {"pass": "shown at most", "fail": "shown more than", "inconclusive": "not distinguishable from"}
    return f"{words[w['outcome']]} {100 * w['threshold']:g} pp below fp32"


def markdown(table: dict, header: dict) -> str:
    n = table["images"]
    lines = [f"# Winning back what quantization costs: {header['model']} on {header['dataset']}", "",
             f"Made by `{header['command']}` on {header['host']}; flags for every stage `{header['args']}`; "
             f"n = {n} test images, the same images for every variant.", "",
             "Each variant is its own OUT, made from one trained fp32 model (`train` once, the OUT copied, then "
             "`qat` and `export` with the variant's flags): " + "; ".join(
                 f"{LABELS.get(v, v)}: `{' '.join(f) or '(the fp32 files of the PTQ OUT)'}`"
                 for v, f in header["variant_flags"].items()) + ".", ""]
    if table["unpaired"]:
        lines += [f"**No paired comparison**: {table['unpaired']}.", ""]
    lines += ["## Accuracy per variant (%), each file run in its runtime", "",
              "File cells: accuracy, ✓ verified against its PyTorch reference / ✗ not, size. The PyTorch column is "
              "the quantized program the files were made from (fp32: the trained model). Core ML cannot run on "
              "Linux: its files are verified with the weights read back from the file (see the method in the JSON).",
              "", "| variant | PyTorch | " + " | ".join(label for _, label in LEVELS[1:]) + " | kept float | QAT steps |",
              "|---|---|---|---|---|---|---|"]
    for r in table["variants"]:
        kept = ", ".join(r["keep_float"]) if r.get("keep_float") else ("none" if r["variant"] != "fp32" else "")
        lines.append(f"| {r['label']} | {_pct(r['pytorch'])} | "
                     + " | ".join(_file_cell(r["files"][b]) for b, _ in LEVELS[1:])
                     + f" | {kept} | {r.get('qat_steps') if r.get('qat_steps') is not None else ''} |")
    lines += ["", "## Paired comparisons (first minus second, same n images)", "",
              f"Difference of accuracies with Newcombe's {100 * statistics.CONFIDENCE:g}% interval; exact McNemar p "
              "on the images where exactly one is right. \"beyond noise\" only when the interval excludes 0.", "",
              "| first | second | level | n | first % | second % | first − second | only first / only second | "
              "McNemar p | verdict | vs fp32 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    levels = dict(LEVELS)
    for c in table["comparisons"]:
        lines.append(f"| {LABELS[c['first']]} | {LABELS[c['second']]} | {levels[c['level']]} | {c['n']} | "
                     f"{_pct(c['first_acc'])} | {_pct(c['second_acc'])} | {_pp(c)} | {c['only_first']} / "
                     f"{c['only_second']} | {c['p']:.3g} | {c['verdict']} | {_within(c['within'])} |")
    if not table["comparisons"]:
        lines.append("| – | – | – | – | – | – | – | – | – | no pair of variants with answers on the same images | – |")
    lines += ["", "## Does --distill win back accuracy? What the paired statistics say", ""]
    for s in table["distill"]:
        against = LABELS[s["against"]]
        if not s["levels"]:
            lines.append(f"- QAT+distill vs {against}: not compared (a variant is missing).")
            continue
        named = lambda ls: ", ".join(levels[x] for x in ls) or "none"  # noqa: E731
        if s["against"] == "fp32":
            lines.append(f"- QAT+distill at most {s['allowance_pp']:g} pp below fp32, at {s['levels']} level(s) on "
                         f"n = {n}: shown at {named(s['within'])}; shown more than that below at {named(s['beyond'])}; "
                         f"not distinguishable at {named(s['undecided'])}.")
            continue
        lines.append(f"- QAT+distill vs {against}, at {s['levels']} level(s) on n = {n}: better beyond noise at "
                     f"{named(s['better'])}; worse beyond noise at {named(s['worse'])}; not distinguishable at "
                     f"{named(s['undecided'])}.")
    lines += ["", "These lines state the statistics only; the decision (e.g. whether --distill should be on by default) "
              "weighs them with the other networks' tables.", ""]
    lines += ["## Core ML palettes (k-means LUTs of the fp32 weights)", "",
              "| palette | file | MB | share of pal8 | accuracy % | verified | agreement with its reference | "
              "widths (bits: layers) | palette − fp32 (PyTorch), paired |", "|---|---|---|---|---|---|---|---|---|"]
    for p in table["palettes"]:
        if not p.get("file"):
            why = f"{p['status']}: {p['reason']}" if p.get("reason") else p["status"]
            lines.append(f"| {p['palette']} | – | – | – | – | {why} | – | – | – |")
            continue
        share = "–" if p["share_of_pal8"] is None else f"{100 * p['share_of_pal8']:.0f}%"
        widths = ", ".join(f"{b}: {k}" for b, k in p["widths"].items()) or f"{p['nbits']} everywhere"
        v = p["vs_fp32"]
        vs = "–" if not v else (f"{-100 * v['observed']:+.2f} pp [{-100 * v['high']:+.2f}, {-100 * v['low']:+.2f}]"
                                f", {_within(v)}")
        lines.append(f"| {p['palette']} | `{p['file']}` | {p['bytes'] / 1e6:.2f} | {share} | {_pct(p['accuracy'])} | "
                     f"{'yes' if p['passed'] else 'no: ' + '; '.join(p['failures'])[:160]} | "
                     f"{_pct(p['agreement'])}% vs {p['reference']} | {widths} | {vs} |")
    lines += ["", "## Files of the first table that did not verify (✗), and why", ""]
    causes = [f"- {r['label']}, `{f['file']}`: " + " ".join((f["failures"] or ["not verified"])[0].split())[:240]
              for r in table["variants"] for f in r["files"].values() if f.get("file") and not f.get("passed")]
    lines += causes or ["None."]
    lines += ["", "## Stages", ""]
    for name, s in header.get("stages", {}).items():
        lines.append(f"- {name}: " + ", ".join(f"{k} exit {c} ({s['seconds'].get(k, 0):.0f} s)"
                                               for k, c in s["codes"].items()))
    lines += ["", "`export` exits 1 when any file of its OUT did not verify, files this table does not show included "
              "(each QAT variant also makes a 4-bit palette of its QAT weights); the tables above mark each of theirs."]
    failures = header.get("failures") or []
    lines += ["", "Failures:" if failures else "No stage failed.", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"
