"""Section 1: the error each quantizer adds, layer by layer, against the uniform-noise model Δ²/12.

It studies the model the pipeline exports: OUT's QAT program (qat_int8_unfolded.pt2), whose
quantize → dequantize pairs carry the scales every runtime uses. Weights: all of them. Output
activations: over --study-batches test batches (0: the whole test set).
"""

from __future__ import annotations

from core import qat

from . import numerics
from .context import Study


def run(study: Study) -> dict:
    graph = qat.load_program(study.ws.out / qat.QAT_UNFOLDED)
    batches = study.cfg.study_batches
    images = len(study.labels) if not batches else min(len(study.labels), batches * numerics.BATCH)
    return {"model": f"QAT program {qat.QAT_UNFOLDED}", "how": "simulated",
            "test_images": images, "weights": numerics.weight_errors(graph),
            "activations": numerics.activation_errors(graph, study.data, batches)}
