"""Models x schemes x runtimes, from one run: train, quantize, export, verify and (optionally) bench each
model through the `mobile-pipeline` CLI, then gather one table from the manifests and bench results.

    python -m benchmarks.models --models convnet,torchvision:mobilenet_v2 --dataset fashion-mnist \
        --schemes "int8;--weight-granularity per_tensor" --args "--image-size 64 --limit-train 10000" --bench

Each model gets its own OUT (ROOT/<model slug>/). Every scheme (one `;`-separated set of flags each;
`int8` is the default recipe) is quantized and exported into that OUT. The table lists, per artifact:
runtime, scheme, size, fp32 / PTQ / QAT / artifact accuracy, agreement with its reference, the ops
outside each runtime's fast path, export wall time and, with --bench, host batch-1 latency. Written to
ROOT/models.json and ROOT/models.md. The CLI runs as a subprocess: this module sits below the
orchestration and does not import it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from converters import REGISTRY
from core import io as atomic


def slug(model: str) -> str:
    return model.replace("torchvision:", "").replace(":", "_").replace("/", "_").replace(".py", "")


def cli(command: str, *args: str) -> tuple[int, float]:
    start = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "pipeline.cli", command, *args])
    return code, time.perf_counter() - start


def outside_fast_path(artifact: dict) -> str:
    """What of the file runs outside its runtime's fast path, as its backend says (`Converter.outside_ops`)."""
    converter = REGISTRY.get(artifact["backend"])
    ops = converter.outside_ops(artifact) if converter else {}
    if isinstance(ops, str):
        return ops
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(ops.items())) or "none"


def latency_rows(out: Path) -> dict:
    results = out / "bench" / "results.json"
    if not results.exists():
        return {}
    rows = json.loads(results.read_text()).get("rows", [])
    found = {}
    for row in rows:
        single = [m for m in row.get("latency") or [] if m.get("threads") == 1]
        if single and single[0].get("p50_ms") is not None:
            found[row["name"]] = single[0]["p50_ms"]
    return found


