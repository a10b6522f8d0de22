"""The study's quantized models, made by core's own PTQ and QAT for OUT's scheme.

Nothing here quantizes by itself: `core.qat.ptq` runs the many calibration-only PTQ runs of the
sensitivity section, and `core.quantize.post_training` / `quant_aware` make every model the study
exports (mixed precision, pruned variants, weights only). Layers stay float through core's
`keep_float` (XNNPACKQuantizer's per-module filter). What the study adds: which layers
`--keep-float` may name, a variant's programs saved and loaded back as the `qat` stage does it,
and the converters' option set with the explicit mixed-precision `float_layers`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from core import qat, quantize
from core.config import RunConfig
from core.data import DataBundle
from core.distill import Distillation
from core.recipe import Recipe
from core.schemes import Scheme
from core.workspace import ExportSource

from converters import ExportOptions

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the leaf conv and linear modules, in definition order: what --keep-float can name."""
    return [name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]


def ptq_program(model: nn.Module, data: DataBundle, shape: tuple[int, ...], cfg: RunConfig, scheme: Scheme,
                keep_float: tuple[str, ...] = ()) -> torch.fx.GraphModule:
    """PTQ (calibration on --calib-batches training batches), folded; `keep_float` layers stay float."""
    return qat.ptq(model, data, shape, cfg.calib_batches, cfg.batch_size, tuple(keep_float), scheme)


def quantized(model: nn.Module, data: DataBundle, shape: tuple[int, ...], cfg: RunConfig, scheme: Scheme, mode: str,
              keep_float: tuple[str, ...] = (), each_step=None) -> quantize.Quantized:
    """The scheme by PTQ or by QAT (the `qat` stage's schedule), as core.quantize makes it for the pipeline."""
    if mode == "qat":
        return quantize.quant_aware(model, scheme, data, shape, qat.QATSchedule.from_config(cfg), tuple(keep_float),
                                    recipe=Recipe.from_config(cfg), each_step=each_step,
                                    distill=Distillation.from_config(cfg))
    return quantize.post_training(model, scheme, data, shape, cfg.calib_batches, cfg.batch_size, tuple(keep_float))


def variant(base: ExportSource, result: quantize.Quantized, folder: Path, **changes) -> ExportSource:
    """The converters' input for a variant: its programs saved into `folder` as the `qat` stage saves them
    (core.quantize.save), loaded back, and put in place of OUT's; `changes` replace other fields."""
    paths = quantize.save(result, base.input_shape, Path(folder))
    unfolded = paths.get(quantize.UNFOLDED)
    fields = {"program": quantize.load_program(paths[quantize.PROGRAM]),
              "unfolded": quantize.load_program(unfolded) if unfolded else None,
              "float_model": result.float_model.eval(), **changes}
    return dataclasses.replace(base, **fields)


def export_options(cfg: RunConfig, float_layers: tuple[str, ...] = (), **overrides) -> ExportOptions:
    """The run's settings as the converters read them, plus the study's explicit mixed-precision option.

    Study artifacts are static batch 1 (what the latency comparisons time).
    """
    return ExportOptions.from_config(cfg, **{"dynamic_batch": 0, **overrides, "float_layers": tuple(float_layers)})
