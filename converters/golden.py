"""Golden outputs for the demo apps: what the host runtime answers for every bundled test image.

`bundle` writes them as golden_outputs.json beside models.json. Each model's entry holds the logits its own
runtime produced on this host (ExecuTorch's, LiteRT's; Core ML's file runs here only as its weights read back
into PyTorch, and the entry says so) from the bundled uint8 pixels through the preprocessing the apps use:
x = (pixel / 255 - mean[c]) / std[c], every step in float32, with mean and std from models.json. int8 outputs
are the dequantized values, as the apps read them. The apps compare their own logits with these, image by
image: top-1 agreement and the largest |Δlogit|, which `report` holds to `tolerance`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from core import io as atomic

from . import REGISTRY
from .base import ConversionError

GOLDEN = "golden_outputs.json"
SCHEMA_VERSION = 1
PREPROCESSING = ("x = (pixel / 255 - mean[c]) / std[c] in float32 over test_sample.u8 (NCHW; NHWC inputs "
                 "transposed); int8 inputs quantized as round-half-even(x / scale) + zero_point, clamped to "
                 "[-128, 127]")
# A float output may differ across CPUs by the order of its sums (NEON vs AVX, FMA or not): far below this share
# of the largest logit. A dequantized int8 output may differ by one output step (a kernel that rounds a tie the
# other way); more than that is not rounding.
FLOAT_TOLERANCE = 1e-3


class GoldenError(ConversionError):
    """The host runtime could not produce the golden outputs of a bundled file; the message names it."""


def app_inputs(pixels: np.ndarray, mean: list | None, std: list | None) -> np.ndarray:
    """uint8 images (N, C, H, W) to the float32 NCHW batch the apps feed: (p / 255 - mean[c]) / std[c], each
    operation in float32 as Java's and Swift's Float arithmetic does it."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.dtype != np.uint8:
        raise GoldenError(f"golden outputs need uint8 images shaped (N, C, H, W), got {pixels.dtype} {pixels.shape}")
    channels = pixels.shape[1]

    def per_channel(values, fallback: float) -> np.ndarray:
        values = list(values or [fallback])
        if len(values) not in (1, channels):
            raise GoldenError(f"models.json gives {len(values)} normalization values for {channels} channel(s)")
        return np.array(values * (channels // len(values)), dtype=np.float32).reshape(1, channels, 1, 1)

    x = pixels.astype(np.float32) / np.float32(255)
    return (x - per_channel(mean, 0.0)) / per_channel(std, 1.0)


def grid_step(logits: np.ndarray) -> float | None:
    """The spacing of the grid the logits lie on, when they lie on one: a quantized program that dequantizes its
    int8 output inside (the int8 .pte) hands out float logits that are still whole output steps apart."""
    values = np.unique(np.asarray(logits, dtype=np.float64))
    gaps = np.diff(values)
    gaps = gaps[gaps > 0]
    if not len(gaps):
        return None
    step = float(gaps.min())
    steps = (values - values[0]) / step
    return step if np.allclose(steps, np.round(steps), atol=1e-3) else None


def output_step(artifact: dict, logits: np.ndarray | None = None) -> tuple[float | None, str | None]:
    """The output quantization step and where it comes from: an int8 output's scale in models.json; for another
    quantized file, the grid its logits lie on; for a float file, none."""
    out = artifact.get("output") or {}
    if out.get("dtype") == "int8" and out.get("scale"):
        return float(out["scale"]), "models.json output scale"
    if artifact.get("quant") not in ("fp32", "fp16") and logits is not None:
        step = grid_step(logits)
        if step is not None:
            return step, "the spacing of the golden logits (the int8 output is dequantized inside the program)"
    return None, None


def tolerance(artifact: dict, logits: np.ndarray) -> float:
    """The largest |Δlogit| a device may show against these golden logits before `report` flags it."""
    step, _ = output_step(artifact, logits)
    if step is not None:
        return step * (1 + 1e-6)
    return FLOAT_TOLERANCE * max(1.0, float(np.abs(logits).max(initial=0.0)))


def runtime_name(converter) -> str:
    """The runtime as the apps name it in their results (the backend's `app_name`, else its own name)."""
    return converter.app_name or converter.name


def compute(files: dict[str, tuple[Path, dict]], pixels: np.ndarray, source_for: Callable[[dict], object],
            batch_size: int = 64) -> dict:
    """The golden outputs document for {file name: (path, manifest artifact entry)} on `pixels`."""
    models = []
    for file, (path, artifact) in files.items():
        x = app_inputs(pixels, artifact["input"].get("mean"), artifact["input"].get("std"))
        try:
            converter = REGISTRY[artifact["backend"]]
            run, method = converter.runner(path, artifact, source_for(artifact))
            logits = np.concatenate([np.asarray(run(x[i:i + batch_size]), dtype=np.float32)
                                     for i in range(0, len(x), batch_size)])
        except Exception as exc:
            raise GoldenError(f"golden outputs: {file} did not run in its host runtime ({type(exc).__name__}: "
                              f"{exc}); rerun `export` for it, then `bundle`") from exc
        logits = logits.reshape(len(x), -1)
        if not np.isfinite(logits).all():
            raise GoldenError(f"golden outputs: {file} gave NaN or infinite logits on the bundled images; "
                              "rerun `export` and `verify` for it")
        step, step_source = output_step(artifact, logits)
        models.append({"file": file, "runtime": runtime_name(converter), "quant": artifact["quant"], "method": method,
                       "output_step": step, "output_step_source": step_source, "tolerance": tolerance(artifact, logits),
                       "top1": logits.argmax(1).tolist(), "logits": logits.tolist()})
    return {"schema_version": SCHEMA_VERSION, "count": int(len(pixels)),
            "classes": len(models[0]["logits"][0]) if models and models[0]["logits"] else 0,
            "preprocessing": PREPROCESSING, "models": models}


def write(dest: Path, document: dict, run_id: str | None = None) -> Path:
    """golden_outputs.json in the app folder, atomically (compact: it holds count x classes numbers per model)."""
    return atomic.write_text(Path(dest) / GOLDEN, json.dumps({**document, "run_id": run_id},
                                                              separators=(",", ":")) + "\n")
