"""What quantization costs and what wins it back, on one model and dataset: fp32, PTQ, QAT, QAT with distillation,
and QAT with distillation and layers kept float, each int8 file run in its runtime; and Core ML palettes of 4 bits,
8 bits and per-layer widths (size and accuracy). Every comparison is paired on the same test images.

    python -m benchmarks.recovery --model convnet --dataset fashion-mnist --args "--epochs 3" --root artifacts/recovery

One fp32 model is trained once (ROOT/train). Each variant is a copy of that OUT (ROOT/<variant>/) in which `qat` and
`export` (which verifies every file in its runtime) run with the variant's flags; the palettes of 8 bits and
auto:PP are copies of the PTQ variant's OUT (the fp32 weights; the PTQ OUT's own palette is the 4-bit one) exported
to Core ML only. A variant whose OUT holds a finished run with the same flags, made from the same trained model, is
read, not rerun (`--rerun` forces it), so the table can be built over several sittings. The table (JSON and
Markdown, in --results as recovery_<model>_<dataset>.*) is built from the manifests alone: benchmarks/recovery_table.py.

This module runs the CLI as a subprocess: it sits below the orchestration and does not import it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from benchmarks import recovery_markdown, recovery_table
from benchmarks.models import cli, host, slug
from core import io as atomic

STATE = "recovery.json"  # in each OUT: the flags it ran with, the model it was made from, and the stage exit codes
COPY_IGNORE = shutil.ignore_patterns(".lock", "logs", "stale", "bench", "parity", "study", STATE)


def variant_flags(keep_float: str, nbits_auto: str) -> dict[str, tuple[list[str], list[str], str]]:
    """{variant: (flags of qat and export, flags of export alone, the OUT it is copied from)}, in run order."""
    return {
        "ptq": (["--quant-mode", "ptq"], [], "train"),
        "qat": (["--quant-mode", "qat"], [], "train"),
        "qat_distill": (["--quant-mode", "qat", "--distill"], [], "train"),
        "qat_distill_kf": (["--quant-mode", "qat", "--distill", "--keep-float", keep_float], [], "train"),
        "pal8": (["--quant-mode", "ptq"], ["--backends", "coreml", "--nbits", "8"], "ptq"),
        "palauto": (["--quant-mode", "ptq"], ["--backends", "coreml", "--nbits", nbits_auto], "ptq"),
    }


def _state(out: Path) -> dict:
    return json.loads((out / STATE).read_text()) if (out / STATE).exists() else {}


def made_from(base: Path) -> str | None:
    """Which trained model an OUT holds: its run id and train key (None before `train` finished)."""
    manifest = base / "manifest.json"
    if not manifest.exists():
        return None
    m = json.loads(manifest.read_text())
    train = (m.get("stages") or {}).get("train") or {}
    return f"{m.get('run_id')}/{train.get('key')}" if train.get("status") == "done" else None


def _finished(out: Path, flags: list[str], origin: str | None) -> bool:
    state = _state(out)
    return bool(state.get("finished") and state.get("flags") == flags and state.get("made_from") == origin)


def _record(out: Path, flags: list[str], origin: str | None, codes: dict, seconds: dict) -> None:
    atomic.write_text(out / STATE, json.dumps({"flags": flags, "made_from": origin, "codes": codes,
                                               "seconds": {k: round(v, 1) for k, v in seconds.items()},
                                               "finished": True,
                                               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))


def train(root: Path, base: list[str], rerun: bool) -> int:
    out = root / "train"
    if not rerun and _finished(out, base, None) and made_from(out):
        print(f"recovery: train: finished run found in {out}; reused (--rerun to run it again)")
        return _state(out)["codes"]["train"]
    out.mkdir(parents=True, exist_ok=True)
    code, seconds = cli("train", *base, "--out", str(out), *(["--force"] if rerun else []))
    _record(out, base, None, {"train": code}, {"train": seconds})
    return code


def run_variant(root: Path, name: str, base: list[str], flags: list[str], export_only: list[str], source: str,
                rerun: bool) -> None:
    """Copy the source OUT (unless this variant already ran from it with these flags), then `qat` and `export`."""
    out, origin = root / name, made_from(root / source)
    if not rerun and _finished(out, [*base, *flags, *export_only], origin):
        print(f"recovery: {name}: finished run found in {out}; reused (--rerun to run it again)")
        return
    if out.exists():  # made from another model or other flags: kept aside, never deleted
        atomic.move_aside([out], root / "stale" / time.strftime("%Y%m%dT%H%M%S"))
    atomic.atomic_write(out, lambda tmp: shutil.copytree(root / source, tmp, ignore=COPY_IGNORE))
    codes, seconds = {}, {}
    for command in ("qat", "export"):
        extra = export_only if command == "export" else []
        codes[command], seconds[command] = cli(command, *base, *flags, *extra, "--out", str(out))
        if codes[command] and command == "qat":  # export exits 1 when a file fails: the table says which
            break
    _record(out, [*base, *flags, *export_only], origin, codes, seconds)


def manifests(root: Path, names) -> dict:
    return {n: json.loads((root / n / "manifest.json").read_text()) for n in names
            if (root / n / "manifest.json").exists()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--args", default="", help="flags for every stage, e.g. '--image-size 64 --epochs 3'")
    parser.add_argument("--root", default="artifacts/recovery", help="ROOT/<model slug>_<dataset>/<variant>/ are the OUTs")
    parser.add_argument("--results", default="benchmarks/results", help="where recovery_<model>_<dataset>.json/.md go")
    parser.add_argument("--variants", default="ptq,qat,qat_distill,qat_distill_kf,pal8,palauto",
                        help="which variants to run (fp32 and the 4-bit palette come with ptq)")
    parser.add_argument("--keep-float", default="auto:0.2", help="the keep-float variant's --keep-float")
    parser.add_argument("--nbits-auto", default="auto:0.5", help="the per-layer palette variant's --nbits")
    parser.add_argument("--allowance", type=float, default=0.5,
                        help="percentage points: 'within PP of fp32' is tested against this (paired, interval)")
    parser.add_argument("--rerun", action="store_true", help="run again even where a finished run exists")
    parser.add_argument("--collect-only", action="store_true", help="run nothing; build the table from ROOT")
    opts = parser.parse_args(argv)
    every = variant_flags(opts.keep_float, opts.nbits_auto)
    chosen = [v.strip() for v in opts.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in every]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(every)}")
    missing = sorted({every[v][2] for v in chosen} - {"train", *chosen})
    if missing:
        parser.error(f"--variants: {', '.join(v for v in chosen if every[v][2] in missing)} are copies of "
                     f"{', '.join(missing)}: add it to --variants")
    name = f"{slug(opts.model)}_{opts.dataset}"
    root = Path(opts.root) / name
    base = ["--model", opts.model, "--dataset", opts.dataset, *shlex.split(opts.args)]
    failures = []
    if not opts.collect_only:
        root.mkdir(parents=True, exist_ok=True)
        code = train(root, base, opts.rerun)
        if code:
            failures.append(f"train exited {code} (see {root / 'train'}/report.md)")
        else:
            for v in chosen:
                flags, export_only, source = every[v]
                run_variant(root, v, base, flags, export_only, source, opts.rerun)
    stages = {n: _state(root / n) for n in ["train", *chosen] if _state(root / n)}
    # export exits 1 when any file of its OUT fails verify, files this table does not show included (the QAT
    # variants' own 4-bit palettes): the table marks each of its files; a stage that stopped is a failure
    failures += [f"{n}: {stage} exited {c}" for n, s in stages.items() for stage, c in s["codes"].items()
                 if c and not (stage == "export" and c == 1)]
    table = recovery_table.build(manifests(root, chosen), opts.allowance)
    header = {"command": "python -m benchmarks.recovery " + " ".join(shlex.quote(a) for a in
                                                                     (sys.argv[1:] if argv is None else argv)),
              "model": opts.model, "dataset": opts.dataset, "args": opts.args, "host": host(), "root": str(root),
              "variant_flags": {"fp32": [], **{v: every[v][0] + every[v][1] for v in chosen}},
              "stages": {n: {"codes": s["codes"], "seconds": s["seconds"]} for n, s in stages.items()},
              "failures": failures}
    results = Path(opts.results)
    results.mkdir(parents=True, exist_ok=True)
    atomic.write_text(results / f"recovery_{name}.json", json.dumps({**header, **table}, indent=2))
    atomic.write_text(results / f"recovery_{name}.md", recovery_markdown.markdown(table, header))
    print(f"recovery: wrote {results / f'recovery_{name}.json'} and .md")
    return 1 if failures or table["unpaired"] else 0


if __name__ == "__main__":
    sys.exit(main())
