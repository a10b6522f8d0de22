"""The interface every converter backend implements: export an artifact, then run it."""

from __future__ import annotations

import importlib.util
import platform
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from core.errors import BadInput
from core.schemes import Scheme, Support
from core.workspace import ExportSource  # noqa: F401  (re-exported: the converters' input)


class ConversionError(BadInput, RuntimeError):
    """A backend could not produce a correct artifact; the message names it and the failed check."""


class PartialExport(ConversionError):
    """Some of a backend's files were made and checked, and others failed: `artifacts` are the good ones
    (written under their final names), `failures` say why each other file is missing."""

    def __init__(self, artifacts: list, failures: list[ConversionError]):
        self.artifacts, self.failures = list(artifacts), list(failures)
        super().__init__("; ".join(str(f) for f in self.failures))


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


@dataclass(frozen=True)
class ExportOptions:
    """What the converters read of a run's settings (the export group of core/config.py), and the study's explicit
    mixed precision: one typed value instead of the whole config."""

    allow_fallback: bool  # ExecuTorch: accept ops left outside XNNPACK
    dynamic_batch: int  # ExecuTorch: max batch of a dynamic-batch .pte (0: static batch 1)
    nhwc: bool  # TFLite: channels-last input
    nbits: int | str  # Core ML palettization: bits, or auto:PP (the widths per layer come in layer_nbits)
    granularity: str
    group_size: int
    weight_threshold: int
    float_layers: tuple[str, ...] = ()  # layers the scheme's program left float (the study's --keep-float)
    layer_nbits: tuple[tuple[str, int], ...] = ()  # --nbits auto:PP: (layer, palette bits) as the export chose them

    @classmethod
    def from_config(cls, cfg, **changes) -> "ExportOptions":
        values = {f.name: getattr(cfg, f.name) for f in fields(cls) if f.name not in ("float_layers", "layer_nbits")}
        return cls(**{**values, **changes})


