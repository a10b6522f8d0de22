"""Int8 quantization with PT2E (torchao) and ExecuTorch's XNNPACKQuantizer.

Weights: int8, symmetric, per output channel. Activations: int8, per tensor, static
ranges. QAT fine-tunes with fake quantization; PTQ calibrates the same quantizer as a
baseline. The QAT result is saved as exported programs, so converters never retrain.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.export import Dim

from . import io as atomic
from .data import DataBundle
from .snapping import snap_to_grid
from .train import run_epoch

QAT_FOLDED = "qat_int8.pt2"  # convert_pt2e(fold_quantize=True): what ExecuTorch lowers
QAT_UNFOLDED = "qat_int8_unfolded.pt2"  # fold_quantize=False: what litert-torch converts
QAT_FLOAT = "qat_float.pt"  # the QAT-trained float weights, for Core ML palettization
MAX_BATCH = 1024


class QuantError(RuntimeError):
    """The QAT result is missing or unreadable."""


def quantizer(is_qat: bool):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat))


def _export(model: nn.Module, shape: tuple[int, ...]) -> torch.fx.GraphModule:
    # A dynamic batch needs an example batch of at least 2.
    example = torch.zeros(2, *shape)
    batch = Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()


def ptq(model: nn.Module, data: DataBundle, shape: tuple[int, ...], calib_batches: int, batch_size: int) -> torch.fx.GraphModule:
    """Post-training quantization: calibrate observers on training batches, then convert."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(_export(copy.deepcopy(model).eval(), shape), quantizer(is_qat=False))
    with torch.no_grad():
        for i, (images, _) in enumerate(data.batches("train", batch_size)):
            if i >= calib_batches:
                break
            prepared(images)
    return convert_pt2e(prepared)


def freeze_batchnorm(prepared: torch.fx.GraphModule) -> int:
    """Stop updating BatchNorm statistics in an exported training graph; returns how many were frozen."""
    frozen = 0
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target in (torch.ops.aten.batch_norm.default,
                                                          torch.ops.aten._native_batch_norm_legit.default):
            args = list(node.args)
            args[5] = False  # the `training` flag
            node.args = tuple(args)
            frozen += 1
    prepared.recompile()
    return frozen


