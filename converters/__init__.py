"""Converter backends by name. Each implements `Converter`: export, then a runner to verify by."""

from __future__ import annotations

from .base import Artifact, ConversionError, Converter, ExportSource, MissingDependency, PartialExport
from .coreml import CoreMLConverter
from .executorch import ExecuTorchConverter
from .tflite import TFLiteConverter

REGISTRY: dict[str, Converter] = {c.name: c for c in (ExecuTorchConverter(), TFLiteConverter(), CoreMLConverter())}


def select(names: str) -> list[Converter]:
    """Parse a comma-separated backend list ('all' or empty means every backend)."""
    if names.strip() == "none":
        return []
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names and names != "all" else list(REGISTRY)
    unknown = [n for n in wanted if n not in REGISTRY]
    if unknown:
        raise ConversionError(f"unknown backend(s) {unknown}; choose from {', '.join(REGISTRY)}")
    return [REGISTRY[n] for n in wanted]


__all__ = ["Artifact", "ConversionError", "Converter", "ExportSource", "MissingDependency", "PartialExport", "REGISTRY", "select"]
