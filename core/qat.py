"""Int8 quantization with PT2E (torchao) and ExecuTorch's XNNPACKQuantizer.

By default: weights int8, symmetric, per output channel; activations int8, per tensor, static
ranges. A `Scheme` (core/schemes.py) changes the weight granularity and symmetry, makes the
activations dynamic, and picks the PTQ calibration observer. QAT fine-tunes with fake
quantization; PTQ calibrates the same quantizer. The result is saved as exported programs,
so converters never retrain.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from . import distributed
from .data import DataBundle
from .errors import BadInput
from .distill import Distillation, WithTeacher, teacher_from
from .console import StageClock, say
from . import int8_constraints
from .export_check import export_training_graph
from .loaders import TrainLoader
from .recipe import Recipe
from .rewrites import COUNTER, graph_rewrites
from .schemes import Scheme
from .snapping import snap_to_grid

from torchao.quantization.pt2e.observer import MinMaxObserver  # noqa: E402  (PercentileObserver's base)
from . import pattern_cache  # noqa: E402

pattern_cache.install()  # torchao's rewrite patterns, exported once per process (core/pattern_cache.py)
from .train import run_epoch



class QuantError(BadInput, RuntimeError):
    """The QAT result is missing or unreadable."""


class PercentileObserver(MinMaxObserver):
    """Activation ranges from the 0.01% and 99.99% percentiles of each batch, averaged over batches.

    Min/max calibration lets one outlier set the step for a whole tensor; clipping the extreme
    tails trades a little clipping error for a finer step everywhere else.
    """

    def __init__(self, *args, tail: float = 1e-4, max_samples: int = 1 << 20, **kwargs):
        super().__init__(*args, **kwargs)
        self.tail, self.max_samples = tail, max_samples
        self.register_buffer("batches", torch.tensor(0))

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().float().flatten()
        if x.numel() > self.max_samples:  # a seeded subsample keeps the cost bounded on large tensors
            idx = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[: self.max_samples]
            x = x[idx]
        low, high = torch.quantile(x, torch.tensor([self.tail, 1 - self.tail]))
        n = int(self.batches)
        if n == 0:
            self.min_val.resize_(low.shape).copy_(low)
            self.max_val.resize_(high.shape).copy_(high)
        else:
            self.min_val.copy_((self.min_val * n + low) / (n + 1))
            self.max_val.copy_((self.max_val * n + high) / (n + 1))
        self.batches += 1
        return x_orig


def quantization_config(scheme: Scheme | None, is_qat: bool):
    """XNNPACKQuantizer's config for a PT2E scheme: its weight spec, and the activation observer it asks for."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import observer as obs

    scheme = scheme or Scheme()
    config = get_symmetric_quantization_config(is_per_channel=scheme.granularity == "per_channel", is_qat=is_qat,
                                               is_dynamic=scheme.activations == "dynamic")
    if scheme.weight_bits == 4:  # simulated in PyTorch: int4 levels stored in int8
        config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-7, quant_max=7))
    if scheme.symmetry == "asymmetric":  # simulated: no int8 runtime here takes zero points in weights
        per_channel = scheme.granularity == "per_channel"
        observer = (obs.PerChannelMinMaxObserver if per_channel else obs.MinMaxObserver)
        if is_qat:
            from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize

            moving = obs.MovingAveragePerChannelMinMaxObserver if per_channel else obs.MovingAverageMinMaxObserver
            observer = FusedMovingAvgObsFakeQuantize.with_args(observer=moving)
        low, high = (-8, 7) if scheme.weight_bits == 4 else (-128, 127)
        config = dataclasses.replace(config, weight=dataclasses.replace(
            config.weight, quant_min=low, quant_max=high, observer_or_fake_quant_ctr=observer,
            qscheme=torch.per_channel_affine if per_channel else torch.per_tensor_affine))
    if not is_qat and scheme.activations == "static":
        observer = {"histogram": obs.HistogramObserver, "minmax": obs.MinMaxObserver,
                    "moving_average": obs.MovingAverageMinMaxObserver, "percentile": PercentileObserver}[scheme.calibration]
        act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=observer.with_args(eps=2**-12))
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    return config


