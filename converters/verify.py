"""Run every artifact in its real runtime over the test set and hold it to its PyTorch reference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data import DataBundle
from core.evaluate import agreement, compare

from . import REGISTRY
from .base import ExportSource


@dataclass
class Thresholds:
    min_agreement: float = 0.995
    max_acc_drop_pp: float = 0.5  # against the artifact's own PyTorch reference
    max_quant_drop_pp: float = 2.0  # a quantized artifact against fp32 (and PTQ): the cost of quantization
    rounding_agreement: float = 0.98  # the floor for an int8 file whose every layer teacher-forced parity clears


def run_artifact(path: Path, artifact: dict, source: ExportSource, data: DataBundle, batch_size: int = 256) -> tuple[np.ndarray, str]:
    run, method = REGISTRY[artifact["backend"]].runner(path, artifact, source)
    logits = np.concatenate([run(images.numpy()) for images, _ in data.batches("test", batch_size)])
    return logits, method


def rounding_floor(local: dict, images: int, thresholds: Thresholds) -> dict | None:
    """The agreement floor an int8 .pte or .tflite earns when teacher-forced parity (converters/parity.py
    check_local) found every one of its layers within a step or so of PyTorch's computation on the runtime's own
    inputs; None when it did not. Both runtimes round ties and requantize in fixed point where the PyTorch
    reference rounds in float, so on deep networks one-step differences compound into a few changed top-1
    answers; this floor, with the accuracy checks unchanged, is what such a file is held to."""
    if not local.get("passed") or thresholds.rounding_agreement >= thresholds.min_agreement:
        return None
    worst = local["worst"]
    return {"min_agreement": thresholds.rounding_agreement, "why": f"each of its {local['layers']} layers is within {local['max_steps']:g} output step(s) of PyTorch's "
                   f"value computed from the runtime's own inputs (teacher-forced parity, {images} test images; "
                   f"worst `{worst['layer']}`, {worst['max_steps']:g} step(s) on "
                   f"{100 * (1 - worst['equal_share']):.2g}% of its values): the lower top-1 agreement is rounding "
                   "carried through the network, not a conversion error"}


def verify(artifact: dict, logits: np.ndarray, reference: np.ndarray, labels, thresholds: Thresholds,
           baselines: dict[str, float] | None = None, rounding: dict | None = None) -> dict:
    """Metrics of one artifact against its reference, with the failures spelled out.

    `baselines` are the PyTorch test accuracies of the fp32 model and, where it ran, of PTQ. A quantized
    artifact (anything but fp32) that falls more than `max_quant_drop_pp` below one of them fails,
    even when it matches its own reference: a reference broken by quantization must not vouch for it.
    `rounding` (from `rounding_floor`) lowers the agreement threshold only; the accuracy checks still hold.
    """
    metrics = compare(logits, reference, labels)
    drop_pp = 100.0 * (metrics["reference_accuracy"] - metrics["accuracy"])
    failures = []
    floor = (artifact.get("checks") or {}).get("agreement_floor")  # a runtime that computes differently by design
    min_agreement = min(thresholds.min_agreement, floor["min_agreement"]) if floor else thresholds.min_agreement
    if rounding:
        min_agreement = min(min_agreement, rounding["min_agreement"])
    if metrics["agreement"] < min_agreement - 1e-9:
        failures.append(f"top-1 agreement with the {artifact['reference']} reference is {100 * metrics['agreement']:.2f}% "
                        f"< {100 * min_agreement:.2f}%")
    if drop_pp > thresholds.max_acc_drop_pp + 1e-9 and not floor:  # a drop of exactly the allowance passes
        failures.append(f"accuracy {100 * metrics['accuracy']:.2f}% is {drop_pp:.2f} pp below the "
                        f"{artifact['reference']} reference ({100 * metrics['reference_accuracy']:.2f}%), "
                        f"allowed {thresholds.max_acc_drop_pp} pp")
    quant_drops = {}
    if artifact["quant"] != "fp32":
        for name, base in (baselines or {}).items():
            if base is None:
                continue
            quant_drops[name] = 100.0 * (base - metrics["accuracy"])
            if quant_drops[name] > thresholds.max_quant_drop_pp + 1e-9:
                failures.append(f"accuracy {100 * metrics['accuracy']:.2f}% is {quant_drops[name]:.2f} pp below "
                                f"{name} ({100 * base:.2f}%): quantization costs more than --max-quant-drop "
                                f"{thresholds.max_quant_drop_pp} pp")
    return {**metrics, "accuracy_drop_pp": drop_pp, "quant_drop_pp": quant_drops, "passed": not failures,
            "failures": failures, "min_agreement": min_agreement,
            "loosened": "; ".join(f["why"] for f in (floor, rounding) if f) or None}


def cross_agreement(logits_by_file: dict[str, np.ndarray], artifacts: dict[str, dict]) -> dict:
    """Top-1 agreement between artifacts of different backends that share a reference and quantization."""
    pairs = {}
    files = sorted(logits_by_file)
    for i, a in enumerate(files):
        for b in files[i + 1:]:
            ra, rb = artifacts[a], artifacts[b]
            if ra["backend"] != rb["backend"] and ra["reference"] == rb["reference"] and ra["quant"] == rb["quant"]:
                pairs[f"{a} vs {b}"] = {
                    "agreement": agreement(logits_by_file[a], logits_by_file[b]),
                    "max_abs_logit_diff": float(np.abs(logits_by_file[a] - logits_by_file[b]).max()),
                }
    return pairs
