"""Section 6: weights only, activations only, or both, on the same model.

The model is OUT's fp32 network, quantized by PTQ (one calibration), so the three variants differ
only in which quantizers are active; the QAT model, trained with both, is shown as well.
Simulated rows run the converted PT2E graph in PyTorch with the other kind of quantize → dequantize
pairs bypassed (numerics.Simulator). Rows from real files:

- W8A8: the PTQ program lowered to ExecuTorch (XNNPACK int8), run by its runtime;
- W8 (weights only): Core ML linear int8 weights per output channel (activations stay fp16 in Core
  ML); on Linux its accuracy comes from reading the weights back into PyTorch (float32 activations);
- A8 (activations only): no runtime here exports float weights with int8 activations: simulated only.
"""

from __future__ import annotations

import shutil

import torch
from torch.export import Dim

from core import qat
from core.evaluate import accuracy

from . import artifacts, numerics, schemes
from .context import Study


def _program(graph_module: torch.fx.GraphModule, shape) -> torch.fx.GraphModule:
    """Round-trip through torch.export (dynamic batch), as the `qat` stage saves its programs."""
    example = torch.zeros(2, *shape)
    return torch.export.export(graph_module, (example,), dynamic_shapes=({0: Dim("batch", min=1, max=qat.MAX_BATCH)},)).module()


def run(study: Study) -> dict:
    labels = study.labels
    model = study.fp32_model()
    prepared = schemes.calibrated(model, study.data, study.shape, study.cfg)
    unfolded = schemes.convert(prepared, fold=False)
    qat_unfolded = qat.load_program(study.ws.out / qat.QAT_UNFOLDED)

    def simulated(graph, weights, activations) -> float:
        return accuracy(numerics.simulated_logits(graph, study.data, weights, activations), labels)

    rows = [
        {"model": "PTQ", "weights": "fp32", "activations": "fp32", "accuracy": study.fp32_accuracy, "how": "pytorch",
         "what": "fp32 checkpoint, PyTorch eager"},
        {"model": "PTQ", "weights": "int8", "activations": "fp32", "accuracy": simulated(unfolded, True, False),
         "how": "simulated", "what": "PT2E graph, activation quantizers bypassed"},
        {"model": "PTQ", "weights": "fp32", "activations": "int8", "accuracy": simulated(unfolded, False, True),
         "how": "simulated", "what": "PT2E graph, weight quantizers bypassed"},
        {"model": "PTQ", "weights": "int8", "activations": "int8", "accuracy": study.accuracy(unfolded),
         "how": "simulated", "what": "PT2E graph, all quantizers"},
        {"model": "QAT", "weights": "fp32", "activations": "fp32", "accuracy": simulated(qat_unfolded, False, False),
         "how": "simulated", "what": "QAT graph, all quantizers bypassed (QAT-trained float weights)"},
        {"model": "QAT", "weights": "int8", "activations": "fp32", "accuracy": simulated(qat_unfolded, True, False),
         "how": "simulated", "what": "QAT graph, activation quantizers bypassed"},
        {"model": "QAT", "weights": "fp32", "activations": "int8", "accuracy": simulated(qat_unfolded, False, True),
         "how": "simulated", "what": "QAT graph, weight quantizers bypassed"},
        {"model": "QAT", "weights": "int8", "activations": "int8", "accuracy": study.accuracy(qat_unfolded),
         "how": "simulated", "what": "QAT graph, all quantizers"},
    ]
    files, failures = [], {}
    source = artifacts.variant_source(study.source(), qat_folded=_program(schemes.convert(prepared, fold=True), study.shape),
                                      qat_unfolded=_program(unfolded, study.shape), fp32_model=study.fp32_model(),
                                      qat_float_model=study.fp32_model())
    made, failures = artifacts.export_variant(study, "wa", source, backends=["executorch", "coreml"])
    for row in [r for r in made if r["backend"] == "coreml" and r["quant"].startswith("pal")]:
        shutil.rmtree(row["path"])  # palettization is section 4's subject; here Core ML gives the weight-only int8 file
    made = [r for r in made if not (r["backend"] == "coreml" and r["quant"].startswith("pal"))]
    fp16 = next((r for r in made if r["backend"] == "coreml" and r["quant"] == "fp16"), None)
    if fp16:
        stem = fp16["path"].name.removesuffix("_fp16.mlpackage")
        path = schemes.linear_quantize(fp16["path"], fp16["path"].parent / f"{stem}_linear8.mlpackage", study.cfg, 8)
        made.append(artifacts.derived_row(study, path, fp16, "linear8", {"weight_ops": schemes.coreml_weight_ops(path)}))
    ok = artifacts.verify_rows(study, made, source, {"fp32": study.fp32_accuracy})
    kinds = {("executorch", "int8"): ("int8", "int8"), ("executorch", "fp32"): ("fp32", "fp32"),
             ("coreml", "fp16"): ("fp16", "fp16"), ("coreml", "linear8"): ("int8", "fp16")}
    for r in made:
        weights, activations = kinds.get((r["backend"], r["quant"]), (r["quant"], "?"))
        if r["how"] == "readback":
            activations = "fp32 (read back in PyTorch; fp16 in Core ML)"
        rows.append({"model": "PTQ", "weights": weights, "activations": activations, "accuracy": r.get("accuracy"),
                     "how": r["how"], "what": f"{r['file']} ({r['backend']})"})
        files.append(artifacts.public(r))
    return {"rows": rows, "files": files, "failures": failures, "passed": ok and not failures,
            "calibration_batches": study.cfg.calib_batches}
