"""Section 4: Core ML weight compression at every bit width, accuracy against size.

The Core ML converter writes the fp16 package of the scheme's float weights (QAT-trained where the
`qat` stage kept QAT: the weights its palettized export compresses); every width of --sweep-bits
(default 8, 6, 4, 3, 2, 1) is palettized from that package with the converter's own palettizer
settings (k-means, --granularity, --group-size, --weight-threshold), and linear symmetric weight quantization per output channel
(the weight-only scheme's Core ML path) is added at 8 and 4 bits. Weights below
--weight-threshold elements stay fp16 in every file.

On Linux Core ML cannot run a model: accuracy comes from reading each package's weights back
(decompress_weights) into the PyTorch network. Activations therefore run in float32 there, where
Core ML would run fp16; on macOS the runner uses MLModel.predict.
"""

from __future__ import annotations

from converters.coreml_checks import lut_checks

from . import artifacts, compress
from .context import Study, parse_bits

LINEAR_BITS = (8, 4)


def run(study: Study) -> dict:
    cfg, source = study.cfg, study.source()
    # The float baseline of the scheme's float weights: the fp16 package every width starts from.
    weights = artifacts.variant_source(source, fp32_model=source.float_model)
    rows, failures = artifacts.export_variant(study, "sweep", weights, backends=["coreml"], parts=("fp32",))
    if failures:
        return {"failures": failures, "rows": [], "passed": False}
    fp16 = rows[0]
    fp16["checks"] = {**(fp16.get("checks") or {}), "weight_ops": compress.weight_ops(fp16["path"])}
    stem = fp16["path"].name.removesuffix("_fp16.mlpackage")
    out_dir = fp16["path"].parent
    for nbits in parse_bits(cfg.sweep_bits):
        path = compress.palettize(fp16["path"], out_dir / f"{stem}_pal{nbits}.mlpackage", cfg, nbits)
        checks = {"weight_ops": compress.weight_ops(path), "dense": lut_checks(path, nbits)["dense"]}
        rows.append(artifacts.derived_row(study, path, fp16, f"pal{nbits}", checks))
        print(f"[✓] study: Core ML {study.rel(path)}")
    for nbits in LINEAR_BITS:
        path = compress.linear_quantize(fp16["path"], out_dir / f"{stem}_linear{nbits}.mlpackage", cfg, nbits)
        rows.append(artifacts.derived_row(study, path, fp16, f"linear{nbits}", {"weight_ops": compress.weight_ops(path)}))
        print(f"[✓] study: Core ML {study.rel(path)}")
    # Thresholds are applied as in `verify`, but a sweep is a measurement: failing rows show the limit, not a bug.
    artifacts.verify_rows(study, rows, weights, {"fp32": study.fp32_answers}, measurement=True)
    table = []
    for r in rows:
        kind, bits = ("fp16", 16) if r["quant"] == "fp16" else \
            ("palettized", int(r["quant"][3:])) if r["quant"].startswith("pal") else ("linear", int(r["quant"][6:]))
        table.append({"scheme": kind, "bits": bits, "file": r["file"], "bytes": r["bytes"], "zip_bytes": r["zip_bytes"],
                      "size_ratio_to_fp16": r["bytes"] / fp16["bytes"], "accuracy": r.get("accuracy"),
                      "agreement_with_float": r.get("verification", {}).get("agreement"),
                      "within_thresholds": bool(r.get("verification", {}).get("passed")), "how": r.get("how")})
    return {"rows": table, "reference_accuracy": study.accuracy(source.float_model), "weights_from": study.chosen,
            "settings": {"granularity": cfg.granularity, "group_size": cfg.group_size,
                         "weight_threshold": cfg.weight_threshold, "linear": "linear_symmetric, per output channel"},
            "dense_layers": next((r["checks"]["dense"] for r in rows if r["quant"].startswith("pal")), []),
            "files": [artifacts.public(r) for r in rows], "failures": {}}
