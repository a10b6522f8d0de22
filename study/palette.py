"""Per-layer Core ML palette widths: `--nbits auto:PP` picks, for each layer, the fewest bits of 8, 6, 4, 3, 2.

The weights come from Core ML itself: the network's fp16 package is palettized once at each width (the
converter's k-means settings: --granularity, --group-size), and each file's LUT weights are read back
(converters.coreml_weights, as `verify` reads a palettized file on Linux). coremltools clusters each weight on
its own and deterministically, so a layer's LUT at a width is the same whatever width the other layers get: a mix
of widths is run in PyTorch by loading each layer's read-back weight, and the file the converter then writes with
those per-layer widths holds the same weights.

Sensitivity (like the study's section 2 for int8): each layer alone at 2 bits, the others fp16; the layers are
walked least sensitive first. Each layer takes the narrowest width at which the whole network, with the
layers already chosen, is *shown* within PP percentage points of its float reference on the test set (the
paired interval of core/statistics.py lies within the budget) and does not fail `verify`'s own checks
(--min-agreement, --max-acc-drop); otherwise it keeps 8 bits. If even 8 bits everywhere is not shown within
PP (PP 0 never is), every layer keeps 8 bits and the record says why.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from converters import ConversionError
from converters.coreml import convert_float, palettizer_config, weight_const
from converters.coreml_palette import AUTO_WIDTHS, palettized_layers, ungrouped
from converters.coreml_fold import fold_batchnorm
from converters.coreml_weights import match_weights, read_weights
from converters.verify import Thresholds, verify
from core import statistics
from core.weights import load_weights
from core.console import say
from core.evaluate import predict

NARROWEST = AUTO_WIDTHS[-1]


def _palettized_weights(fp16, source, options, layers: list[str], bits: int, folder: Path, net) -> dict[str, np.ndarray]:
    """Each layer's weight as the `bits`-wide LUT file holds it (read back from a saved package)."""
    from coremltools.optimize.coreml import OptimizationConfig, palettize_weights

    config = OptimizationConfig(op_name_configs={weight_const(layer): palettizer_config(options, bits) for layer in layers})
    path = folder / f"pal{bits}.mlpackage"
    palettize_weights(fp16, config).save(str(path))
    matched, _ = match_weights(net, read_weights(path))
    return {layer: matched[f"{layer}.weight"] for layer in layers if f"{layer}.weight" in matched}


class Palettes:
    """The fp16 weights and every layer's read-back LUT weights at every width, and runs of any mix of them."""

    def __init__(self, source, data, options, thresholds: Thresholds, folder: Path):
        self.source, self.data, self.thresholds = source, data, thresholds
        self.net = fold_batchnorm(source.float_model)  # what the Linux read-back runs
        kept = tuple(options.float_layers)
        left = ungrouped(source.float_model, options, kept)  # --group-size does not divide them: they stay dense
        self.layers = [layer for layer in palettized_layers(source.float_model, options.weight_threshold, kept)
                       if layer not in left]
        if not self.layers:
            raise ConversionError(f"--nbits {options.nbits}: no conv/linear weight has more than --weight-threshold "
                                  f"{options.weight_threshold} elements, so there is no layer to palettize")
        fp16 = convert_float(source.float_model, source, "the Core ML fp16 package (--nbits auto)")
        fp16_path = folder / "fp16.mlpackage"
        fp16.save(str(fp16_path))
        stored = read_weights(fp16_path)
        unnamed = [layer for layer in self.layers if weight_const(layer) not in stored]
        if unnamed:
            raise ConversionError(f"--nbits {options.nbits}: the weights of {unnamed} have no const of their own name "
                                  "in the Core ML program (coremltools rebuilt them), so they cannot get a width of their "
                                  "own; give a fixed --nbits")
        self.dense, _ = match_weights(self.net, stored)
        self.luts = {bits: _palettized_weights(fp16, source, options, self.layers, bits, folder, self.net)
                     for bits in AUTO_WIDTHS}
        lost = [(layer, bits) for bits, got in self.luts.items() for layer in self.layers if layer not in got]
        if lost:
            raise ConversionError(f"--nbits {options.nbits}: the palettized weights of {lost} could not be read back")
        self.reference = predict(source.float_model.eval(), data)
        self.labels = data.test_labels.numpy()

    def logits(self, widths: dict[str, int]) -> np.ndarray:
        net = copy.deepcopy(self.net)
        state = net.state_dict()
        values = {k: self.dense.get(k, v) for k, v in state.items()}
        values.update({f"{layer}.weight": self.luts[bits][layer] for layer, bits in widths.items()})
        load_weights(net, {k: torch.as_tensor(np.asarray(v, np.float32)).reshape(state[k].shape)
                           for k, v in values.items()})
        return predict(net.eval(), self.data)

    def point(self, widths: dict[str, int], budget_pp: float) -> dict:
        """One mix of widths: its accuracy, agreement, the budget verdict and verify's own verdicts."""
        logits = self.logits(widths)
        correct, ref_correct = logits.argmax(1) == self.labels, self.reference.argmax(1) == self.labels
        budget = statistics.drop_verdict(ref_correct, correct, budget_pp / 100, self.thresholds.confidence,
                                         "accuracy drop vs float (--nbits auto budget)")
        checked = verify({"reference": "float", "quant": "palauto", "checks": {}}, logits, self.reference, self.labels,
                         self.thresholds)
        return {"accuracy": float(correct.mean()), "agreement": float((logits.argmax(1) == self.reference.argmax(1)).mean()),
                "drop_pp": 100 * budget.observed, "budget": budget.to_dict(), "verify_failures": checked["failures"],
                "accepted": budget.outcome == "pass" and checked["passed"]}


