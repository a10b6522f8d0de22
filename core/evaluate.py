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
