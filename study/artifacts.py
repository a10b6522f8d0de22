"""Export a variant of the model with the pipeline's converters, verify every file, and measure it.

A *variant* is one model in the forms the converters take (an `ExportSource`): the pruned
network, the mixed-precision QAT programs, ... Its files go to OUT/study/<variant>/. Each is run
in its real runtime on the whole test set (converters.verify.run_artifact) and held to the same
thresholds as `verify`. Sizes are raw and zip-compressed; latencies are batch-1, timed in this
process with the host benchmark's helper, interleaved with the baseline they are compared with.
"""

from __future__ import annotations

import dataclasses
import io
import statistics
import zipfile
from pathlib import Path

import numpy as np

from core import io as atomic
from core import manifest as mf
from core.console import say, say_brief
from core.statistics import unpack as unpack_answers
from core.workspace import ExportSource

from converters import REGISTRY, ExportOptions
from converters.export import PARTS, export_part, reference_logits, verify_file
from converters.verify import Thresholds

from . import quant
from .context import Study

LATENCY_ROUNDS = 3
LATENCY_INPUTS = 64


def variant_source(base: ExportSource, **changes) -> ExportSource:
    return dataclasses.replace(base, **changes)


def export_variant(study: Study, name: str, source: ExportSource, backends: list[str] | None = None,
                   float_layers: tuple[str, ...] = (), parts: tuple[str, ...] = PARTS) -> tuple[list[dict], dict[str, str]]:
    """Export with each converter into OUT/study/<name>/: the float baseline ("fp32") and `source.scheme`'s files
    ("scheme"), as `export` does (converters/export.py). A failing part is recorded under "backend:part" and the
    others go on; the files it made are kept."""
    import converters

    out_dir = study.root / name
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = [c for c in converters.select(study.cfg.backends) if backends is None or c.name in backends]
    rows, failures = [], {}
    options = quant.export_options(study.cfg, float_layers)
    for conv, part in [(c, p) for c in chosen for p in parts]:
        key = f"{conv.name}:{part if part == 'fp32' else source.scheme.tag}"
        result = export_part(conv, part, source, out_dir, options)
        if not result.ok:
            failures[key] = "; ".join(result.failures)
            say_brief(f"[x] study: {name}: {key} export FAILED: {failures[key]}")
        for a in result.made:
            rows.append(artifact_row(study, out_dir / a.file, a.to_dict()))
            print(f"[✓] study: exported {name}/{a.file}")
    return rows, failures


def artifact_row(study: Study, path: Path, artifact: dict) -> dict:
    return {**artifact, "file": study.rel(path), "path": path, **sizes(path)}


def derived_row(study: Study, path: Path, like: dict, quant: str, checks: dict) -> dict:
    """A file the study made from another one (e.g. a Core ML package compressed further): same I/O, new weights."""
    kept = {k: like[k] for k in ("backend", "format", "reference", "input", "output")}
    return artifact_row(study, path, {**kept, "quant": quant, "checks": checks, "scheme": None})


