"""Verdicts as statistics: is a difference seen on n test images beyond its noise?

Every accuracy decision of the pipeline compares two sets of answers to the SAME test images, so the
tests here are paired:

- agreement (a share of images, against a floor): a Clopper-Pearson interval of the share;
- an accuracy drop (reference minus artifact, against an allowance): Newcombe's interval for the difference
  of two paired proportions (his method 10: Wilson intervals of both accuracies, joined through the phi
  correlation of the 2x2 table of right/wrong answers);
- which of two models is better (PTQ against QAT): an exact McNemar test on the images where exactly one
  of them is right.

A threshold keeps its meaning as an effect size ("at least 99.5% agreement", "at most 0.5 pp lost"); the
interval decides whether the data show the effect on either side of it:

- "pass":         the whole interval is on the good side: shown within the threshold;
- "fail":         the whole interval is on the bad side: shown beyond it;
- "inconclusive": the interval straddles it: not distinguishable with n images. `images_needed` says about
                  how many images, at the observed rates, would decide it.

Only "fail" fails a file; an inconclusive check is reported as such, with the images it would need.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MAX_IMAGES = 10_000_000  # beyond this, "images needed" is reported as more than it


@dataclass(frozen=True)
class Verdict:
    """One check: an observed value, its interval, the threshold and which side of it the interval lies."""
    name: str
    observed: float
    low: float
    high: float
    threshold: float
    outcome: str  # pass | fail | inconclusive
    n: int
    method: str
    confidence: float = CONFIDENCE
    needed: int | None = None  # inconclusive: images that would decide it at the observed rates (None: no size would)
    p_value: float | None = None

    @property
    def failed(self) -> bool:
        return self.outcome == "fail"

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def noise_note(self) -> str:
        """' (within noise: n=300, ~1,200 images would decide it)' for an inconclusive verdict, else ''."""
        if self.outcome != "inconclusive":
            return ""
        if self.needed is None:
            more = "no test set size decides it at the observed rates"
        elif self.needed > MAX_IMAGES:
            more = f"more than {MAX_IMAGES:,} images would be needed"
        else:
            more = f"~{self.needed:,} images would decide it"
        return f" (not distinguishable with n={self.n}: {more})"


def proportion_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a share k/n; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def _wilson(k: float, n: float, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_table(first_correct, second_correct) -> tuple[int, int, int, int]:
    """(both right, only the first right, only the second right, both wrong) over the same images."""
    a, b = np.asarray(first_correct, bool), np.asarray(second_correct, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired answers must cover the same images: {a.shape} vs {b.shape}")
    return int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum())


def paired_drop_interval(table: tuple[float, float, float, float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(drop, low, high): the first model's accuracy minus the second's on the same images, with Newcombe's
    hybrid score interval for paired proportions. `table` is `paired_table`'s (may be scaled, non-integer)."""
    both, only_first, only_second, neither = table
    n = both + only_first + only_second + neither
    if n <= 0:
        return 0.0, -1.0, 1.0
    z = stats.norm.ppf(0.5 + confidence / 2)
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    l1, u1 = _wilson(both + only_first, n, z)
    l2, u2 = _wilson(both + only_second, n, z)
    margins = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    phi = (both * neither - only_first * only_second) / math.sqrt(margins) if margins > 0 else 0.0
    drop = p1 - p2
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return drop, max(-1.0, drop - below), min(1.0, drop + above)


def mcnemar(first_correct, second_correct) -> dict:
    """Exact McNemar test (two-sided) of 'the two models are equally accurate' on the same images."""
    _, only_first, only_second, _ = paired_table(first_correct, second_correct)
    discordant = only_first + only_second
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_first, discordant, 0.5).pvalue)
    return {"test": "exact McNemar", "n": int(np.asarray(first_correct).size), "only_first": only_first,
            "only_second": only_second, "p": p}


def _outcome(low: float, high: float, threshold: float, higher_is_better: bool) -> str:
    if higher_is_better:
        return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"
    return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"


def _needed(decides, n: int) -> int | None:
    """The smallest multiple of n (then refined by bisection) at which `decides(size)` is True, or None."""
    if n <= 0:
        return None
    size = n
    while not decides(size):
        size *= 2
        if size > 4 * MAX_IMAGES:
            return None
    low, high = size // 2, size
    while high - low > max(1, high // 100):
        mid = (low + high) // 2
        low, high = (low, mid) if decides(mid) else (mid, high)
    return high


def agreement_verdict(same: int, n: int, floor: float, confidence: float = CONFIDENCE, name: str = "agreement") -> Verdict:
    """Is the share of images on which two models give the same top-1 answer at least `floor`?"""
    low, high = proportion_interval(same, n, confidence)
    outcome = _outcome(low, high, floor, higher_is_better=True)
    needed = None
    if outcome == "inconclusive" and n and same / n != floor:
        rate = same / n
        needed = _needed(lambda size: _outcome(*proportion_interval(round(rate * size), size, confidence), floor, True)
                         != "inconclusive", n)
    return Verdict(name, same / n if n else float("nan"), low, high, floor, outcome, n, "Clopper-Pearson", confidence,
                   needed)


def drop_verdict(reference_correct, artifact_correct, allowance: float, confidence: float = CONFIDENCE,
                 name: str = "accuracy drop") -> Verdict:
    """Is the reference's accuracy minus the artifact's, on the same images, at most `allowance` (a share)?"""
    table = paired_table(reference_correct, artifact_correct)
    n = sum(table)
    drop, low, high = paired_drop_interval(table, confidence)
    outcome = _outcome(low, high, allowance, higher_is_better=False)
    needed = None
    if outcome == "inconclusive" and drop != allowance:
        needed = _needed(lambda size: _outcome(*paired_drop_interval(tuple(c * size / n for c in table), confidence)[1:],
                                               allowance, False) != "inconclusive", n)
    test = mcnemar(reference_correct, artifact_correct)
    return Verdict(name, drop, low, high, allowance, outcome, n, "Newcombe paired", confidence, needed, test["p"])


CHANCE_ALPHA = 0.01  # a model must beat guessing at this significance on its test set


def better_than_chance(correct: int, images: int, classes: int, alpha: float = CHANCE_ALPHA) -> dict:
    """One-sided binomial test of `correct` of `images` test answers against guessing one of `classes` uniformly.

    passed: the model is significantly better than chance (p < alpha). A test set too small to show that
    (e.g. 1 image) does not pass either: nothing can be concluded from it."""
    chance = 1.0 / max(classes, 1)
    p_value = float(stats.binomtest(int(correct), int(images), chance, alternative="greater").pvalue) if images else 1.0
    return {"correct": int(correct), "images": int(images), "classes": int(classes), "chance": chance,
            "p_value": p_value, "alpha": alpha, "passed": p_value < alpha}


# ---- per-image answers, kept compactly in the manifest ---------------------------------------------------
def pack(correct) -> dict:
    """Per-image right/wrong answers as {n, bits}: 10,000 images take 1,668 characters of base64."""
    bits = np.asarray(correct, bool)
    return {"n": int(bits.size), "bits": base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")}


def unpack(packed: dict | None, n: int | None = None) -> np.ndarray | None:
    """The answers `pack` stored, or None when there are none (or they cover another number of images)."""
    if not packed or (n is not None and packed.get("n") != n):
        return None
    raw = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(raw)[: packed["n"]].astype(bool)
