"""Core ML palettization settings checked against a network, and palettes of a width per layer (--nbits auto:PP).

coremltools skips, with a log line only, a weight whose output channels a --group-size does not divide: it would
stay dense fp16 in a file that claims to be palettized. Such settings are refused here, naming the layer, before
the export stage writes anything. The widths of `--nbits auto:PP` are chosen by the export stage (study/palette.py,
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


def group_problems(model: nn.Module, options, skip: tuple[str, ...] = ()) -> list[str]:
    """Under per_grouped_channel: each palettized layer whose output channels --group-size does not divide."""
    if options.granularity != "per_grouped_channel":
        return []
    layers = palettized_layers(model, options.weight_threshold, skip)
    bad = {name: shape[0] for name, shape in layers.items() if shape[0] % options.group_size}
    if not bad:
        return []
    common = math.gcd(*(shape[0] for shape in layers.values()))
    fits = [g for g in (32, 16, 8, 4, 2, 1) if common % g == 0]
    named = ", ".join(f"`{name}` ({channels} output channels)" for name, channels in bad.items())
    return [f"--group-size {options.group_size} does not divide the output channels of {named}: coremltools would "
            f"leave {'that layer' if len(bad) == 1 else 'those layers'} dense fp16 in the palettized file. Use a group "
            f"size that divides every palettized layer's output channels (here {', '.join(map(str, fits[:3]))}), or "
            "--granularity per_tensor"]

