"""Section 2: which layer costs accuracy when quantized.

For each conv/linear layer L, two PTQ runs (calibration only, to keep it fast): only L quantized
(every other layer left float), and only L left float (every other layer quantized). Accuracies
are of the converted PT2E graph in PyTorch (quantize/dequantize ops: the int8 numerics, simulated).
The ranking, by how much keeping L float recovers, is what `--keep-float auto` walks down.
"""

from __future__ import annotations

from .context import Study

METHOD = ("PTQ (XNNPACKQuantizer, calibration on --calib-batches training batches), each configuration "
          "converted and run in PyTorch with quantize/dequantize ops (simulated int8)")


def run(study: Study) -> dict:
    layers = study.layers
    fp32, full = study.fp32_accuracy, study.ptq_accuracy(())
    rows = []
    for layer in layers:
        print(f"study: sensitivity of {layer}")
        only_quantized = study.ptq_accuracy(set(layers) - {layer})
        only_float = study.ptq_accuracy({layer})
        rows.append({
            "layer": layer,
            "only_quantized_accuracy": only_quantized,
            "only_float_accuracy": only_float,
            "drop_when_quantized_pp": 100 * (fp32 - only_quantized),  # cost of quantizing L alone
            "recovery_when_float_pp": 100 * (only_float - full),  # gain of keeping L alone float
        })
    result = {"method": METHOD, "how": "simulated", "fp32_accuracy": fp32, "ptq_int8_accuracy": full,
              "layers": rows, "ranking": rank(rows)}
    study.sensitivity = result
    return result


def rank(rows: list[dict]) -> list[str]:
    """Most sensitive first: the largest recovery when kept float, then the largest drop when quantized alone."""
    return [r["layer"] for r in sorted(rows, key=lambda r: (-r["recovery_when_float_pp"], -r["drop_when_quantized_pp"]))]


def ranking_for_auto(study: Study) -> tuple[list[str], list[dict]]:
    """The ranking `--keep-float auto` needs; computed here (only-L-float runs) when section 2 did not run."""
    if study.sensitivity is not None:
        return study.sensitivity["ranking"], study.sensitivity["layers"]
    full = study.ptq_accuracy(())
    rows = [{"layer": layer, "only_float_accuracy": study.ptq_accuracy({layer}),
             "recovery_when_float_pp": 100 * (study.ptq_accuracy({layer}) - full), "drop_when_quantized_pp": 0.0}
            for layer in study.layers]
    return rank(rows), rows