def sizes(path: Path) -> dict:
    """Size on disk, and zip-compressed (DEFLATE): what a download or an app bundle costs."""
    path = Path(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            archive.write(f, f.relative_to(path.parent))
    return {"bytes": atomic.size_bytes(path), "zip_bytes": len(buffer.getvalue())}


def verify_rows(study: Study, rows: list[dict], source: ExportSource, baselines: dict[str, float | None],
                measurement: bool = False) -> bool:
    """Run every file in its runtime on the test set; hold it to its PyTorch reference and to `baselines`.

    `measurement`: the files probe a limit (2-bit weights, pruning without fine-tuning); falling outside the
    thresholds is their result, reported as such, not a failed verification.
    """
    thresholds = Thresholds.from_config(study.cfg)  # the same thresholds as `verify`, --rounding-agreement included
    logits_of: dict[tuple, np.ndarray] = {}
    ok = True
    for row in rows:
        reference = reference_logits(source, row, study.data, logits_of)
        result, logits = verify_file(row["path"], row, source, study.data, reference, thresholds, baselines)
        if logits is None:
            row["verification"], row["accuracy"] = result, None
            say(f"[x] study: verify {row['file']}: {result['failures'][0]}")
            ok = False
            continue
        row["verification"] = result
        method = result["method"]
        row["accuracy"] = result["accuracy"]
        row["how"] = how_it_ran(row)
        mark = "✓" if result["passed"] else "·" if measurement else "x"
        print(f"[{mark}] study: verify {row['file']}: accuracy {result['accuracy']:.4f}, agreement with "
              f"{row['reference']} {result['agreement']:.4f} ({method})")
        for failure in result["failures"]:
            say(f"    {'outside the thresholds' if measurement else 'FAILED'}: {row['file']}: {failure}")
        ok &= result["passed"] or measurement
    return ok


def how_it_ran(row: dict) -> str:
    """runtime: the file ran in its own runtime; readback: its weights, read back, ran in PyTorch; simulated: a
    file checked to hold the int8 graph's numbers, which then ran in PyTorch (its backend says which)."""
    return REGISTRY[row["backend"]].how_it_runs(row)


def timeable(row: dict) -> bool:
    """Latency means something only for a file that runs in its own runtime here."""
    return row.get("how", how_it_ran(row)) == "runtime" and row.get("verification", {}).get("method") is not None


def latencies(study: Study, rows: dict[str, dict], source: ExportSource) -> dict[str, dict]:
    """Batch-1 latency of each file, in rounds that interleave them, so a busy host slows all alike.

    Returns per key the median over rounds of each round's p50 and mean (ms); compare them only as ratios.
    """
    from benchmarks.measure import time_batch1

    cfg = study.cfg
    inputs = study.data.normalize(study.data.test_images[:LATENCY_INPUTS]).numpy()
    runners = {key: REGISTRY[row["backend"]].runner(row["path"], row, source, 1)[0] for key, row in rows.items()}
    rounds: dict[str, list[dict]] = {key: [] for key in rows}
    for _ in range(LATENCY_ROUNDS):
        for key, run in runners.items():
            rounds[key].append(time_batch1(run, inputs, cfg.bench_warmup, cfg.bench_iterations))
    return {key: {"p50_ms": statistics.median(r["p50_ms"] for r in timings),
                  "mean_ms": statistics.median(r["mean_ms"] for r in timings),
                  "rounds": LATENCY_ROUNDS, "iterations": cfg.bench_iterations, "threads": 1}
            for key, timings in rounds.items()}


def public(row: dict) -> dict:
    """A row as results.json keeps it (no Path objects, no bulky per-op tables)."""
    keep = ("file", "backend", "quant", "format", "reference", "bytes", "zip_bytes", "accuracy", "how")
    out = {k: row.get(k) for k in keep}
    v = row.get("verification") or {}
    out["verification"] = {"passed": bool(v.get("passed")), "agreement": v.get("agreement"),
                           "method": v.get("method"), "failures": v.get("failures", [])}
    checks = row.get("checks") or {}
    out["checks"] = {k: checks[k] for k in ("float_layers", "float_compute_ops", "int8_compute_ops", "compute_ops",
                                            "weight_ops", "dense", "fully_int8", "fully_delegated") if k in checks}
    return out


def _reusable(study: Study, artifact: dict) -> bool:
    """An artifact `export` wrote for OUT's model, that passed `verify`, and that this run's settings would write
    the same way."""
    if not artifact.get("verification", {}).get("passed"):
        return False
    return REGISTRY[artifact["backend"]].same_settings(artifact, ExportOptions.from_config(study.cfg))


def verdict_holds(study: Study, artifact: dict) -> bool:
    """Was `artifact` verified under the thresholds this run holds its own files to (--rounding-agreement among
    them)? If not, its file is verified again here rather than its verdict taken over."""
    basis = (artifact.get("verification") or {}).get("basis") or {}
    return basis.get("thresholds") == Thresholds.from_config(study.cfg).basis()


def baseline(study: Study) -> list[dict]:
    """OUT's own model (its fp32 baselines and its scheme's files) in every selected runtime, verified.

    The pipeline's exported files are used when they are intact (their sha256 is the one `export`
    recorded), passed `verify` and match this run's settings; their accuracy is the one `verify`
    measured on those same bytes and the same test set. A backend without them is exported here,
    into OUT/study/baseline/, and verified in this run.
    """
    import converters

    if study.baseline_rows is not None:
        return study.baseline_rows
    wanted = [c.name for c in converters.select(study.cfg.backends)]
    by_backend: dict[str, list[dict]] = {}
    for file, artifact in study.ws.manifest.get("artifacts", {}).items():
        path = study.ws.out / file
        if (artifact["backend"] in wanted and mf.scheme_tag(artifact) in (None, study.scheme.tag)
                and atomic.intact(path, artifact.get("sha256"))):
            by_backend.setdefault(artifact["backend"], []).append((path, artifact))
    ptq = unpack_answers((study.ws.manifest.get("per_image") or {}).get(f"{study.scheme.tag}:ptq"),
                         len(study.labels))  # None in an OUT quantized before answers were recorded
    baselines = {"fp32": study.fp32_answers, "ptq": ptq}
    rows = []
    for name in wanted:
        found = by_backend.get(name, [])
        if found and all(_reusable(study, a) for _, a in found):
            again = []
            for path, artifact in found:
                checked = artifact["verification"]
                row = {**artifact, "file": str(Path("..") / path.name), "path": path, **sizes(path), "reused": True,
                       "accuracy": checked["accuracy"],
                       "verification": {**checked, "method": f"{checked.get('method')}, run by `verify` on these bytes"}}
                if verdict_holds(study, artifact):
                    rows.append({**row, "how": how_it_ran(row)})
                else:
                    again.append(row)
            if again:  # `verify` held them to other thresholds: this run's are applied to the same bytes
                verify_rows(study, again, study.source(), baselines)
                rows += again
            print(f"study: baseline {name}: using the pipeline's verified {', '.join(p.name for p, _ in found)}"
                  + (f" ({len(again)} verified again under this run's thresholds)" if again else ""))
    missing = [n for n in wanted if n not in {r["backend"] for r in rows}]
    if missing:
        made, failures = export_variant(study, "baseline", study.source(), backends=missing)
        verify_rows(study, made, study.source(), baselines)
        rows += made
    study.baseline_rows = rows
    return rows

