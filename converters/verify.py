"""Run every artifact in its real runtime over the test set and hold it to its PyTorch reference."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import statistics
from core.data import DataBundle
from core.evaluate import agreement, compare

from . import REGISTRY
from .base import ExportSource


@dataclass
class Thresholds:
    """Effect sizes an artifact is held to; `confidence` is the level of the interval that decides each one
    (core/statistics.py): a check fails only when its whole interval lies beyond its threshold."""
    min_agreement: float = 0.995
    max_acc_drop_pp: float = 0.5  # against the artifact's own PyTorch reference
    max_quant_drop_pp: float = 2.0  # a quantized artifact against fp32 (and PTQ): the cost of quantization
    rounding_agreement: float = 0.98  # the floor for an int8 file whose every layer teacher-forced parity clears
    confidence: float = statistics.CONFIDENCE
    near_tie_steps: int = 8  # under the rounding floor: a reference answer that leads by no more is a near tie

    @classmethod
    def from_config(cls, cfg) -> "Thresholds":
        return cls(cfg.min_agreement, cfg.max_acc_drop, cfg.max_quant_drop, cfg.rounding_agreement, cfg.confidence,
                   cfg.near_tie_steps)

    def basis(self) -> list[float]:
        """What a verification result depends on, besides the files and the test set."""
        return [self.min_agreement, self.max_acc_drop_pp, self.max_quant_drop_pp, self.rounding_agreement,
                self.confidence, self.near_tie_steps]

    def smallest_test_set(self) -> int:
        """Images needed before perfect agreement can show `min_agreement` at all (fewer: only gross errors fail).
        With every answer agreeing, the exact interval's lower end is ((1 - confidence) / 2) ** (1 / n)."""
        if self.min_agreement <= 0:
            return 1
        if self.min_agreement >= 1:
            return 10**9  # no finite test set shows 100%
        return math.ceil(math.log((1 - self.confidence) / 2) / math.log(self.min_agreement))


def run_artifact(path: Path, artifact: dict, source: ExportSource, data: DataBundle, batch_size: int = 256) -> tuple[np.ndarray, str]:
    run, method = REGISTRY[artifact["backend"]].runner(path, artifact, source)
    logits = np.concatenate([run(images.numpy()) for images, _ in data.batches("test", batch_size)])
    return logits, method


def rounding_floor(local: dict, images: int, thresholds: Thresholds, output_step: float | None = None) -> dict | None:
    """The agreement floor an int8 .pte or .tflite earns when teacher-forced parity (converters/parity.py
    check_local) found every one of its layers within a step or so of PyTorch's computation on the runtime's own
    inputs; None when it did not. Both runtimes round ties and requantize in fixed point where the PyTorch
    reference rounds in float, so on deep networks one-step differences compound into a few changed top-1
    answers; this floor, with the accuracy checks unchanged, is what such a file is held to.

    `output_step`: the int8 output's quantization step (the scale of the reference's output layer). With it, and
    `thresholds.near_tie_steps` > 0, agreement is counted on the images whose reference answer leads its runner-up
    by more than that many output steps: rounding carried through the network moves logits by a few steps, so it
    can turn a near tie, not a decisive answer. Which images count depends on the reference alone, never on the
    file, so the file cannot choose the images it is judged on; the near ties and how many of them changed are
    reported."""
    if not local.get("passed") or thresholds.rounding_agreement >= thresholds.min_agreement:
        return None
    worst = local["worst"]
    near_tie = ({"steps": thresholds.near_tie_steps, "output_step": float(output_step)}
                if output_step and output_step > 0 and thresholds.near_tie_steps > 0 else None)
    return {"min_agreement": thresholds.rounding_agreement, "near_tie": near_tie, "why": f"each of its {local['layers']} layers is within {local['max_steps']:g} output step(s) of PyTorch's "
                   f"value computed from the runtime's own inputs (teacher-forced parity, {images} test images; "
                   f"worst `{worst['layer']}`, {worst['max_steps']:g} step(s) on "
                   f"{100 * (1 - worst['equal_share']):.2g}% of its values): the lower top-1 agreement is rounding "
                   "carried through the network, not a conversion error"
                   + (f"; agreement is counted where the reference's answer leads by more than "
                      f"{near_tie['steps']:g} output steps ({near_tie['steps'] * near_tie['output_step']:.3g}), "
                      "the near ties reported apart" if near_tie else "")}


