"""The quantization study: measurements of one trained model across the three runtimes.

`mobile-pipeline study` (study.run.study) reads OUT after `train` and `qat` and writes OUT/study/:
report.md, results.json (schema: study/schemas/results.schema.json) and PNG plots. Sections:

1. error        per-layer SQNR, MSE against Δ²/12 and clipping, for weights and activations (numerics.py)
2. sensitivity  accuracy with only layer L quantized, and with only L float (sensitivity.py)
3. mixed        automatic mixed precision, exported and verified in every runtime (mixed.py)
4. sweep        Core ML palettization and linear quantization bit widths (sweep.py)
5. pruning      unstructured and structured pruning, alone and with QAT (pruning.py, tradeoffs.py)
6. wa           weight-only, activation-only and both (weights_activations.py)

OUT's scheme (core/schemes.py) is the one studied; every PTQ and QAT is core's (core.quantize,
core.qat), called through quant.py; Core ML compression beyond `export` is in compress.py.
"""

from core.errors import BadInput


class StudyError(BadInput, RuntimeError):
    """The study cannot start: a setting is wrong or OUT lacks what it needs; the message says what to do."""
