"""From a trained fp32 model and a `Scheme` to the quantized reference the runtimes must match.

Three kinds of reference, by scheme:

- PT2E graph (8-bit weights, static or dynamic int8 activations, symmetric or asymmetric):
  XNNPACKQuantizer's config from core/qat.py, by PTQ (calibration) or QAT. Saved folded (what
  ExecuTorch lowers and Core ML converts) and unfolded (what litert-torch converts).
- torchao Int8DynamicActivationIntxWeightConfig (4-bit, or per-block, weights with dynamic int8
  activations): what ExecuTorch lowers for 4-bit linear layers; the simulation for LiteRT's dynamic
  recipes.
- Weight-only: the float network with every conv/linear weight rounded to the scheme's grid (the
  activations stay float); Core ML's linear_quantize_weights and LiteRT's weight-only recipes must
  match it.

`quantize(...)` runs PTQ, and QAT where the scheme trains, and keeps the better one under
`--quant-mode auto`. The result is saved under OUT/quantized/<scheme tag>/.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.export import Dim

from . import io as atomic
from . import qat
from .data import DataBundle
from .distill import Distillation
from .export_check import MAX_BATCH
from .loaders import TrainLoader
from .recipe import Recipe
from .schemes import Scheme
from .weights import load_weights

PROGRAM, UNFOLDED, FLOAT = "program.pt2", "unfolded.pt2", "float.pt"


@dataclass
class Quantized:
    """One quantized version of the model, in the forms the converters start from."""

    mode: str  # ptq | qat
    program: nn.Module  # the reference: PT2E folded, torchao-quantized, or weights rounded to the grid
    float_model: nn.Module  # the float weights it was made from (QAT-trained, or the fp32 ones)
    unfolded: nn.Module | None = None  # PT2E fold_quantize=False: litert-torch's input (static schemes)
    weight_error: list[dict] = field(default_factory=list)  # per layer: rounding error against Δ²/12
    stats: dict = field(default_factory=dict)  # QAT steps, history and freeze events


def kind(scheme: Scheme) -> str:
    if scheme.activations == "none":
        return "weight_only"
    if scheme.pt2e:
        return "pt2e"
    return "torchao_dynamic"


# ---- PTQ and QAT ---------------------------------------------------------------------------------
def post_training(model: nn.Module, scheme: Scheme, data: DataBundle, shape: tuple[int, ...], calib_batches: int,
                  batch_size: int, keep_float: tuple[str, ...] = (), device: torch.device | str = "cpu") -> Quantized:
    """PTQ; PT2E calibration runs its batches on `device`, everything else (and the result) stays on the CPU."""
    model = copy.deepcopy(model).eval()
    k = kind(scheme)
    if k == "pt2e":
        prepared = qat.calibrate(model, data, shape, calib_batches, batch_size, keep_float, scheme, device)
        errors = qat.weight_quantization_error(prepared)
        program, unfolded = _converted(prepared, scheme)
        return Quantized("ptq", program, model, unfolded, errors)
    if k == "torchao_dynamic":
        return Quantized("ptq", torchao_dynamic(model, scheme), model)
    return Quantized("ptq", round_weights(model, scheme), model, weight_error=weight_only_error(model, scheme))


def quant_aware(model: nn.Module, scheme: Scheme, data: DataBundle | TrainLoader, shape: tuple[int, ...],
                schedule: qat.QATSchedule, keep_float: tuple[str, ...] = (), recipe: Recipe = Recipe(), each_step=None,
                distill: Distillation | None = None) -> Quantized | None:
    """QAT (see qat.qat: `data` may be a TrainLoader, for a device and torchrun), then conversion.

    Under torchrun every process fine-tunes; only rank 0 converts, and the others get None.
    """
    prepared, stats = qat.qat(model, data, shape, schedule, keep_float, scheme, recipe, each_step, distill)
    if isinstance(data, TrainLoader) and not data.ctx.is_main:
        return None  # the ranks ended with identical weights, observers and BatchNorm statistics: rank 0 has them all
    trained = copy.deepcopy(model)
    load_weights(trained, qat.float_weights(prepared, model))
    errors = qat.weight_quantization_error(prepared)
    program, unfolded = _converted(prepared, scheme)
    return Quantized("qat", program, trained.eval(), unfolded, errors, stats)


def _converted(prepared, scheme: Scheme) -> tuple[nn.Module, nn.Module | None]:
    """(folded, unfolded) for static schemes; (folded, None) for dynamic ones, converted in place (see qat.convert).

    Static schemes (8-bit per channel or per tensor, and the simulated 4-bit) get their weights and
    biases snapped to the int8/int32 grids, in both graphs (core/snapping.py): snapped values are
    fixed points of each graph's own quantize ops, so every converter reads the same integers.
    Dynamic schemes are not snapped: their input scale, and so the bias grid, is known only at run time.
    """
    if scheme.activations == "static":
        return qat.convert(prepared), qat.convert(prepared, fold=False)
    return qat.convert(prepared, in_place=True, snap=False), None


# ---- torchao: int4 (or per-block) weights with dynamic int8 activations ---------------------------
def torchao_dynamic(model: nn.Module, scheme: Scheme) -> nn.Module:
    """Linear layers quantized with torchao's Int8DynamicActivationIntxWeightConfig; the rest stays float."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, MappingType, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    model = copy.deepcopy(model).eval()
    granularity = PerGroup(scheme.block_size) if scheme.granularity == "per_block" else PerAxis(0)
    mapping = MappingType.SYMMETRIC if scheme.symmetry == "symmetric" else MappingType.ASYMMETRIC
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=getattr(torch, f"int{scheme.weight_bits}"),
                                                   weight_granularity=granularity, weight_mapping_type=mapping)

    def fits(module: nn.Module, name: str) -> bool:  # group quantization needs rows divisible by the group
        return isinstance(module, nn.Linear) and (scheme.granularity != "per_block"
                                                  or module.in_features % scheme.block_size == 0)

    quantize_(model, config, filter_fn=fits)
    return model


