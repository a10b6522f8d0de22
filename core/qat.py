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

from . import distributed
from . import io as atomic
from .data import DataBundle
from .loaders import TrainLoader
from .recipe import Recipe
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


def ptq(model: nn.Module, data: DataBundle, shape: tuple[int, ...], calib_batches: int, batch_size: int,
        device: torch.device | str = "cpu") -> torch.fx.GraphModule:
    """Post-training quantization: calibrate observers on training batches (on `device`), then convert on the CPU."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(_export(copy.deepcopy(model).eval(), shape), quantizer(is_qat=False)).to(device)
    with torch.no_grad():
        for i, (images, _) in enumerate(data.batches("train", batch_size)):
            if i >= calib_batches:
                break
            prepared(images.to(device))
    return convert_pt2e(prepared.to("cpu"))


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

    @property
    def shuffle_seed(self) -> int:
        """QAT epoch e shuffles with randperm seeded by shuffle_seed + e."""
        return self.seed * 1000 + 500

    def total_steps(self, n_train: int) -> int:
        steps = math.ceil(self.epochs * n_train / self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps


def qat(model: nn.Module, loader: TrainLoader, shape: tuple[int, ...], schedule: QATSchedule,
        recipe: Recipe = Recipe()) -> tuple[torch.fx.GraphModule, dict]:
    """Fake-quant fine-tuning from the fp32 model; returns the prepared model in eval mode, on the CPU, and its stats.

    Under torchrun the prepared graph trains inside DistributedDataParallel, and observer ranges
    and BatchNorm statistics are made identical on every rank (`distributed.sync_*`) before
    BatchNorm freezes, before the observers freeze and at the end.
    """
    from torchao.quantization.pt2e import disable_observer

    ctx = loader.ctx
    prepared = prepare(model, shape).to(ctx.device)
    optimizer = recipe.make_optimizer(prepared.parameters(), schedule.lr)
    net = distributed.wrap(prepared, ctx)
    loss_fn = recipe.loss_fn()
    total = schedule.total_steps(loader.samples_per_epoch)
    freeze_bn_step = int(schedule.freeze_bn_at * total)
    freeze_obs_step = int(schedule.freeze_observers_at * total)
    done, history, events = 0, [], []

    def on_step(step_in_epoch: int) -> None:
        step = done + step_in_epoch
        if step == freeze_bn_step:
            distributed.sync_batchnorm(prepared, ctx)
            events.append({"step": step, "event": "freeze_bn", "nodes": freeze_batchnorm(prepared)})
        if step == freeze_obs_step:
            distributed.sync_observers(prepared, ctx)
            prepared.apply(disable_observer)
            events.append({"step": step, "event": "freeze_observers"})

    epoch = 0
    while done < total:
        stats = run_epoch(net, optimizer, loader, epoch, desc=f"QAT epoch {epoch + 1}", max_steps=total - done,
                          on_step=on_step, loss_fn=loss_fn)
        done += stats["steps"]
        history.append({"epoch": epoch + 1, **stats})
        if ctx.is_main:
            print(f"QAT epoch {epoch + 1}: loss {stats['loss']:.4f}, train acc {stats['train_accuracy']:.4f}, "
                  f"{stats['images_per_s']:.0f} img/s")
        epoch += 1
    synced = distributed.sync_quantization_state(prepared, ctx)
    prepared.eval()
    prepared.to("cpu")
    images = sum(h["images"] for h in history)
    seconds = sum(h["seconds"] for h in history)
    return prepared, {"steps": total, "history": history, "events": events, "synced_across_ranks": synced,
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
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(copy.deepcopy(prepared), fold_quantize=fold)
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
        program = torch.export.export(convert(prepared, fold), (example,), dynamic_shapes=({0: batch},))
        paths[name] = atomic.atomic_write(out_dir / name, lambda tmp, p=program: torch.export.save(p, str(tmp)))
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
