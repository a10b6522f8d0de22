"""Section 5: pruning against quantization, each alone and both, measured in every runtime.

Variants: OUT's own model (baseline), and each pruning method applied to OUT's fp32 model with
its gradual schedule and fine-tuning (pruning.py). Each pruned network then goes through QAT of
OUT's scheme with the `qat` stage's schedule (core.quantize; unstructured: holding the pruned
weights at zero). Each variant is exported with every converter (baseline and scheme) into
OUT/study/<variant>/ and verified, so that every cell of the table ran:

| | fp32 / fp16 file | int8 / palettized file |
|---|---|---|
| baseline | neither | quantization alone |
| pruned | pruning alone | both |

Core ML's palettization is post-training, so its palettized files hold each variant's float
network: the fp32 checkpoint, or the pruned and fine-tuned one (the same network as the fp32 .pte
and .tflite of that variant); its W8A8 file is the variant's int8 graph, as in the other runtimes. For the unstructured variant Core ML also stores the zeros sparse,
alone and jointly with the LUTs; for the baseline, Core ML's own post-training magnitude pruning
(no fine-tuning) is shown for comparison.
Latencies are batch-1, interleaved per runtime, as ratios to the baseline's files of that runtime.
"""

from __future__ import annotations

from core import train
from core.console import say

from converters import REGISTRY

from . import artifacts, compress, pruning, quant
from .context import Study


def run(study: Study) -> dict:
    cfg = study.cfg
    fp32_source = artifacts.variant_source(study.source(), float_model=study.fp32_model())
    # OUT's palettized package compresses the scheme's float weights (QAT-trained, where QAT was kept); the
    # baseline's, like every variant's, palettizes its fp32 network: made here from OUT's fp16 package.
    base = [r for r in artifacts.baseline(study) if not (r["backend"] == "coreml" and r["quant"].startswith("pal"))]
    fp16 = next((r for r in base if r["backend"] == "coreml" and r["quant"] == "fp16"), None)
    failures, ok = {}, True
    if fp16:
        out_dir = study.root / "baseline_coreml"
        stem = fp16["path"].name.removesuffix("_fp16.mlpackage")
        path = compress.palettize(fp16["path"], out_dir / f"{stem}_pal{cfg.nbits}.mlpackage", cfg, cfg.nbits)
        pal = artifacts.derived_row(study, path, {**fp16, "reference": "float"}, f"pal{cfg.nbits}",
                                    {"weight_ops": compress.weight_ops(path)})
        ok = artifacts.verify_rows(study, [pal], fp32_source, {"fp32": study.fp32_answers})
        base.append(pal)
    entry = study.ws.manifest["accuracy"][study.scheme.tag]
    variants = {"baseline": {"rows": base, "float_accuracy": study.fp32_accuracy, "failures": failures,
                             "quantized_accuracy": entry["quantized"], "mode": entry["chosen"],
                             "parameters": sum(p.numel() for p in study.fp32_model().parameters())}}
    sources = {"baseline": fp32_source}
    for method in pruning.METHODS:
        say(f"study: pruning ({method})")
        train.seed_everything(cfg.seed)
        pruned = pruning.PRUNERS[method](study.fp32_model(), study.data, study.shape, cfg)
        float_answers = study.answers(pruned.model)
        float_acc = float(float_answers.mean())
        train.seed_everything(cfg.seed)
        hold = pruning.hold_masks(pruned.masks) if pruned.masks else None
        made = quant.quantized(pruned.model, study.data, study.shape, cfg, study.scheme, "qat", each_step=hold)
        after_qat = pruning.sparsity(made.float_model, pruned.masks) if pruned.masks else None
        source = quant.variant(study.source(), made, study.root / method / "quantized", fp32_model=pruned.model,
                               float_model=pruned.model)
        rows, failures = artifacts.export_variant(study, method, source)
        fp16 = next((r for r in rows if r["backend"] == "coreml" and r["quant"] == "fp16"), None)
        if fp16 and method == "unstructured":
            rows += coreml_sparse(study, fp16, method, target=None)
        ok &= artifacts.verify_rows(study, rows, source, {"fp32": float_answers})
        ok &= not failures
        sources[method] = source
        variants[method] = {
            "rows": rows, "failures": failures, "float_accuracy": float_acc,
            "qat_accuracy": study.accuracy(source.program), "qat_steps": made.stats["steps"],
            "target": pruned.target, "parameters": sum(p.numel() for p in pruned.model.parameters()),
            "stats": {k: v for k, v in pruned.stats.items() if k != "history"},
            "sparsity_after_qat": after_qat}
    fp16 = next((r for r in base if r["backend"] == "coreml" and r["quant"] == "fp16"), None)
    if fp16:  # Core ML's post-training magnitude pruning of the baseline, for comparison (no fine-tuning)
        extra = coreml_sparse(study, fp16, "baseline_coreml", target=cfg.sparsity)
        artifacts.verify_rows(study, extra, fp32_source, {"fp32": study.fp32_answers}, measurement=True)
        variants["baseline"]["coreml_post_training"] = extra
    latency = measure(study, variants, sources)
    return {"variants": {name: {**{k: v for k, v in v.items() if k not in ("rows", "coreml_post_training")},
                                "files": [artifacts.public(r) for r in v["rows"] + v.get("coreml_post_training", [])]}
                         for name, v in variants.items()},
            "latency": latency, "table": table(variants, latency), "passed": bool(ok)}