# ---- weight-only: weights rounded to the grid, activations float ---------------------------------
def _grid(weight: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(levels, scale, zero point) of `weight` on the scheme's grid, blocks along the input channels; None if it does not fit."""
    bits = scheme.weight_bits
    qmin, qmax = (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1) if scheme.symmetry == "symmetric" else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    w = weight.detach().float().movedim(1, -1)  # [O, ..., I]: blocks run along the input channels
    if scheme.granularity == "per_tensor":
        groups = w.reshape(1, -1)
    elif scheme.granularity == "per_channel":
        groups = w.reshape(w.shape[0], -1)
    else:
        if w.shape[-1] % scheme.block_size:
            return None
        groups = w.reshape(-1, scheme.block_size)
    if scheme.symmetry == "symmetric":
        scale = groups.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / qmax
        zero = torch.zeros_like(scale)
    else:
        low = groups.amin(dim=1, keepdim=True).clamp(max=0)
        high = groups.amax(dim=1, keepdim=True).clamp(min=0)
        scale = ((high - low) / (qmax - qmin)).clamp_min(1e-12)
        zero = torch.round(qmin - low / scale)
    levels = torch.clamp(torch.round(groups / scale) + zero, qmin, qmax)
    return levels, scale, zero


def _weights(model: nn.Module, scheme: Scheme, threshold: int = 0):
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.numel() >= threshold:
            yield name, module


def round_weights(model: nn.Module, scheme: Scheme, threshold: int = 0) -> nn.Module:
    """A copy of `model` whose conv/linear weights lie on the scheme's grid (quantize, then dequantize)."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for _, module in _weights(model, scheme, threshold):
            grid = _grid(module.weight, scheme)
            if grid is None:
                continue  # blocks do not divide its input channels: it stays float, as Core ML leaves it
            levels, scale, zero = grid
            moved = module.weight.movedim(1, -1)
            module.weight.copy_(((levels - zero) * scale).reshape(moved.shape).movedim(-1, 1))
    return model


def weight_only_error(model: nn.Module, scheme: Scheme) -> list[dict]:
    """Per layer: measured rounding MSE against Δ²/12, for weight-only schemes."""
    rows = []
    for name, module in _weights(model, scheme):
        grid = _grid(module.weight, scheme)
        if grid is None:
            continue
        levels, scale, zero = grid
        moved = module.weight.detach().float().movedim(1, -1)
        original = moved.reshape(levels.shape)
        error = (levels - zero) * scale - original
        rows.append({"layer": name, "channels": module.weight.shape[0], "mean_step": float(scale.mean()),
                     "measured_mse": float(error.pow(2).mean()),
                     "predicted_mse": float((scale.expand_as(error) ** 2 / 12).mean()),
                     "clipped_fraction": 0.0})
    return rows


# ---- saving and loading a scheme's result -----------------------------------------------------------
def folder(out: Path, scheme_tag: str) -> Path:
    return Path(out) / "quantized" / scheme_tag


def save(result: Quantized, shape: tuple[int, ...], out_dir: Path) -> dict[str, Path]:
    """Write the reference program, the unfolded graph (if any) and the float weights, each atomically."""
    example = torch.zeros(2, *shape)
    dims = ({0: Dim("batch", min=1, max=MAX_BATCH)},)
    paths = {}
    for name, module in ((PROGRAM, result.program), (UNFOLDED, result.unfolded)):
        if module is None:
            continue
        program = torch.export.export(module, (example,), dynamic_shapes=dims)
        paths[name] = atomic.atomic_write(out_dir / name, lambda tmp, p=program: torch.export.save(p, str(tmp)))
    state = {k: v.detach().clone() for k, v in result.float_model.state_dict().items()}
    paths[FLOAT] = atomic.atomic_write(out_dir / FLOAT, lambda tmp: torch.save(state, tmp))
    return paths


def load_program(path: Path) -> nn.Module:
    import torchao.quantization  # noqa: F401  registers torchao's quantized ops for programs that use them

    return qat.load_program(path)


def grid_snap(result: Quantized) -> dict | None:
    """What the int8/int32 grid snapping moved in each converted graph (qat.convert); None where nothing was snapped."""
    graphs = {"program": result.program, "unfolded": result.unfolded}
    snaps = {name: g.meta["grid_snap"] for name, g in graphs.items()
             if isinstance(g, torch.fx.GraphModule) and "grid_snap" in g.meta}
    return snaps or None