def quantizer(is_qat: bool, keep_float: tuple[str, ...] = (), scheme: Scheme | None = None):
    """XNNPACK's int8 quantizer for `scheme`; the modules named in `keep_float` (and everything inside) stay float."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    q = XNNPACKQuantizer().set_global(quantization_config(scheme, is_qat))
    if keep_float:
        q.set_filter_function(float_filter(keep_float))
    return _annotate_our_way(q)


RELU6_SCALE = int8_constraints.RELU6_GRID.scale  # int8 in [-128, 127] with zero point -128 covers exactly [0, 6]


def relu6_after_add_in_its_range(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Quantize `relu6(a + b)` once, in relu6's own range, as both int8 runtimes compute it.

    XNNPACKQuantizer observes the add's output, and leaves relu6 unannotated, so the PT2E graph
    rounds twice: the sum to the add's own scale, then (at the next op's input) relu6's result to
    another. LiteRT fuses relu6 into the ADD and rounds once, to the later scale; the two files then
    differ by one step on a large share of values (seen on MobileNetV3's hardswish, `x + 3` then
    relu6, where a quarter of the values differed). Here the add's output gets fixed qparams that
    span exactly [0, 6] (the quantize's clamp is the relu6) and relu6 shares them, so PyTorch,
    ExecuTorch and LiteRT all round once, at the same scale. The ops that read relu6's result
    read it on that grid too: XNNPACKQuantizer gives a MUL's input an observer of its own, so the
    graph requantized the [0, 6] values to the range it saw (MobileNetV3's squeeze-excitation:
    6/255 to 4.55/255 before the multiply by 1/6), a second rounding that ExecuTorch and LiteRT
    do not compute alike (one step apart on 2% of the values). Static int8 activations only.
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    key = int8_constraints.KEY
    for add in model.graph.nodes:
        if add.op != "call_function" or add.target not in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor):
            continue
        users = list(add.users)
        annotation = add.meta.get(key)
        if (len(users) != 1 or users[0].target != torch.ops.aten.relu6.default or annotation is None
                or annotation.output_qspec is None or getattr(annotation.output_qspec, "is_dynamic", False)
                or getattr(annotation.output_qspec, "dtype", None) != torch.int8 or key in users[0].meta):
            continue
        annotation.output_qspec = int8_constraints.fixed_spec(int8_constraints.RELU6_GRID)
        shared, relu6 = SharedQuantizationSpec(add), users[0]
        relu6.meta[key] = QuantizationAnnotation(input_qspec_map={add: shared}, output_qspec=shared, _annotated=True)
        int8_constraints.read_on_its_grid(relu6)  # no requantize between relu6 and the ops that read it
    return model


def _annotate_our_way(q):
    """XNNPACKQuantizer's annotation, with three changes.

    It finds conv+BatchNorm pairs by torch.export-ing 12 small pattern graphs on every prepare (about
    5 s each time on 2 cores); a graph with no batch_norm node cannot match them, so there those
    patterns are skipped: the same annotations, without the exports. And relu6 after an add is
    quantized once (`relu6_after_add_in_its_range`). And the runtimes' int8 constraints
    (core/int8_constraints.py: fixed output grids, same-scale ops) are put into the graph, so
    that the .pte and the .tflite made from it compute alike."""
    full, annotate = list(type(q).SUPPORTED_PATTERNS), q.annotate

    def annotate_graph(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        q.SUPPORTED_PATTERNS = patterns_for(model, full)
        model = relu6_after_add_in_its_range(annotate(model))
        int8_constraints.apply(model, getattr(q, "filter_fn", None))
        return model

    q.annotate = annotate_graph
    return q


def patterns_for(model: torch.fx.GraphModule, patterns: list) -> list:
    """The quantizer's patterns that can match `model`: without BatchNorm nodes, none of the conv+BN ones."""
    if any("batch_norm" in str(n.target) for n in model.graph.nodes if n.op == "call_function"):
        return list(patterns)
    return [p for p in patterns if "_bn" not in p.name]


def float_filter(keep_float: tuple[str, ...]):
    """A quantizer filter that leaves every node of the named modules unannotated, so they stay float."""
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    inside = [get_module_name_filter(name) for name in keep_float]
    return lambda node: not any(f(node) for f in inside)