def coreml_sparse(study: Study, fp16: dict, folder: str, target: float | None) -> list[dict]:
    """Sparse fp16 weights, and sparse + palettized (joint compression), from a variant's fp16 package."""
    out_dir = study.root / folder
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = fp16["path"].name.removesuffix("_fp16.mlpackage")
    tag = "sparse" if target is None else f"ptprune{round(100 * target)}"
    sparse = compress.sparsify(fp16["path"], out_dir / f"{stem}_{tag}.mlpackage", study.cfg, target)
    joint = compress.sparse_palettize(sparse, out_dir / f"{stem}_{tag}_pal{study.cfg.nbits}.mlpackage", study.cfg,
                                     study.cfg.nbits)
    rows = []
    for path, label in ((sparse, f"{tag}_fp16"), (joint, f"{tag}_pal{study.cfg.nbits}")):
        rows.append(artifacts.derived_row(study, path, fp16, label, {"weight_ops": compress.weight_ops(path),
                                                                      "target_sparsity": target}))
        print(f"[✓] study: Core ML {study.rel(path)}")
    return rows


def measure(study: Study, variants: dict, sources: dict) -> dict:
    """Per runtime that runs here: every variant's files timed in one interleaved set; ratios to the baseline."""
    result = {}
    for backend in REGISTRY:
        timed, owners = {}, {}
        for name, v in variants.items():
            for row in v["rows"]:
                if row["backend"] == backend and artifacts.timeable(row):
                    timed[row["file"]] = row
                    owners[row["file"]] = name
        if not timed:
            continue
        # Runners read only the labels and normalization from the source, which every variant shares.
        ms = artifacts.latencies(study, timed, sources["baseline"])
        base = {r["quant"]: ms.get(r["file"]) for r in variants["baseline"]["rows"] if r["backend"] == backend}
        result[backend] = {}
        for file, m in ms.items():
            quant = timed[file]["quant"]
            ref = base.get(quant) or base.get("fp32") or base.get("fp16")
            result[backend][file] = {"variant": owners[file], "quant": quant, "p50_ms": m["p50_ms"],
                                     "ratio_to_baseline_same_precision": m["p50_ms"] / ref["p50_ms"] if ref else None}
    return result


PRECISION = {"fp32": "float", "fp16": "float", "int8": "quantized"}


def table(variants: dict, latency: dict) -> list[dict]:
    """The comparison: for each variant, runtime and precision, accuracy, size, compressed size and latency."""
    rows = []
    base_bytes = {(r["backend"], r["quant"]): r for r in variants["baseline"]["rows"]}
    for name, v in variants.items():
        for r in v["rows"] + v.get("coreml_post_training", []):
            kind = PRECISION.get(r["quant"], "quantized")
            if name == "baseline" and r["quant"].startswith("ptprune"):
                what = "Core ML post-training pruning (no fine-tuning)" + (" + palettization" if "pal" in r["quant"] else "")
            elif name == "baseline":
                what = "neither" if kind == "float" else "quantization alone"
            else:
                what = "pruning alone" if kind == "float" else "both"
                if r["quant"].startswith("sparse"):
                    what = "pruning alone (stored sparse)" if r["quant"].endswith("fp16") else "both (sparse + palettized)"
            ref = base_bytes.get((r["backend"], "fp32")) or base_bytes.get((r["backend"], "fp16"))
            lat = latency.get(r["backend"], {}).get(r["file"], {})
            rows.append({"variant": name, "what": what, "backend": r["backend"], "quant": r["quant"], "file": r["file"],
                         "accuracy": r.get("accuracy"), "bytes": r["bytes"], "zip_bytes": r["zip_bytes"],
                         "size_ratio": r["bytes"] / ref["bytes"] if ref else None,
                         "zip_ratio": r["zip_bytes"] / ref["zip_bytes"] if ref else None,
                         "latency_ratio": lat.get("ratio_to_baseline_same_precision"),
                         "how": r.get("how"), "passed": bool(r.get("verification", {}).get("passed"))})
    return rows

