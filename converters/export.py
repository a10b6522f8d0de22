"""One export-and-verify path, for the pipeline's `export`/`verify` and the study alike.

`export_part` runs one backend on one part (its float baseline, or its files of the source's
scheme) and never lets one backend's failure stop the others: what it made is kept, and why
the rest is missing comes back as one line each. `verify_file` runs one file over the test set
in its own runtime and holds it to its PyTorch reference (converters/verify.py).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.data import DataBundle
from core.evaluate import predict
from core.io import OutputDirError

from .base import Artifact, ConversionError, Converter, ExportOptions, ExportSource, PartialExport
from .verify import Thresholds, run_artifact, verify

PARTS = ("fp32", "scheme")  # export_baseline, and export_scheme of source.scheme


@dataclass
class PartResult:
    made: list[Artifact] = field(default_factory=list)  # written under their final names, and checked
    failures: list[str] = field(default_factory=list)  # one line per file that is missing, saying why

    @property
    def ok(self) -> bool:
        return not self.failures


def export_part(conv: Converter, part: str, source: ExportSource, out: Path, options: ExportOptions) -> PartResult:
    """`conv`'s float baseline (part "fp32") or its files of `source.scheme`, into `out`. A full or read-only disk
    (OutputDirError) stops everything; any other failure is this backend's alone, and its traceback goes to the log
    when it is a library's exception rather than a check's ConversionError."""
    try:
        conv.check_dependencies()
        return PartResult((conv.export_baseline if part == "fp32" else conv.export_scheme)(source, out, options))
    except OutputDirError:
        raise
    except Exception as exc:
        reasons = []
        for failure in exc.failures if isinstance(exc, PartialExport) else [exc]:
            if isinstance(failure, ConversionError):
                reasons.append(str(failure))
                continue
            traceback.print_exception(failure)
            first = (str(failure).strip().splitlines() or [""])[0][:300]
            reasons.append(f"{type(failure).__name__}: {first} (the full traceback is in the log)")
        return PartResult(exc.artifacts if isinstance(exc, PartialExport) else [], reasons)


def reference_model(source: ExportSource, artifact: dict):
    """The PyTorch model a file must agree with: the fp32 model, the scheme's quantized program, or its float
    weights (`artifact["reference"]`)."""
    return {"fp32": source.fp32_model, "quantized": source.program, "float": source.float_model}[artifact["reference"]]


def reference_logits(source: ExportSource, artifact: dict, data: DataBundle, cache: dict) -> np.ndarray:
    """The reference's logits over the test set, computed once per (reference, scheme) in `cache`."""
    key = (artifact["reference"], (source.scheme.tag if source.scheme else None))
    if key not in cache:
        cache[key] = predict(reference_model(source, artifact), data)
    return cache[key]


def verify_file(path: Path, artifact: dict, source: ExportSource, data: DataBundle, reference: np.ndarray,
                thresholds: Thresholds, baselines: dict | None = None) -> tuple[dict, np.ndarray | None]:
    """Run the file over the test set in its runtime and hold it to `reference` (logits) and `baselines`
    (per-image answers of fp32 and PTQ): the verification result, and the file's logits (None when its runtime
    could not run it)."""
    labels = data.test_labels.numpy()
    start = time.perf_counter()
    try:
        logits, method = run_artifact(path, artifact, source, data)
    except Exception as exc:
        return {"passed": False, "failures": [f"could not run: {type(exc).__name__}: {exc}"]}, None
    result = verify(artifact, logits, reference, labels, thresholds, baselines)
    result.update({"method": method, "seconds": time.perf_counter() - start})
    return result, logits
