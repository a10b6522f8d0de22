"""Section 6: weights only, activations only, or both, on the same model.

The model is OUT's fp32 network quantized by PTQ of OUT's scheme (one calibration, core.quantize),
so the simulated variants differ only in which quantizers are active; OUT's own quantized model
is shown as well when the `qat` stage kept QAT (trained with both quantized). Simulated rows run
the unfolded PT2E graph in PyTorch with the other kind of quantize → dequantize pairs bypassed
(numerics.Simulator). Rows from real files:

- W8A8: the PTQ program exported as the scheme to ExecuTorch (XNNPACK int8), run by its runtime;
- W8 (weights only): the weight-only scheme of the same weights (core.schemes, `--activations
  none`), exported to LiteRT (ai-edge-quantizer's weight-only recipe) and run by its interpreter.
  Its PyTorch reference, the weights rounded to the same grid, is a row of its own. (Core ML's
  weight-only files are section 4's linear rows: on Linux they are only read back.)
- A8 (activations only): no runtime exports float weights with int8 activations: simulated only.
"""

from __future__ import annotations

import dataclasses

from core import quantize
from core.evaluate import accuracy

from converters.support import support

from . import artifacts, numerics, quant
from .context import Study

RUNTIMES = {"static": "executorch", "none": "tflite"}  # one real runtime per variant, to keep the section quick


def run(study: Study) -> dict:
    labels, scheme, bits = study.labels, study.scheme, f"int{study.scheme.weight_bits}"
    ptq = quantize.post_training(study.fp32_model(), scheme, study.data, study.shape, study.cfg.calib_batches,
                                 study.cfg.batch_size)

    def simulated(graph, weights, activations) -> float:
        return accuracy(numerics.simulated_logits(graph, study.data, weights, activations), labels)

    def rows_of(model: str, graph, what: str) -> list[dict]:
        return [
            {"model": model, "weights": bits, "activations": "fp32", "accuracy": simulated(graph, True, False),
             "how": "simulated", "what": f"{what}, activation quantizers bypassed"},
            {"model": model, "weights": "fp32", "activations": "int8", "accuracy": simulated(graph, False, True),
             "how": "simulated", "what": f"{what}, weight quantizers bypassed"},
            {"model": model, "weights": bits, "activations": "int8", "accuracy": study.accuracy(graph),
             "how": "simulated", "what": f"{what}, all quantizers"},
        ]

    rows = [{"model": "PTQ", "weights": "fp32", "activations": "fp32", "accuracy": study.fp32_accuracy,
             "how": "pytorch", "what": "fp32 checkpoint, PyTorch eager"}]
    # the converted graphs hold on-grid weights and biases; bypassing a quantizer must give the float ones back
    rows += rows_of("PTQ", numerics.float_restored(ptq.unfolded, study.fp32_model().state_dict())[0], "PT2E graph")
    if study.chosen == "qat":  # OUT's model is QAT-trained: the same three on it
        source = study.source()
        qat_graph = numerics.float_restored(source.unfolded, source.float_model.state_dict())[0]
        rows.append({"model": "QAT", "weights": "fp32", "activations": "fp32",
                     "accuracy": simulated(qat_graph, False, False), "how": "simulated",
                     "what": "QAT graph, all quantizers bypassed (QAT-trained float weights)"})
        rows += rows_of("QAT", qat_graph, "QAT graph")

    weight_only = dataclasses.replace(scheme, activations="none")
    wo = quantize.post_training(study.fp32_model(), weight_only, study.data, study.shape, study.cfg.calib_batches,
                                study.cfg.batch_size)
    rows.append({"model": "PTQ", "weights": bits, "activations": "fp32", "accuracy": study.accuracy(wo.program),
                 "how": "simulated", "what": f"weights rounded to the {weight_only.tag} grid (core.quantize), float "
                                             "network: the weight-only files' reference"})

    made, failures = [], {}
    sources = {}
    for sch, result in ((scheme, ptq), (weight_only, wo)):
        runtime = RUNTIMES[sch.activations]
        if not support(sch, runtime).ok:
            failures[f"{runtime}:{sch.tag}"] = support(sch, runtime).reason
            continue
        source = quant.variant(artifacts.variant_source(study.source(), scheme=sch), result,
                               study.root / "wa" / "quantized" / sch.tag)
        got, failed = artifacts.export_variant(study, "wa", source, backends=[runtime], parts=("scheme",))
        artifacts.verify_rows(study, got, source, {"fp32": study.fp32_answers})
        made += got
        failures.update(failed)
        sources[sch.tag] = source
    ok = all(r.get("verification", {}).get("passed") for r in made)
    for r in made:
        activations = "int8" if (r.get("scheme") or {}).get("activations") == "static" else "fp32"
        rows.append({"model": "PTQ", "weights": bits, "activations": activations, "accuracy": r.get("accuracy"),
                     "how": r["how"], "what": f"{r['file']} ({r['backend']})"})
    return {"rows": rows, "files": [artifacts.public(r) for r in made], "failures": failures,
            "passed": ok and not failures, "calibration_batches": study.cfg.calib_batches,
            "schemes": {tag: s.scheme.describe() for tag, s in sources.items()}}