def verify(artifact: dict, logits: np.ndarray, reference: np.ndarray, labels, thresholds: Thresholds,
           baselines: dict[str, np.ndarray | None] | None = None, rounding: dict | None = None) -> dict:
    """Metrics and verdicts of one artifact against its reference, with the failures spelled out.

    Every check is paired on the same test images and decided by an interval (core/statistics.py): a check
    fails only when the data show it beyond its threshold; one whose interval straddles the threshold is
    "not distinguishable" with these images, reported as such and not a failure.

    `baselines` are the per-image right/wrong answers of the fp32 model and, where it ran, of PTQ. A quantized
    artifact (anything but fp32) whose drop below one of them is shown beyond `max_quant_drop_pp` fails, even
    when it matches its own reference: a reference broken by quantization must not vouch for it.
    `rounding` (from `rounding_floor`) lowers the agreement threshold only; the accuracy checks still hold.
    """
    labels = np.asarray(labels)
    metrics = compare(logits, reference, labels)
    n, conf = len(labels), thresholds.confidence
    answers, ref_answers = np.asarray(logits).argmax(1), np.asarray(reference).argmax(1)
    correct, ref_correct = answers == labels, ref_answers == labels
    floor = (artifact.get("checks") or {}).get("agreement_floor")  # a runtime that computes differently by design
    min_agreement = min(thresholds.min_agreement, floor["min_agreement"]) if floor else thresholds.min_agreement
    if rounding:
        min_agreement = min(min_agreement, rounding["min_agreement"])
    ref = artifact["reference"]
    counted, near_ties = _decisive(reference, answers != ref_answers, (rounding or {}).get("near_tie"))
    where = (f" on the {int(counted.sum())} of {n} images where it leads by more than "
             f"{near_ties['steps']:g} output steps" if near_ties else "")
    checks = [(statistics.agreement_verdict(int((answers == ref_answers)[counted].sum()), int(counted.sum()),
                                            min_agreement, conf, f"agreement with {ref}{where}"),
               lambda v: f"top-1 agreement with the {ref} reference{where} is {100 * v.observed:.2f}% "
                         f"({_ci(v)}) < {100 * min_agreement:.2f}%")]
    if not floor:
        checks.append((statistics.drop_verdict(ref_correct, correct, thresholds.max_acc_drop_pp / 100, conf,
                                               f"accuracy drop vs {ref}"),
                       lambda v: f"accuracy {100 * metrics['accuracy']:.2f}% is {100 * v.observed:.2f} pp below the "
                                 f"{ref} reference ({100 * metrics['reference_accuracy']:.2f}%; {_ci(v, 'pp')}), "
                                 f"allowed {thresholds.max_acc_drop_pp} pp"))
    quant_drops = {}
    if artifact["quant"] != "fp32":
        for name, base in (baselines or {}).items():
            if base is None:
                continue
            verdict = statistics.drop_verdict(base, correct, thresholds.max_quant_drop_pp / 100, conf,
                                              f"quantization cost vs {name}")
            quant_drops[name] = 100.0 * verdict.observed
            checks.append((verdict, lambda v, name=name: (
                f"accuracy {100 * metrics['accuracy']:.2f}% is {100 * v.observed:.2f} pp below {name} "
                f"({100 * (metrics['accuracy'] + v.observed):.2f}%; {_ci(v, 'pp')}): quantization costs more "
                f"than --max-quant-drop {thresholds.max_quant_drop_pp} pp")))
    failures = [say_failure(v) for v, say_failure in checks if v.failed]
    undecided = [f"{v.name}: {_value(v)} vs {_value(v, v.threshold)}{v.noise_note()}"
                 for v, _ in checks if v.outcome == "inconclusive"]
    outcome = "failed" if failures else "within noise" if undecided else "shown"
    return {**metrics, "accuracy_drop_pp": 100.0 * (metrics["reference_accuracy"] - metrics["accuracy"]),
            "quant_drop_pp": quant_drops, "passed": not failures, "failures": failures, "outcome": outcome,
            "undecided": undecided, "verdicts": [v.to_dict() for v, _ in checks], "confidence": conf, "images": n,
            "min_agreement": min_agreement, "near_ties": near_ties,
            "loosened": "; ".join(f["why"] for f in (floor, rounding) if f) or None,
            # the file's own right/wrong answer per test image (statistics.pack): what paired comparisons of
            # files against each other need (benchmarks/recovery.py)
            "per_image": statistics.pack(correct)}


def _decisive(reference: np.ndarray, changed: np.ndarray, near_tie: dict | None) -> tuple[np.ndarray, dict | None]:
    """The images the agreement check counts, and what was left out: with `near_tie` ({steps, output_step}),
    those whose reference answer leads the runner-up by more than `steps` output steps (the leads of an int8
    output are whole steps: half a step of margin absorbs the float rounding of the dequantized logits)."""
    reference = np.asarray(reference, np.float64)
    if not near_tie or reference.shape[1] < 2:
        return np.ones(len(reference), bool), None
    top2 = np.sort(reference, axis=1)[:, -2:]
    lead = (top2[:, 1] - top2[:, 0]) / near_tie["output_step"]
    counted = lead > near_tie["steps"] + 0.5
    if not counted.any():  # every answer a near tie: nothing would be left to judge, so every image counts
        return np.ones(len(reference), bool), None
    return counted, {**near_tie, "images": int((~counted).sum()), "changed": int((changed & ~counted).sum())}


def _value(verdict: statistics.Verdict, value: float | None = None) -> str:
    value = verdict.observed if value is None else value
    return f"{100 * value:.2f} pp" if verdict.method.startswith("Newcombe") else f"{100 * value:.2f}%"


def _ci(verdict: statistics.Verdict, unit: str = "%") -> str:
    """'95% CI [96.62, 99.64]%, n=300' (with McNemar's p for a paired accuracy difference)."""
    p = f", McNemar p={verdict.p_value:.2g}" if verdict.p_value is not None else ""
    return (f"{100 * verdict.confidence:g}% CI [{100 * verdict.low:.2f}, {100 * verdict.high:.2f}]"
            f"{'' if unit == '%' else ' '}{unit}, n={verdict.n}{p}")


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
