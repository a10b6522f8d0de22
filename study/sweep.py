"""Section 4: Core ML weight compression at every bit width, accuracy against size.

The Core ML converter writes the fp16 package (and palettizes it at --nbits); the other widths are
palettized from that same fp16 package with the same settings (k-means, --granularity,
--group-size, --weight-threshold), and linear symmetric quantization per output channel is added
at 8 and 4 bits. Weights below --weight-threshold elements stay fp16 in every file.

On Linux Core ML cannot run a model: accuracy comes from reading each package's weights back
(decompress_weights) into the PyTorch network. Activations therefore run in float32 there, where
Core ML would run fp16; on macOS the runner uses MLModel.predict.
"""

from __future__ import annotations

from . import artifacts, schemes
from .context import Study

PALETTE_BITS = (8, 6, 4, 3, 2, 1)
LINEAR_BITS = (8, 4)


def run(study: Study) -> dict:
    cfg, source = study.cfg, study.source()
    rows, failures = artifacts.export_variant(study, "sweep", source, backends=["coreml"])
    if failures:
        return {"failures": failures, "rows": [], "passed": False}
    fp16 = next(r for r in rows if r["quant"] == "fp16")
    for r in rows:  # how each package stores its weights, read from the package (as for the widths made below)
        r["checks"] = {**(r.get("checks") or {}), "weight_ops": schemes.coreml_weight_ops(r["path"])}
    stem = fp16["path"].name.removesuffix("_fp16.mlpackage")
    out_dir = fp16["path"].parent
    for nbits in PALETTE_BITS:
        if any(r["quant"] == f"pal{nbits}" for r in rows):
            continue  # the converter made this width already
        path = schemes.palettize(fp16["path"], out_dir / f"{stem}_pal{nbits}.mlpackage", cfg, nbits)
        rows.append(artifacts.derived_row(study, path, fp16, f"pal{nbits}", {"weight_ops": schemes.coreml_weight_ops(path)}))
        print(f"[✓] study: Core ML {study.rel(path)}")
    for nbits in LINEAR_BITS:
        path = schemes.linear_quantize(fp16["path"], out_dir / f"{stem}_linear{nbits}.mlpackage", cfg, nbits)
        rows.append(artifacts.derived_row(study, path, fp16, f"linear{nbits}", {"weight_ops": schemes.coreml_weight_ops(path)}))
        print(f"[✓] study: Core ML {study.rel(path)}")
    # Thresholds are applied as in `verify`, but a sweep is a measurement: failing rows show the limit, not a bug.
    artifacts.verify_rows(study, rows, source, {"fp32": study.fp32_accuracy}, measurement=True)
    order = ["fp16"] + [f"pal{n}" for n in PALETTE_BITS] + [f"linear{n}" for n in LINEAR_BITS]
    rows.sort(key=lambda r: order.index(r["quant"]) if r["quant"] in order else len(order))
    table = []
    for r in rows:
        kind, bits = ("fp16", 16) if r["quant"] == "fp16" else \
            ("palettized", int(r["quant"][3:])) if r["quant"].startswith("pal") else ("linear", int(r["quant"][6:]))
        table.append({"scheme": kind, "bits": bits, "file": r["file"], "bytes": r["bytes"], "zip_bytes": r["zip_bytes"],
                      "size_ratio_to_fp16": r["bytes"] / fp16["bytes"], "accuracy": r.get("accuracy"),
                      "agreement_with_float": r.get("verification", {}).get("agreement"),
                      "within_thresholds": bool(r.get("verification", {}).get("passed")), "how": r.get("how")})
    return {"rows": table, "reference_accuracy": study.accuracy(source.qat_float_model),
            "settings": {"granularity": cfg.granularity, "group_size": cfg.group_size,
                         "weight_threshold": cfg.weight_threshold, "linear": "linear_symmetric, per output channel"},
            "dense_layers": fp16_dense(rows), "files": [artifacts.public(r) for r in rows], "failures": {}}


def fp16_dense(rows: list[dict]) -> list[str]:
    """Weights every compressed file left dense (below --weight-threshold), from the converter's own check."""
    for r in rows:
        if r["quant"].startswith("pal") and "dense" in (r.get("checks") or {}):
            return list(r["checks"]["dense"])
    return []
