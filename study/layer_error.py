"""Section 1: the error each quantizer adds, layer by layer, against the uniform-noise model Δ²/12.

It studies the model the pipeline exports: OUT's quantized program of its scheme
(OUT/quantized/<tag>/unfolded.pt2, made by PTQ or QAT, whichever the `qat` stage kept), whose
quantize → dequantize pairs carry the scales every runtime uses. Weights: all of them. Output
activations: over --study-batches test batches (0: the whole test set).
"""

from __future__ import annotations

from core import quantize

from . import numerics
from .context import Study


def run(study: Study) -> dict:
    source = study.source()
    graph, restored = numerics.float_restored(source.unfolded, source.float_model.state_dict())
    batches = study.cfg.study_batches
    images = len(study.labels) if not batches else min(len(study.labels), batches * numerics.BATCH)
    where = f"quantized/{study.scheme.tag}/{quantize.UNFOLDED}"
    return {"model": f"{study.chosen.upper()} program {where}", "how": "simulated",
            "test_images": images, "float_restored": restored, "weights": numerics.weight_errors(graph),
            "activations": numerics.activation_errors(graph, study.data, batches)}
