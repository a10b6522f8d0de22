"""The interface every converter backend implements: export an artifact, then run it."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from core.workspace import ExportSource  # noqa: F401  (re-exported: the converters' input)


class ConversionError(RuntimeError):
    """A backend could not produce a correct artifact; the message names it and the failed check."""


class MissingDependency(ConversionError):
    """The backend's Python package is not installed."""


@dataclass
class Artifact:
    file: str  # name inside OUT
    backend: str
    quant: str  # int8, fp32, fp16, pal4, ...
    format: str  # pte, tflite, mlpackage
    reference: str  # the PyTorch model it must agree with: qat | fp32 | qat_float
    input: dict  # shape, layout, dtype, mean, std, scale, zero_point
    output: dict
    checks: dict = field(default_factory=dict)  # structural checks made at export
    export_seconds: float = 0.0
    scheme: dict | None = None  # the quantization scheme in full (core/schemes.py Scheme.describe); None for baselines

    def to_dict(self) -> dict:
        return asdict(self)


Runner = Callable[[np.ndarray], np.ndarray]  # normalized float32 NCHW batch -> float32 logits


class Converter(ABC):
    name: str
    packages: tuple[str, ...]  # import names the backend needs
    settings: tuple[str, ...]  # RunConfig fields that change this backend's artifacts

    def check_dependencies(self) -> None:
        missing = [p for p in self.packages if importlib.util.find_spec(p) is None]
        if missing:
            raise MissingDependency(f"{self.name}: missing Python package(s) {', '.join(missing)}; run `make setup`")

    def validate(self, options) -> list[str]:
        """Problems with this backend's settings, found before any stage runs (empty list: none)."""
        return []

    @abstractmethod
    def export_baseline(self, source: ExportSource, out: Path, options) -> list[Artifact]:
        """Write this backend's float baseline (fp32 or fp16) of the fp32 model, atomically, and check it."""

    @abstractmethod
    def export_scheme(self, source: ExportSource, out: Path, options) -> list[Artifact]:
        """Write this backend's artifacts of `source.scheme` (atomically) and check their structure."""

    @abstractmethod
    def runner(self, path: Path, artifact: dict, source: ExportSource, threads: int = 1) -> tuple[Runner, str]:
        """A function running the artifact in its real runtime, and a word on how it runs."""


def require_support(scheme, runtime: str) -> str:
    """How `runtime` exports `scheme` (core/schemes.py), or a ConversionError with the reason it cannot."""
    from core.schemes import support

    s = support(scheme, runtime)
    if not s.ok:
        raise ConversionError(f"{runtime} cannot export {scheme.summary()}: {s.reason}")
    return s.how


def float_input_spec(source: ExportSource, batch: int = 1, layout: str = "NCHW") -> dict:
    c, h, w = source.input_shape
    shape = [batch, c, h, w] if layout == "NCHW" else [batch, h, w, c]
    return {"shape": shape, "layout": layout, "dtype": "float32", "mean": source.mean, "std": source.std,
            "scale": None, "zero_point": None}


def float_output_spec(source: ExportSource, batch: int = 1) -> dict:
    return {"shape": [batch, len(source.labels)], "dtype": "float32", "scale": None, "zero_point": None}
