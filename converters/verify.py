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


def run_artifact(path: Path, artifact: dict, source: ExportSource, data: DataBundle, batch_size: int = 256) -> tuple[np.ndarray, str]:
    run, method = REGISTRY[artifact["backend"]].runner(path, artifact, source)
    logits = np.concatenate([run(images.numpy()) for images, _ in data.batches("test", batch_size)])
    return logits, method


def verify(artifact: dict, logits: np.ndarray, reference: np.ndarray, labels, thresholds: Thresholds,
           baselines: dict[str, float] | None = None) -> dict:
    """Metrics of one artifact against its reference, with the failures spelled out.

    `baselines` are the PyTorch test accuracies of the fp32 model and, where it ran, of PTQ. A quantized
    artifact (anything but fp32) that falls more than `max_quant_drop_pp` below one of them fails,
    even when it matches its own reference: a reference broken by quantization must not vouch for it.
    """
    metrics = compare(logits, reference, labels)
    drop_pp = 100.0 * (metrics["reference_accuracy"] - metrics["accuracy"])
    failures = []
    floor = (artifact.get("checks") or {}).get("agreement_floor")  # a runtime that computes differently by design
    min_agreement = min(thresholds.min_agreement, floor["min_agreement"]) if floor else thresholds.min_agreement
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
            "failures": failures, "min_agreement": min_agreement, "loosened": floor["why"] if floor else None}


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
