"""Converter backends by name. Each implements `Converter`: it describes itself, exports, then runs what it made.

Adding a runtime is one module with a `Converter` subclass and one line in REGISTRY (or `register()`).
"""

from __future__ import annotations

from core import config

from .base import Artifact, ConversionError, Converter, ExportOptions, ExportSource, MissingDependency, PartialExport
from .coreml import CoreMLConverter
from .executorch import ExecuTorchConverter
from .tflite import TFLiteConverter

REGISTRY: dict[str, Converter] = {c.name: c for c in (ExecuTorchConverter(), TFLiteConverter(), CoreMLConverter())}


def register(converter: Converter) -> Converter:
    """Add a backend: from then on --backends, `schemes`, export, verify, bench and the reports know it."""
    REGISTRY[converter.name] = converter
    if converter.name not in config.BACKENDS:
        config.BACKENDS.append(converter.name)
    return converter


def select(names: str) -> list[Converter]:
    """Parse a comma-separated backend list ('all' or empty means every backend)."""
    if names.strip() == "none":
        return []
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names and names != "all" else list(REGISTRY)
    unknown = [n for n in wanted if n not in REGISTRY]
    if unknown:
        raise ConversionError(f"unknown backend(s) {unknown}; choose from {', '.join(REGISTRY)}")
    return [REGISTRY[n] for n in wanted]


def by_format(fmt: str) -> Converter | None:
    """The backend whose files have this suffix (`pte`, `tflite`, `mlpackage`), if one is registered."""
    return next((c for c in REGISTRY.values() if c.format == fmt), None)


__all__ = ["Artifact", "ConversionError", "Converter", "ExportOptions", "ExportSource", "MissingDependency", "PartialExport", "REGISTRY",
           "by_format", "register", "select"]
