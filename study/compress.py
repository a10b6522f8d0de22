"""Core ML weight compression beyond what `export` writes: every palettization width, linear weights,
sparse weights and joint sparse + LUT, each made from a package the Core ML converter wrote.

The palettizer and linear quantizer configs are the converter's own (converters.coreml); only
the sparse formats are the study's.
"""

from __future__ import annotations

from pathlib import Path

from converters import coreml, coreml_checks
from core import io as atomic
from core.config import RunConfig
from core.schemes import Scheme


def _mlmodel(path: Path):
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True)


def _save(mlmodel, path: Path) -> Path:
    return atomic.atomic_write(path, lambda tmp: mlmodel.save(str(tmp)))


def palettize(fp16: Path, out: Path, cfg: RunConfig, nbits: int) -> Path:
    """k-means LUTs of `nbits`, with the export's --granularity, --group-size and --weight-threshold."""
    from coremltools.optimize.coreml import OptimizationConfig, palettize_weights

    config = OptimizationConfig(global_config=coreml.palettizer_config(cfg, nbits))
    return _save(palettize_weights(_mlmodel(fp16), config), out)


def linear_quantize(fp16: Path, out: Path, cfg: RunConfig, nbits: int) -> Path:
    """Linear symmetric weight quantization per output channel, int8 or int4 (activations stay fp16): the
    weight-only scheme of that width, on the weights above --weight-threshold."""
    scheme = Scheme(weight_bits=nbits, activations="none")
    return _save(coreml.linear_quantize(_mlmodel(fp16), scheme, cfg.weight_threshold), out)


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

    config = OptimizationConfig(global_config=coreml.palettizer_config(cfg, nbits))
    return _save(palettize_weights(_mlmodel(sparse), config, joint_compression=True), out)


def weight_ops(path: Path) -> dict[str, int]:
    """How the package stores its weights: count of each constexpr op (LUT, sparse, affine/shift-scale)."""
    return {op: n for op, n in coreml_checks.op_histogram(path)["ops"].items() if op.startswith("constexpr_")}