def _export(model: nn.Module, shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """The graph PT2E quantizes: exported with a dynamic batch, with the exact graph rewrites applied."""
    gm = export_training_graph(model, shape)
    graph_rewrites(gm)
    return gm


def calibrate(model: nn.Module, data: DataBundle, shape: tuple[int, ...], calib_batches: int, batch_size: int,
              keep_float: tuple[str, ...] = (), scheme: Scheme | None = None,
              device: torch.device | str = "cpu") -> torch.fx.GraphModule:
    """The prepared PTQ graph after its observers saw `calib_batches` training batches.

    The batches run on `device` (the training device); the graph comes back on the CPU, where
    convert_pt2e and the exporters work. Under torchrun only rank 0 calibrates, on the same
    first `calib_batches` batches a single process uses, so there is no per-rank state to sync.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    prepared = prepare_pt2e(_export(copy.deepcopy(model).eval(), shape),
                            quantizer(is_qat=False, keep_float=keep_float, scheme=scheme)).to(device)
    with torch.no_grad():
        for i, (images, _) in enumerate(data.batches("train", batch_size)):
            if i >= calib_batches:
                break
            prepared(images.to(device))
    return prepared.to("cpu")


def ptq(model: nn.Module, data: DataBundle, shape: tuple[int, ...], calib_batches: int, batch_size: int,
        keep_float: tuple[str, ...] = (), scheme: Scheme | None = None,
        device: torch.device | str = "cpu") -> torch.fx.GraphModule:
    """Post-training quantization: calibrate observers on training batches (on `device`), then convert on the CPU."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    return convert_pt2e(calibrate(model, data, shape, calib_batches, batch_size, keep_float, scheme, device))


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


def prepare(model: nn.Module, shape: tuple[int, ...], keep_float: tuple[str, ...] = (),
            scheme: Scheme | None = None) -> torch.fx.GraphModule:
    """The fp32 model exported in train mode with fake quantization inserted (observers on)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    prepared = prepare_qat_pt2e(_export(copy.deepcopy(model).train(), shape),
                                quantizer(is_qat=True, keep_float=keep_float, scheme=scheme))
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

    @classmethod
    def from_config(cls, cfg) -> "QATSchedule":
        """The schedule the settings ask for (--qat-epochs, --qat-max-steps, --qat-lr, the freeze points)."""
        return cls(cfg.qat_epochs, cfg.qat_max_steps, cfg.qat_lr, cfg.batch_size, cfg.seed, cfg.freeze_bn_at,
                   cfg.freeze_observers_at)

    @property
    def shuffle_seed(self) -> int:
        """QAT epoch e shuffles with randperm seeded by shuffle_seed + e."""
        return self.seed * 1000 + 500

    def total_steps(self, n_train: int) -> int:
        steps = math.ceil(self.epochs * n_train / self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps

    def problems(self, n_train: int) -> list[str]:
        """Settings under which the quantization ranges would never see a batch (empty list: none).

        Observers record ranges only on the steps before they freeze. With no such step the
        ranges stay at their initial ±inf, and the converted model is at chance level.
        `n_train` is the images one process sees per epoch (its shard under torchrun).
        """
        total = self.total_steps(n_train)
        if total < 1:
            return [f"QAT would run 0 steps (--qat-epochs {self.epochs} on {n_train} training images"
                    f"{f', --qat-max-steps {self.max_steps}' if self.max_steps else ''}), so the int8 ranges would "
                    "never see data; give --qat-epochs > 0"]
        observed = int(self.freeze_observers_at * total)
        if observed < 1:
            return [f"--freeze-observers-at {self.freeze_observers_at} freezes the int8 ranges at step {observed} of "
                    f"{total} (--qat-epochs {self.epochs}, batch {self.batch_size}, {n_train} training images"
                    f"{f', --qat-max-steps {self.max_steps}' if self.max_steps else ''}), before they see any batch; "
                    f"raise --freeze-observers-at, --qat-epochs or --qat-max-steps so that at least one step observes"]
        return []


def qat(model: nn.Module, data: DataBundle | TrainLoader, shape: tuple[int, ...], schedule: QATSchedule,
        keep_float: tuple[str, ...] = (), scheme: Scheme | None = None,
        recipe: Recipe = Recipe(), each_step=None,
        distill: Distillation | None = None) -> tuple[torch.fx.GraphModule, dict]:
    """Fake-quant fine-tuning from the fp32 model; returns the prepared model in eval mode, on the CPU, and its stats.

    With `distill`, `model` itself (frozen, in eval mode) is the teacher: the loss mixes the KL
    divergence to its temperature-softened answers with the cross-entropy (core/distill.py). Under
    torchrun each process runs the teacher on its own shard's batches.

    `data` is a dataset (one process on the CPU, shuffled with `schedule.shuffle_seed`) or a
    `TrainLoader`, which also says the device and this process's rank. Under torchrun the
    prepared graph trains inside DistributedDataParallel, and observer ranges and BatchNorm
    statistics are made identical on every rank (`distributed.sync_*`) before BatchNorm
    freezes, before the observers freeze and at the end.

    `each_step(prepared)`, when given, runs before every training step and once after the last one
    (the study uses it to hold pruned weights at zero).
    """
    from torchao.quantization.pt2e import disable_observer

    loader = data if isinstance(data, TrainLoader) else TrainLoader(data, schedule.batch_size, seed=schedule.shuffle_seed)
    ctx = loader.ctx
    prepared = prepare(model, shape, keep_float, scheme).to(ctx.device)
    optimizer = recipe.make_optimizer(prepared.parameters(), schedule.lr)
    net = distributed.wrap(prepared, ctx)
    loss_fn = recipe.loss_fn()
    if distill is not None:
        net = WithTeacher(net, teacher_from(model, ctx.device))
        loss_fn = net.loss_fn(distill, loss_fn)
    total = schedule.total_steps(loader.samples_per_epoch)
    freeze_bn_step = int(schedule.freeze_bn_at * total)
    freeze_obs_step = int(schedule.freeze_observers_at * total)
    done, history, events = 0, [], []
    clock = StageClock("qat", total, "check --qat-epochs / --qat-max-steps")

    def on_step(step_in_epoch: int) -> None:
        step = done + step_in_epoch
        if step == freeze_bn_step:
            distributed.sync_batchnorm(prepared, ctx)
            events.append({"step": step, "event": "freeze_bn", "nodes": freeze_batchnorm(prepared)})
        if step == freeze_obs_step:
            distributed.sync_observers(prepared, ctx)
            prepared.apply(disable_observer)
            events.append({"step": step, "event": "freeze_observers"})
        if each_step:
            each_step(prepared)

    epoch = 0
    while done < total:
        stats = run_epoch(net, optimizer, loader, epoch, desc=f"QAT epoch {epoch + 1}", max_steps=total - done,
                          on_step=on_step, loss_fn=loss_fn, clock=clock)
        done += stats["steps"]
        history.append({"epoch": epoch + 1, **stats})
        if ctx.is_main:
            say(f"QAT epoch {epoch + 1}: loss {stats['loss']:.4f}, train acc {stats['train_accuracy']:.4f}, "
                f"{stats['images_per_s']:.0f} img/s")
        epoch += 1
    if each_step:
        each_step(prepared)
    synced = distributed.sync_quantization_state(prepared, ctx)
    prepared.eval()
    prepared.to("cpu")
    images = sum(h["images"] for h in history)
    seconds = sum(h["seconds"] for h in history)
    return prepared, {"steps": total, "history": history, "events": events, "synced_across_ranks": synced,
                      "images_per_s": images / seconds if seconds else 0.0,
                      "distill": distill.describe() if distill else None}


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
        scale, zero = fake_quant.calculate_qparams()  # what convert_pt2e will bake in
        shape = (-1, *([1] * (weight.dim() - 1))) if scale.numel() > 1 else (1,) * weight.dim()
        step, zero = scale.detach().reshape(shape), zero.detach().reshape(shape).float()
        levels = torch.clamp(torch.round(weight / step) + zero, fake_quant.quant_min, fake_quant.quant_max)
        quantized = (levels - zero) * step
        error = (quantized - weight).flatten(1)
        low, high = (fake_quant.quant_min - zero) * step, (fake_quant.quant_max - zero) * step
        rows.append({
            "layer": source.target.removesuffix(".weight"),
            "channels": weight.shape[0],
            "mean_step": float(step.mean()),
            "measured_mse": float(error.pow(2).mean()),
            "predicted_mse": float((step.flatten() ** 2 / 12).mean()),
            "clipped_fraction": float(((weight < low - step / 2) | (weight > high + step / 2)).float().mean()),
        })
    return rows


def convert(prepared: torch.fx.GraphModule, fold: bool = True, in_place: bool = False,
            snap: bool = True) -> torch.fx.GraphModule:
    """convert_pt2e of a copy of `prepared` (or of `prepared` itself, consumed, with `in_place`).

    Dynamic-activation graphs must be converted in place: a deep copy keeps node references inside
    the quantization annotations pointing at the old graph, and convert_pt2e's metadata pass then
    finds no choose_qparams node ("No chose qparams node found for linear").

    With `snap`, every conv/linear weight and bias that has a static int8 input is put on its
    int8/int32 grid (core/snapping.py), so that ExecuTorch (folded graph) and litert-torch
    (unfolded graph) start from the same integers; the counts go to `converted.meta["grid_snap"]`.
    Layers with dynamic (run-time) input ranges have no fixed bias grid and are never touched.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared if in_place else copy.deepcopy(prepared), fold_quantize=fold)
    if snap:
        converted.meta["grid_snap"] = snap_to_grid(converted)
    # Folding adds int8 copies of the weights; drop the float originals nothing reads any more.
    used = {n.target for n in converted.graph.nodes if n.op == "get_attr"}
    for name, _ in list(converted.named_parameters()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(converted.get_submodule(owner), attr)
    return converted


def float_weights(prepared: torch.fx.GraphModule, model: nn.Module) -> dict:
    """The QAT-trained float weights, keyed as in the original model (the export keeps the names).

    BatchNorm step counters are not in the QAT graph (core.rewrites drops their updates, and with them
    the unread buffers); the model's own counters are kept for them."""
    own = model.state_dict()
    names = set(own)
    state = {k: v.detach().clone() for k, v in prepared.state_dict().items() if k in names}
    for k in names - set(state):
        if k.rpartition(".")[2] == COUNTER:
            state[k] = own[k].detach().clone()
    missing = names - set(state)
    if missing:
        raise QuantError(f"QAT graph lost the weights {sorted(missing)}")
    return state


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
