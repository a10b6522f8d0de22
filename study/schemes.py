"""Every call of the study that builds a quantizer, a QAT run or a converter's option set, in one place.

The rest of the study asks for "PTQ with these layers float", "QAT of this model", "Core ML
weights palettized to n bits" and so on; only this module knows how core.qat, the converters
and coremltools.optimize.coreml spell that. When those interfaces grow (weight granularity,
symmetry, dynamic activations, ...), this is the file to adapt.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
from torch.export import Dim

from core import qat
from core.config import RunConfig
from core.data import DataBundle

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


# ---- PyTorch (PT2E, XNNPACKQuantizer) -------------------------------------------------------
def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the leaf conv and linear modules, in definition order: what --keep-float can name."""
    return [name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]


def ptq(model: nn.Module, data: DataBundle, shape: tuple[int, ...], cfg: RunConfig,
        keep_float: tuple[str, ...] = ()) -> torch.fx.GraphModule:
    """Int8 PTQ (calibration on --calib-batches training batches), folded; `keep_float` layers stay float."""
    return qat.ptq(model, data, shape, cfg.calib_batches, cfg.batch_size, keep_float=tuple(keep_float))


def calibrated(model: nn.Module, data: DataBundle, shape: tuple[int, ...], cfg: RunConfig) -> torch.fx.GraphModule:
    """The same PTQ as `ptq`, stopped before conversion, so that it converts both folded and unfolded."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    example = torch.zeros(2, *shape)
    exported = torch.export.export(copy.deepcopy(model).eval(), (example,),
                                   dynamic_shapes=({0: Dim("batch", min=1, max=qat.MAX_BATCH)},)).module()
    prepared = prepare_pt2e(exported, qat.quantizer(is_qat=False))
    with torch.no_grad():
        for i, (images, _) in enumerate(data.batches("train", cfg.batch_size)):
            if i >= cfg.calib_batches:
                break
            prepared(images)
    return prepared


def convert(prepared: torch.fx.GraphModule, fold: bool) -> torch.fx.GraphModule:
    return qat.convert(prepared, fold=fold)


def qat_schedule(cfg: RunConfig) -> qat.QATSchedule:
    return qat.QATSchedule(cfg.qat_epochs, cfg.qat_max_steps, cfg.qat_lr, cfg.batch_size, cfg.seed,
                           cfg.freeze_bn_at, cfg.freeze_observers_at)


def run_qat(model: nn.Module, data: DataBundle, shape: tuple[int, ...], cfg: RunConfig,
            keep_float: tuple[str, ...] = (), each_step=None) -> tuple[torch.fx.GraphModule, dict]:
    """QAT with the run's own schedule (--qat-epochs, --qat-lr, freeze points), as the `qat` stage runs it."""
    return qat.qat(model, data, shape, qat_schedule(cfg), keep_float=tuple(keep_float), each_step=each_step)


def save_programs(prepared: torch.fx.GraphModule, model: nn.Module, shape: tuple[int, ...], out_dir: Path) -> dict:
    """Write the converted programs (folded, unfolded) and float weights, as the `qat` stage does; reload them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = qat.save(prepared, model, shape, out_dir)
    state = qat.load_float_weights(paths[qat.QAT_FLOAT])
    qat_float = copy.deepcopy(model)
    qat_float.load_state_dict(state)
    return {"folded": qat.load_program(paths[qat.QAT_FOLDED]), "unfolded": qat.load_program(paths[qat.QAT_UNFOLDED]),
            "float": qat_float.eval(), "files": [p.name for p in paths.values()]}


# ---- converter option sets -----------------------------------------------------------------
def export_options(cfg: RunConfig, float_layers: tuple[str, ...] = (), **overrides) -> SimpleNamespace:
    """The run's settings as the converters read them, plus the study's explicit mixed-precision option.

    Study artifacts are static batch 1 (what the latency comparisons time).
    """
    return SimpleNamespace(**{**cfg.to_dict(), "dynamic_batch": 0, **overrides, "float_layers": tuple(float_layers)})


# ---- Core ML weight compression (coremltools.optimize.coreml) ---------------------------------
def _mlmodel(path: Path):
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True)


def _save(mlmodel, path: Path) -> Path:
    from core import io as atomic

    return atomic.atomic_write(path, lambda tmp: mlmodel.save(str(tmp)))


def palettizer(cfg: RunConfig, nbits: int):
    from coremltools.optimize.coreml import OpPalettizerConfig

    grouped = cfg.granularity == "per_grouped_channel"
    return OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity=cfg.granularity,
                              group_size=cfg.group_size if grouped else 0, weight_threshold=cfg.weight_threshold)


def palettize(fp16: Path, out: Path, cfg: RunConfig, nbits: int) -> Path:
    """k-means LUTs of `nbits` (the export's --granularity, --group-size, --weight-threshold)."""
    from coremltools.optimize.coreml import OptimizationConfig, palettize_weights

    return _save(palettize_weights(_mlmodel(fp16), OptimizationConfig(global_config=palettizer(cfg, nbits))), out)


def linear_quantize(fp16: Path, out: Path, cfg: RunConfig, nbits: int) -> Path:
    """Linear symmetric weight quantization per output channel, int8 or int4 (activations stay fp16)."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    config = OpLinearQuantizerConfig(mode="linear_symmetric", dtype=f"int{nbits}", granularity="per_channel",
                                     weight_threshold=cfg.weight_threshold)
    return _save(linear_quantize_weights(_mlmodel(fp16), OptimizationConfig(global_config=config)), out)


def sparsify(fp16: Path, out: Path, cfg: RunConfig, target_sparsity: float | None = None) -> Path:
    """Store weights sparse. With a target: magnitude pruning of each weight (post-training, no fine-tuning);
    without: only the weights that are already exactly zero (a model pruned in PyTorch)."""
    from coremltools.optimize.coreml import (OpMagnitudePrunerConfig, OpThresholdPrunerConfig, OptimizationConfig,
                                             prune_weights)

    if target_sparsity is None:
        config = OpThresholdPrunerConfig(threshold=1e-12, minimum_sparsity_percentile=0.0,
                                         weight_threshold=cfg.weight_threshold)
    else:
        config = OpMagnitudePrunerConfig(target_sparsity=target_sparsity, weight_threshold=cfg.weight_threshold)
    return _save(prune_weights(_mlmodel(fp16), OptimizationConfig(global_config=config)), out)


def sparse_palettize(sparse: Path, out: Path, cfg: RunConfig, nbits: int) -> Path:
    """Joint compression: palettize the non-zero values of an already sparse package (sparse + LUT)."""
    from coremltools.optimize.coreml import OptimizationConfig, palettize_weights

    config = OptimizationConfig(global_config=palettizer(cfg, nbits))
    return _save(palettize_weights(_mlmodel(sparse), config, joint_compression=True), out)


def coreml_weight_ops(path: Path) -> dict[str, int]:
    """How the package stores its weights: count of each constexpr op (LUT, sparse, affine/shift-scale)."""
    spec = _mlmodel(path).get_spec()
    main = spec.mlProgram.functions["main"]
    counts: dict[str, int] = {}
    for op in main.block_specializations[main.opset].operations:
        if op.type.startswith("constexpr_"):
            counts[op.type] = counts.get(op.type, 0) + 1
    return counts
