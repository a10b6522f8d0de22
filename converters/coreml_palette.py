"""Core ML palettization settings checked against a network, and palettes of a width per layer (--nbits auto:PP).

coremltools skips, with a log line only, a weight whose output channels a --group-size does not divide: it
stays dense fp16. A group size that leaves every layer out is refused here, naming them, before the export stage
writes anything; one that leaves some out is recorded with those layers' names. The widths of `--nbits auto:PP` are chosen by the export stage (study/palette.py,
on the test set) and reach the converter as `layer_nbits`.
"""

from __future__ import annotations

import math

import torch.nn as nn

AUTO_WIDTHS = (8, 6, 4, 3, 2)  # what --nbits auto:PP chooses from, widest first
QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def auto_budget(nbits) -> float | None:
    """PP of `--nbits auto:PP` (percentage points); None for a plain number of bits. ValueError for other text."""
    if not isinstance(nbits, str):
        return None
    word, _, budget = nbits.strip().partition(":")
    if word.lower() != "auto":
        raise ValueError(f"--nbits {nbits!r}: give a number of bits or auto:PP (e.g. auto:1)")
    try:
        pp = float(budget)
    except ValueError:
        raise ValueError(f"--nbits {nbits!r}: write auto:PP with PP the percentage points the palettized file may lose "
                         "against its float reference, e.g. auto:1") from None
    if not (pp >= 0 and math.isfinite(pp)):
        raise ValueError(f"--nbits {nbits!r}: the budget PP must be a number >= 0 percentage points")
    return pp


def palettized_layers(model: nn.Module, weight_threshold: int, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """The conv/linear layers whose weight Core ML palettizes (more than `weight_threshold` elements), with their
    weight's shape, in the model's order; the layers in `skip` (kept float) left out."""
    return {name: tuple(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, QUANTIZABLE) and m.weight.numel() > weight_threshold and name not in skip}


def ungrouped(model: nn.Module, options, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Under per_grouped_channel: the palettized layers whose output channels --group-size does not divide (with
    their channel count). coremltools leaves them dense fp16."""
    if options.granularity != "per_grouped_channel":
        return {}
    layers = palettized_layers(model, options.weight_threshold, skip)
    return {name: shape[0] for name, shape in layers.items() if shape[0] % options.group_size}


def group_problems(model: nn.Module, options, skip: tuple[str, ...] = ()) -> list[str]:
    """A --group-size that divides none of the palettized layers' output channels: the file would hold no LUT.

    One that divides some only is not refused (the default 16 leaves 12 of mobilenet_v3_small's layers out): those
    layers stay dense fp16, and the converter names them (`checks.dense_group_size`)."""
    layers = palettized_layers(model, options.weight_threshold, skip)
    bad = ungrouped(model, options, skip)
    if not bad or len(bad) < len(layers):
        return []
    common = math.gcd(*(shape[0] for shape in layers.values()))
    fits = [g for g in (32, 16, 8, 4, 2) if common % g == 0] or [1]
    named = ", ".join(f"`{name}` ({channels} output channels)" for name, channels in bad.items())
    return [f"--group-size {options.group_size} divides the output channels of no palettized layer ({named}): "
            f"coremltools would leave every layer dense fp16, so the file would not be palettized. Use a group size "
            f"that divides them (here {', '.join(map(str, fits[:3]))}), or --granularity per_tensor"]
