"""`--nbits auto:PP` in the shipped export: the width of each layer's Core ML palette, chosen by the export stage.

The choice is study/palette.py's (each layer's read-back LUT weights at 8, 6, 4, 3 and 2 bits, walked least
sensitive first on the test set); the converter then writes one file with those widths (`layer_nbits`) and
checks each LUT's width in it. The choice is made before the stage marks anything running, so a setting the
network cannot take changes nothing in OUT.
"""

from __future__ import annotations

from converters import ExportOptions
from converters.coreml_palette import auto_budget
from converters.verify import Thresholds


def active(cfg) -> bool:
    return auto_budget(cfg.nbits) is not None


def choose(pipeline, source, options: ExportOptions) -> dict:
    """study/palette.py's choice for this run's float weights, test set and verify thresholds."""
    from study import palette

    return palette.choose(source, pipeline.data, options, auto_budget(options.nbits), Thresholds.from_config(pipeline.cfg))


def section(manifest: dict) -> list[str]:
    """report.md: each palettized file whose widths were chosen per layer, with every layer's width, read from the
    file's own export checks, and how the choice went."""
    lines = []
    for file, a in sorted(manifest.get("artifacts", {}).items()):
        widths = (a.get("checks") or {}).get("layer_nbits")
        if not widths:
            continue
        backend = f"{a['backend']}:{(a.get('scheme') or {}).get('weights_of', '')}"
        choice = (manifest.get("backends", {}).get(backend) or {}).get("nbits_auto") or {}
        lines += [f"## Palette width per layer: `{file}` (--nbits {a['checks'].get('nbits')})", ""]
        if choice:
            lines += [f"Chosen from {', '.join(map(str, choice['candidates']))} bits on {choice['test_images']} test "
                      f"images: accuracy {100 * choice['accuracy']:.2f}% against the float reference's "
                      f"{100 * choice['reference_accuracy']:.2f}% ({choice['drop_pp']:+.2f} pp, budget "
                      f"{choice['budget_pp']:g} pp), top-1 agreement {100 * choice['agreement']:.2f}%."
                      + (f" {choice['note']}." if choice.get("note") else ""), ""]
        lines += ["| layer | bits |", "|---|---:|"] + [f"| `{k}` | {v} |" for k, v in widths.items()] + [""]
    return lines
