"""Accuracy and agreement over a test set, for any callable that maps a batch to logits."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .data import DataBundle


def predict(fn: Callable[[torch.Tensor], torch.Tensor], data: DataBundle, batch_size: int = 256,
            device: torch.device | None = None) -> np.ndarray:
    """Logits of fn over the whole test set, as float32 [N, classes]; `device`: where fn's inputs go."""
    outs = []
    with torch.no_grad():
        for images, _ in data.batches("test", batch_size):
            logits = fn(images if device is None else images.to(device))
            outs.append(np.asarray(logits.cpu() if isinstance(logits, torch.Tensor) else logits, dtype=np.float32))
    return np.concatenate(outs)


def accuracy(logits: np.ndarray, labels) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of inputs on which two models pick the same top-1 class."""
    return float((np.asarray(a).argmax(1) == np.asarray(b).argmax(1)).mean())


def compare(logits: np.ndarray, reference: np.ndarray, labels) -> dict:
    diff = np.abs(np.asarray(logits, np.float32) - np.asarray(reference, np.float32))
    return {
        "accuracy": accuracy(logits, labels),
        "reference_accuracy": accuracy(reference, labels),
        "agreement": agreement(logits, reference),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
    }


CHANCE_ALPHA = 0.01  # a model must beat guessing at this significance on its test set


def better_than_chance(correct: int, images: int, classes: int, alpha: float = CHANCE_ALPHA) -> dict:
    """One-sided binomial test of `correct` of `images` test answers against guessing one of `classes` uniformly.

    passed: the model is significantly better than chance (p < alpha). A test set too small to show that
    (e.g. 1 image) does not pass either: nothing can be concluded from it."""
    from scipy.stats import binomtest

    chance = 1.0 / max(classes, 1)
    p_value = float(binomtest(int(correct), int(images), chance, alternative="greater").pvalue) if images else 1.0
    return {"correct": int(correct), "images": int(images), "classes": int(classes), "chance": chance,
            "p_value": p_value, "alpha": alpha, "passed": p_value < alpha}