def prepare(model: nn.Module, shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """The fp32 model exported in train mode with fake quantization inserted (observers on)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    prepared = prepare_qat_pt2e(_export(copy.deepcopy(model).train(), shape), quantizer(is_qat=True))
    allow_exported_model_train_eval(prepared)  # .train()/.eval() now switch dropout and BatchNorm correctly
    return prepared


@dataclass
class QATSchedule:
    epochs: float
    max_steps: int
    lr: float
    batch_size: int
    seed: int
    freeze_bn_at: float
    freeze_observers_at: float

    def total_steps(self, n_train: int) -> int:
        steps = math.ceil(self.epochs * n_train / self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps


def qat(model: nn.Module, data: DataBundle, shape: tuple[int, ...], schedule: QATSchedule) -> tuple[torch.fx.GraphModule, dict]:
    """Fake-quant fine-tuning from the fp32 model; returns the prepared model in eval mode and its stats."""
    from torchao.quantization.pt2e import disable_observer

    prepared = prepare(model, shape)
    optimizer = torch.optim.Adam(prepared.parameters(), lr=schedule.lr)
    total = schedule.total_steps(len(data.train_labels))
    freeze_bn_step = int(schedule.freeze_bn_at * total)
    freeze_obs_step = int(schedule.freeze_observers_at * total)
    done, history, events = 0, [], []

    def on_step(step_in_epoch: int) -> None:
        step = done + step_in_epoch
        if step == freeze_bn_step:
            events.append({"step": step, "event": "freeze_bn", "nodes": freeze_batchnorm(prepared)})
        if step == freeze_obs_step:
            prepared.apply(disable_observer)
            events.append({"step": step, "event": "freeze_observers"})

    epoch = 0
    while done < total:
        stats = run_epoch(prepared, optimizer, data, schedule.batch_size, seed=schedule.seed * 1000 + 500 + epoch,
                          desc=f"QAT epoch {epoch + 1}", max_steps=total - done, on_step=on_step)
        done += math.ceil(stats["images"] / schedule.batch_size)
        history.append({"epoch": epoch + 1, **stats})
        print(f"QAT epoch {epoch + 1}: loss {stats['loss']:.4f}, train acc {stats['train_accuracy']:.4f}, "
              f"{stats['images_per_s']:.0f} img/s")
        epoch += 1
    prepared.eval()
    images = sum(h["images"] for h in history)
    seconds = sum(h["seconds"] for h in history)
    return prepared, {"steps": total, "history": history, "events": events,
                      "images_per_s": images / seconds if seconds else 0.0}


def weight_quantization_error(prepared: torch.fx.GraphModule) -> list[dict]:
    """Per layer: the int8 weight rounding error measured, against the uniform-noise model var = Δ²/12.

    Δ is each output channel's quantization step (the scale the QAT observers settled on).
    Rounding noise is uniform on [-Δ/2, Δ/2] when no weight is clipped, so the two should agree.
    """
    rows = []
    for node in prepared.graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(source, torch.fx.Node) and source.op == "get_attr" and source.target.endswith("weight")):
            continue
        fake_quant = prepared.get_submodule(node.target)
        weight = prepared.get_parameter(source.target).detach()
        scale, _ = fake_quant.calculate_qparams()  # the scale convert_pt2e will bake in
        step = scale.detach().reshape(-1, *([1] * (weight.dim() - 1)))
        quantized = torch.clamp(torch.round(weight / step), fake_quant.quant_min, fake_quant.quant_max) * step
        error = (quantized - weight).flatten(1)
        rows.append({
            "layer": source.target.removesuffix(".weight"),
            "channels": weight.shape[0],
            "mean_step": float(step.mean()),
            "measured_mse": float(error.pow(2).mean()),
            "predicted_mse": float((step.flatten() ** 2 / 12).mean()),
            "clipped_fraction": float((weight.abs() > step * fake_quant.quant_max).float().mean()),
        })
    return rows


def convert(prepared: torch.fx.GraphModule, fold: bool = True) -> torch.fx.GraphModule:
    """convert_pt2e, with every conv/linear weight and bias snapped to the int8/int32 grid (core/snapping.py),
    so that ExecuTorch (folded) and litert-torch (unfolded) start from the same integers."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(copy.deepcopy(prepared), fold_quantize=fold)
    converted.meta["grid_snap"] = snap_to_grid(converted)
    # Folding adds int8 copies of the weights; drop the float originals nothing reads any more.
    used = {n.target for n in converted.graph.nodes if n.op == "get_attr"}
    for name, _ in list(converted.named_parameters()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(converted.get_submodule(owner), attr)
    return converted


def float_weights(prepared: torch.fx.GraphModule, model: nn.Module) -> dict:
    """The QAT-trained float weights, keyed as in the original model (the export keeps the names)."""
    names = set(model.state_dict())
    state = {k: v.detach().clone() for k, v in prepared.state_dict().items() if k in names}
    missing = names - set(state)
    if missing:
        raise QuantError(f"QAT graph lost the weights {sorted(missing)}")
    return state


def save(prepared: torch.fx.GraphModule, model: nn.Module, shape: tuple[int, ...], out_dir: Path) -> dict[str, Path]:
    """Write the converted QAT programs (folded and unfolded) and the float weights, each atomically."""
    example = torch.zeros(2, *shape)
    batch = Dim("batch", min=1, max=MAX_BATCH)
    paths = {}
    for name, fold in ((QAT_FOLDED, True), (QAT_UNFOLDED, False)):
        converted = convert(prepared, fold)
        program = torch.export.export(converted, (example,), dynamic_shapes=({0: batch},))
        paths[name] = atomic.atomic_write(out_dir / name, lambda tmp, p=program: torch.export.save(p, str(tmp)))
    snap = converted.meta["grid_snap"]  # the unfolded graph, where the float weights live
    print(f"qat: {snap['layers']} layers snapped to the int8/int32 grids ({snap['weights_moved']} float weights, "
          f"{snap['biases_moved']} biases moved; largest bias move {snap['largest_bias_move_steps']:.2f} int32 steps)")
    state = float_weights(prepared, model)
    paths[QAT_FLOAT] = atomic.atomic_write(out_dir / QAT_FLOAT, lambda tmp: torch.save(state, tmp))
    return paths


def load_program(path: Path) -> torch.fx.GraphModule:
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  registers the quantized_decomposed ops

    path = Path(path)
    if not path.is_file():
        raise QuantError(f"QAT program {path} not found; run `qat` first (or `run`)")
    try:
        return torch.export.load(str(path)).module()
    except Exception as exc:
        raise QuantError(f"QAT program {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                         "rerun `qat --force`") from exc


def load_float_weights(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise QuantError(f"QAT float weights {path} not found; run `qat` first (or `run`)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise QuantError(f"QAT float weights {path} are corrupt ({type(exc).__name__}: {exc}); rerun `qat --force`") from exc