def table_rows(model: str, out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    acc, latency = manifest.get("accuracy", {}), latency_rows(out)
    rows = []
    for file, a in sorted(manifest.get("artifacts", {}).items()):
        scheme = a.get("scheme") or {}
        tag = scheme.get("tag") or scheme.get("weights_of") or "int8"
        per_scheme = acc.get(tag, {}) if a["quant"] not in ("fp32", "fp16") else {}
        v = a.get("verification", {})
        rows.append({
            "model": model, "file": file, "runtime": a["backend"], "quant": a["quant"],
            "scheme": scheme.get("summary", a["quant"]) + (f" ({per_scheme['chosen'].upper()} exported)"
                                                            if per_scheme.get("chosen") else ""),
            "bytes": a.get("bytes"),
            "fp32": acc.get("fp32"), "ptq": per_scheme.get("ptq"), "qat": per_scheme.get("qat"),
            "accuracy": v.get("accuracy"), "agreement": v.get("agreement"), "reference": a.get("reference"),
            "min_agreement": v.get("min_agreement"), "loosened": v.get("loosened"), "passed": v.get("passed"),
            "outside_fast_path": outside_fast_path(a),
            "export_s": a.get("export_seconds"), "p50_ms_1thread": latency.get(file),
        })
    if "pytorch_fp32" in latency:
        rows.append({"model": model, "file": "PyTorch eager fp32", "runtime": "pytorch", "quant": "fp32",
                     "scheme": "fp32", "bytes": None, "fp32": acc.get("fp32"), "ptq": None, "qat": None,
                     "accuracy": acc.get("fp32"), "agreement": None, "reference": None, "passed": None,
                     "outside_fast_path": "", "export_s": None, "p50_ms_1thread": latency["pytorch_fp32"]})
    return rows


def host() -> str:
    return f"{platform.machine()}, {platform.processor() or ''}".strip(", ")


def fmt(value, pattern="{:.4f}") -> str:
    return "–" if value is None else pattern.format(value)


def markdown(rows: list[dict], header: dict) -> str:
    lines = ["# Models, schemes and runtimes", "",
             f"Dataset `{header['dataset']}`; flags `{header['args']}`; host: {header['host']}. "
             f"{header.get('provenance', 'One run')}; "
             "accuracy on the whole test set; latency: host batch 1, one thread, p50 (only with --bench).", "",
             "| model | file | runtime | scheme | MB | fp32 | PTQ | QAT | file acc. | agreement | outside the fast path "
             "| export s | p50 ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mb = fmt(r["bytes"] / 1e6 if r["bytes"] else None, "{:.2f}")
        agree = "–" if r["agreement"] is None else f"{r['agreement']:.4f} vs {r['reference']}"
        if r.get("loosened"):  # held to a lower floor, and why: verify's own words, in the OUT's report.md
            agree += f" (floor {r['min_agreement']:.4f}¹)"
        lines.append(f"| {r['model']} | `{r['file']}` | {r['runtime']} | {r['scheme']} | {mb} | {fmt(r['fp32'])} | "
                     f"{fmt(r['ptq'])} | {fmt(r['qat'])} | {fmt(r['accuracy'])} | {agree} | {r['outside_fast_path']} | "
                     f"{fmt(r['export_s'], '{:.1f}')} | {fmt(r['p50_ms_1thread'], '{:.3f}')} |")
    if any(r.get("loosened") for r in rows):
        lines += ["", "¹ Held to a lower agreement floor than --min-agreement; why, per file: "
                  + "; ".join(f"`{r['file']}`: {r['loosened']}" for r in rows if r.get("loosened"))]
    lines += ["", "Wall time per model and stage (s):", ""]
    for model, timings in header["timings"].items():
        lines.append(f"- {model}: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    failures = header.get("failures") or []
    lines += ["", "Failures:" if failures else "No stage failed.", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="convnet", help="comma-separated model sources")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--schemes", default="int8", help="';'-separated flag sets, one per scheme (int8 = default)")
    parser.add_argument("--args", default="", help="flags for every command, e.g. '--image-size 64 --epochs 2'")
    parser.add_argument("--root", default="artifacts/models", help="one OUT per model under this folder")
    parser.add_argument("--bench", action="store_true", help="also run the host benchmark over each OUT")
    parser.add_argument("--collect", default="", metavar="OUT[,OUT...]",
                        help="run nothing: gather the table from these finished OUTs (one model each, trained and "
                             "exported by separate commands), as they are")
    opts = parser.parse_args(argv)
    root = Path(opts.root)
    root.mkdir(parents=True, exist_ok=True)
    rows, timings, failures = [], {}, []
    if opts.collect:
        return collect([Path(o) for o in opts.collect.split(",") if o], root)
    for model in [m for m in opts.models.split(",") if m]:
        out = root / slug(model)
        base = ["--model", model, "--dataset", opts.dataset, "--out", str(out), *shlex.split(opts.args)]
        t = timings.setdefault(model, {})
        code, t["train"] = cli("train", *base)
        if code:
            failures.append(f"{model}: train exited {code}")
            continue
        for scheme in [s.strip() for s in opts.schemes.split(";") if s.strip()]:
            flags = [] if scheme == "int8" else shlex.split(scheme)
            name = scheme.replace("--", "").replace(" ", "=") if flags else "int8"
            code, t[f"quantize {name}"] = cli("qat", *base, *flags)
            if code:
                failures.append(f"{model} [{scheme}]: qat exited {code}")
                continue
            code, t[f"export {name}"] = cli("export", *base, *flags)
            if code:
                failures.append(f"{model} [{scheme}]: export exited {code} (see {out}/report.md)")
        if opts.bench:
            code, t["bench"] = cli("bench", *base)
            if code:
                failures.append(f"{model}: bench exited {code}")
        if (out / "manifest.json").exists():
            rows += table_rows(model, out)
    header = {"dataset": opts.dataset, "args": opts.args, "host": host(),
              "timings": timings, "failures": failures}
    atomic.write_text(root / "models.json", json.dumps({**header, "rows": rows}, indent=2))
    atomic.write_text(root / "models.md", markdown(rows, header))
    print(f"wrote {root / 'models.json'} and {root / 'models.md'}")
    return 1 if failures else 0


def collect(outs: list[Path], root: Path) -> int:
    """The table of OUTs made by separate runs: each OUT's own settings, export times and (if benched) latency."""
    rows, timings, settings, failures, datasets = [], {}, {}, [], set()
    for out in outs:
        if not (out / "manifest.json").exists():
            print(f"{out}: no manifest.json; run `export` for it first", file=sys.stderr)
            return 2
        manifest = json.loads((out / "manifest.json").read_text())
        config, stages = manifest.get("config", {}), manifest.get("stages", {})
        model = config.get("model", slug(str(out)))
        datasets.add(config.get("dataset", "?"))
        settings[model] = {"image_size": config.get("image_size"), "limit_train": config.get("limit_train"),
                           "epochs": (stages.get("train") or {}).get("epochs_done"),
                           "qat_max_steps": config.get("qat_max_steps"), "limit_test": config.get("limit_test")}
        failures += [f"{model}: {name} {b.get('status')}: {b.get('reason')}" for name, b in manifest.get("backends", {}).items()
                     if b.get("status") != "ok"]
        failures += [f"{model}: {file} did not pass verify: {'; '.join(a['verification'].get('failures') or [])}"
                     for file, a in manifest.get("artifacts", {}).items() if not a.get("verification", {}).get("passed")]
        timings[model] = {"train": (stages.get("train") or {}).get("wall_time_s") or 0.0,
                          **{f"quantize {tag}": e.get("wall_time_s") or 0.0 for tag, e in (stages.get("quantize") or {}).items()}}
        rows += table_rows(model, out)
    header = {"dataset": ", ".join(sorted(datasets)),
              "args": "; ".join(f"{m}: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in s.items()) for m, s in settings.items()),
              "host": host(), "provenance": "Separate runs, one per model, collected",
              "timings": timings, "failures": failures, "collected_from": [str(o) for o in outs]}
    atomic.write_text(root / "models.json", json.dumps({**header, "rows": rows}, indent=2))
    atomic.write_text(root / "models.md", markdown(rows, header))
    print(f"wrote {root / 'models.json'} and {root / 'models.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