def sensitivity(palettes: Palettes, budget_pp: float) -> list[dict]:
    """Each layer alone at the narrowest width (the others fp16): what it costs, least sensitive first."""
    rows = []
    for layer in palettes.layers:
        p = palettes.point({layer: NARROWEST}, budget_pp)
        rows.append({"layer": layer, "bits": NARROWEST, "accuracy": p["accuracy"], "agreement": p["agreement"],
                     "drop_pp": p["drop_pp"], "weights": int(np.prod(palettes.luts[NARROWEST][layer].shape))})
    return sorted(rows, key=lambda r: (r["drop_pp"], -r["agreement"], -r["weights"]))


def choose(source, data, options, budget_pp: float, thresholds: Thresholds) -> dict:
    """The width of each palettized layer under `--nbits auto:PP`, with how it was found (the trace)."""
    with tempfile.TemporaryDirectory(prefix="nbits-auto-") as folder:
        palettes = Palettes(source, data, options, thresholds, Path(folder))
    widths = {layer: AUTO_WIDTHS[0] for layer in palettes.layers}
    start = palettes.point(widths, budget_pp)
    trace = [{"layer": None, "bits": AUTO_WIDTHS[0], **start}]
    ranking = sensitivity(palettes, budget_pp) if start["accepted"] else []
    for row in ranking:
        for bits in reversed(AUTO_WIDTHS[1:]):  # narrowest first: the first width that holds is the fewest bits
            p = palettes.point({**widths, row["layer"]: bits}, budget_pp)
            trace.append({"layer": row["layer"], "bits": bits, **p})
            if p["accepted"]:
                widths[row["layer"]] = bits
                break
    final = next((t for t in reversed(trace) if t["accepted"]), start)
    note = None
    if not start["accepted"]:
        why = "; ".join(start["verify_failures"]) or (
            f"its drop {start['drop_pp']:.2f} pp is not shown within {budget_pp:g} pp with these "
            f"{len(palettes.labels)} test images (interval {100 * start['budget']['low']:.2f} to "
            f"{100 * start['budget']['high']:.2f} pp)")
        note = f"8 bits everywhere is not shown within the budget ({why}): every layer keeps 8 bits, the widest palette"
    say(f"export: --nbits {options.nbits}: " + (note or ", ".join(f"{k} {v}" for k, v in widths.items()) + " bits"))
    return {"setting": str(options.nbits), "budget_pp": budget_pp, "widths": widths, "candidates": list(AUTO_WIDTHS),
            "reference_accuracy": float((palettes.reference.argmax(1) == palettes.labels).mean()),
            "accuracy": final["accuracy"], "agreement": final["agreement"], "drop_pp": final["drop_pp"],
            "test_images": int(len(palettes.labels)), "reached": bool(start["accepted"]), "note": note,
            "sensitivity": ranking, "trace": trace}