class Converter(ABC):
    """One backend, and everything the rest of the project needs to know of it: adding a runtime is a subclass of
    this and one line in converters/__init__.py's REGISTRY."""

    name: str  # in --backends and the manifest
    display_name: str  # in tables, messages and reports: "ExecuTorch (XNNPACK)"
    format: str  # its files' suffix, without the dot: "pte"
    packages: tuple[str, ...]  # import names the backend needs
    settings: tuple[str, ...]  # RunConfig fields that change this backend's artifacts
    systems: tuple[str, ...] = ()  # the platform.system() names its runtime runs on; empty: every host
    runtime_modules: tuple[str, ...] = ()  # what a process imports to run its files (before the bench reads memory)
    thread_control: str = "not controllable"  # how a thread count reaches its runtime, for the bench report
    takes_threads: bool = False  # does set_threads(n) change how many threads its runtime uses?
    app_name: str = ""  # what the Android/iOS apps call this runtime in their results (empty: `name`)
    # Verify checks the weights stored in the file itself (not a second conversion), so a failed cost check
    # (agreement, accuracy drop) measures the scheme, not the conversion (the zoo's "cost" verdict).
    checks_stored_weights: bool = False

    @abstractmethod
    def support(self, scheme: Scheme) -> Support:
        """Does this backend export `scheme`, and through what (its row of the support matrix)?"""

    def require_support(self, scheme: Scheme) -> str:
        """How this backend exports `scheme`, or a ConversionError with the reason it cannot."""
        s = self.support(scheme)
        if not s.ok:
            raise ConversionError(f"{self.name} cannot export {scheme.summary()}: {s.reason}")
        return s.how

    def runs_here(self) -> str | None:
        """Why this host cannot run this backend's files (None: it can)."""
        if self.systems and platform.system() not in self.systems:
            return f"{self.display_name} runs only on {', '.join(self.systems)}, not on {platform.system()}"
        return None

    def batch_support(self, artifact: dict, batch: int) -> str | None:
        """Why `artifact` cannot run `batch` images in one call (None: it can)."""
        if not artifact["input"].get("dynamic_batch"):
            return "static batch-1 export (input.dynamic_batch is false)"
        if artifact["input"]["shape"][0] < batch:
            return f"dynamic batch up to {artifact['input']['shape'][0]} only, < {batch}"
        return None

    def set_threads(self, n: int) -> dict:
        """Give the runtime n threads before a file is loaded; what it reports back (empty: nothing to report)."""
        return {}

    def outside_ops(self, artifact: dict) -> dict[str, int] | str:
        """What of the file runs outside its runtime's fast path, op -> count (the model and zoo tables), or a
        sentence where that is so by design."""
        return {}

    def threads_note(self, reported: list[dict]) -> str | None:
        """A line for the bench report on what the runtime read back of the thread counts it was given (what
        `set_threads` returned, with the count asked as `threads`, over its files); None: nothing to say."""
        return None

    def placement(self, artifact: dict) -> tuple[str, str]:
        """Its row of the report's op placement: where the file's ops run, and what runs outside the fast path."""
        return "–", "–"

    def how_it_runs(self, artifact: dict) -> str:
        """How `runner` runs `artifact` on this host: "runtime" (in its own runtime), "readback" (its weights, read
        back from the file, in PyTorch) or "simulated" (its numbers checked equal to a PyTorch graph, which runs)."""
        return "runtime"

    def same_settings(self, artifact: dict, options: ExportOptions) -> bool:
        """Would `options` write `artifact` the same way (so the study may take the file over)?"""
        return True

    def float_in_file(self, artifact: dict, layers: tuple[str, ...]) -> dict[str, bool] | None:
        """Per layer that --keep-float left float: does the file itself hold it float? None: the file does not say."""
        return None

    def kept_float_note(self, artifact: dict, layers: tuple[str, ...]) -> str:
        """The report's line on what the file itself shows of the layers --keep-float left float."""
        found = self.float_in_file(artifact, layers)
        return "–" if found is None else ", ".join(f"`{k}` {'yes' if v else '**no**'}" for k, v in found.items())

    def mixed_findings(self, row: dict, full: dict | None, layers: tuple[str, ...]) -> dict:
        """What the study's mixed-precision section records of this backend's file `row` with `layers` kept
        float, beside `full`, the same runtime's full-int8 file (keys of its results)."""
        return {}

    def file_kinds(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The files a default export makes (the zoo table's columns): a label, and fnmatch patterns of their quant."""
        return (f".{self.format} fp32", ("fp32",)), (f".{self.format} int8", ("int8",))

    def check_dependencies(self) -> None:
        missing = [p for p in self.packages if importlib.util.find_spec(p) is None]
        if missing:
            raise MissingDependency(f"{self.name}: missing Python package(s) {', '.join(missing)}; run `make setup`")

    def validate(self, options: ExportOptions) -> list[str]:
        """Problems with this backend's settings, found before any stage runs (empty list: none)."""
        return []

    def source_problems(self, source: ExportSource, options: ExportOptions) -> list[str]:
        """Problems of this backend's settings with this network (a layer they cannot fit), found before the export
        stage writes anything (empty list: none)."""
        return []

    @abstractmethod
    def export_baseline(self, source: ExportSource, out: Path, options: ExportOptions) -> list[Artifact]:
        """Write this backend's float baseline (fp32 or fp16) of the fp32 model, atomically, and check it."""

    @abstractmethod
    def export_scheme(self, source: ExportSource, out: Path, options: ExportOptions) -> list[Artifact]:
        """Write this backend's artifacts of `source.scheme` (atomically) and check their structure."""

    @abstractmethod
    def runner(self, path: Path, artifact: dict, source: ExportSource, threads: int = 1) -> tuple[Runner, str]:
        """A function running the artifact in its real runtime, and a word on how it runs."""


def ops_text(counts: dict, limit: int = 8) -> str:
    """`op ×n` for the most frequent ops, for the report's op placement."""
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{op} ×{n}" for op, n in top[:limit])
    return text + (f", … ({len(top) - limit} more)" if len(top) > limit else "") if top else "–"


def float_layers(options, scheme) -> tuple[str, ...]:
    """The explicit mixed-precision option (the study's --keep-float): the layers the scheme's program left float.

    Only an explicit `float_layers` option lets float conv/linear ops into a quantized file; a normal
    export still demands that every one of them is quantized. The layers must have been kept float
    when the program was made (core.qat's `keep_float`); the converters check the file agrees.
    A float baseline (`scheme` None) has nothing to keep float: empty.
    """
    layers = tuple(options.float_layers) if scheme is not None else ()
    if layers and scheme.activations != "static":
        raise ConversionError(f"float_layers {list(layers)}: mixed precision applies to static int8 schemes (a PT2E "
                              f"graph with layers left float), not to {scheme.summary()}")
    return layers


def mixed(name: str, layers: tuple[str, ...]) -> str:
    """The quantization label (and file-name part) of a mixed-precision file: `int8` -> `int8_mixed`."""
    return f"{name}_mixed" if layers else name


def float_input_spec(source: ExportSource, batch: int = 1, layout: str = "NCHW") -> dict:
    c, h, w = source.input_shape
    shape = [batch, c, h, w] if layout == "NCHW" else [batch, h, w, c]
    return {"shape": shape, "layout": layout, "dtype": "float32", "mean": source.mean, "std": source.std,
            "scale": None, "zero_point": None}


def float_output_spec(source: ExportSource, batch: int = 1) -> dict:
    return {"shape": [batch, len(source.labels)], "dtype": "float32", "scale": None, "zero_point": None}
