"""Quantization numerics read from a converted PT2E graph (convert_pt2e, fold_quantize=False).

In the unfolded graph every quantized tensor passes through an explicit quantize → dequantize
pair whose arguments are the scale, zero point and integer range the runtimes use. This module

- finds each pair and the layer it belongs to (weights: the conv/linear that reads them;
  activations: the conv/linear whose output, after its activation function, they quantize);
- runs the graph with chosen pairs bypassed (a `torch.fx.Interpreter`): bypass the activation
  pairs and the network computes with int8 weights and float activations (weight-only); bypass
  the weight pairs for activation-only; bypass both for the float network with the same weights;
- accumulates, per layer, the SQNR, the MSE against the uniform-noise model Δ²/12 and the clipped
  fraction of the weights and of the output activations.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from core import snapping
from core.data import DataBundle

COMPUTE = {torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default,
           torch.ops.aten.linear.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.default}
BATCH = 256


def _op_name(node: torch.fx.Node) -> str:
    return str(node.target) if node.op == "call_function" else ""


def is_quantize(node: torch.fx.Node) -> bool:
    return _op_name(node).startswith("quantized_decomposed.quantize_per_")


def is_dequantize(node: torch.fx.Node) -> bool:
    return _op_name(node).startswith("quantized_decomposed.dequantize_per_")


def _is_constant(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "get_attr"


def module_path(node: torch.fx.Node) -> str | None:
    """The module a node was traced in (its innermost nn_module_stack entry), e.g. 'conv1' or 'features.3.conv.0.0'."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path or None


@dataclass
class Quantizer:
    """One quantize → dequantize pair of the graph."""

    node: torch.fx.Node  # the quantize node
    kind: str  # "weight" or "activation"
    layer: str | None  # the conv/linear it belongs to ("input" for the network input); None: a re-quantization


def quantizers(graph_module: torch.fx.GraphModule) -> list[Quantizer]:
    found = []
    for node in graph_module.graph.nodes:
        if not is_quantize(node):
            continue
        source = node.args[0]
        if _is_constant(source):
            consumers = [u for d in node.users if is_dequantize(d) for u in d.users if u.target in COMPUTE]
            layer = module_path(consumers[0]) if consumers else source.target.removesuffix(".weight")
            found.append(Quantizer(node, "weight", layer))
        else:
            found.append(Quantizer(node, "activation", _producing_layer(source)))
    return found


def _producing_layer(node: torch.fx.Node) -> str | None:
    """Walk back through one-input ops (ReLU, clamp, ...) to the conv/linear that produced an activation."""
    while True:
        if node.op == "placeholder":
            return "input"
        if node.op != "call_function" or is_dequantize(node) or is_quantize(node):
            return None  # a dequantized tensor re-quantized after pooling/reshaping: not a layer's output
        if node.target in COMPUTE:
            return module_path(node)
        inputs = [a for a in node.args if isinstance(a, torch.fx.Node) and not _is_constant(a)]
        if len(inputs) != 1:
            return None  # an add or a concat: not one layer's output
        node = inputs[0]


class Simulator(torch.fx.Interpreter):
    """Run an unfolded converted graph with some quantize → dequantize pairs replaced by the identity."""

    def __init__(self, graph_module: torch.fx.GraphModule, weights: bool = True, activations: bool = True,
                 taps: set[torch.fx.Node] | None = None):
        super().__init__(graph_module)
        kinds = {q.node: q.kind for q in quantizers(graph_module)}
        self.bypassed = {n for n, kind in kinds.items() if (kind == "weight" and not weights)
                         or (kind == "activation" and not activations)}
        self.taps = taps or set()
        self.seen: dict[torch.fx.Node, tuple] = {}

    def run_node(self, n: torch.fx.Node):
        if n in self.bypassed or (is_dequantize(n) and n.args[0] in self.bypassed):
            value = self.env[n.args[0]]  # the float tensor goes through untouched
        else:
            value = super().run_node(n)
        if n in self.taps:
            args, _ = self.fetch_args_kwargs_from_env(n)
            self.seen[n] = args
        return value

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = {}
        with torch.no_grad():
            out = self.run(x)
        while isinstance(out, (tuple, list)) and len(out) == 1:  # the graph returns its outputs flattened
            out = out[0]
        return out


def fake_quantize(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = None):
    """dequantize(quantize(x)) as the runtimes compute it; also the unclamped integer values (for clipping)."""
    scale = torch.as_tensor(scale, dtype=torch.float32)
    zero_point = torch.as_tensor(zero_point, dtype=torch.float32)
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    q = torch.round(x / scale) + zero_point
    return (q.clamp(qmin, qmax) - zero_point) * scale, q, scale


def _quant_args(args: tuple) -> dict:
    """quantize_per_tensor(x, scale, zp, qmin, qmax, dtype); quantize_per_channel(x, scale, zp, axis, qmin, qmax, dtype)."""
    if len(args) >= 7:
        return {"scale": args[1], "zero_point": args[2], "axis": int(args[3]), "qmin": int(args[4]), "qmax": int(args[5])}
    return {"scale": args[1], "zero_point": args[2], "axis": None, "qmin": int(args[3]), "qmax": int(args[4])}


def _fetch(graph_module: torch.fx.GraphModule, target: str):
    value = graph_module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def sqnr_db(signal_power: float, noise_power: float) -> float | None:
    if noise_power <= 0 or signal_power <= 0:
        return None  # no error (infinite SQNR) or no signal: JSON has no infinity
    return 10.0 * math.log10(signal_power / noise_power)


def float_restored(graph_module: torch.fx.GraphModule, float_state: dict) -> tuple[torch.fx.GraphModule, dict]:
    """A copy of a converted, unfolded graph with its float weights and biases put back (core.snapping.restore_float).

    The pipeline's graphs hold weights and biases snapped to their integer grids (so that the .pte and
    the .tflite agree). Measured on those, rounding would cost nothing and "weights bypassed" would
    still mean on-grid weights; the study measures from the float values instead.
    """
    restored = copy.deepcopy(graph_module)
    return restored, snapping.restore_float(restored, float_state)


def weight_errors(graph_module: torch.fx.GraphModule) -> list[dict]:
    """Per quantized weight: SQNR of the int8 values against the float ones, MSE against Δ²/12, clipping."""
    rows = []
    for q in quantizers(graph_module):
        if q.kind != "weight":
            continue
        weight = _fetch(graph_module, q.node.args[0].target).detach().float()
        args = [weight] + [_fetch(graph_module, a.target) if _is_constant(a) else a for a in q.node.args[1:]]
        spec = _quant_args(tuple(args))
        dequant, raw, step = fake_quantize(weight, spec["scale"], spec["zero_point"], spec["qmin"], spec["qmax"], spec["axis"])
        error = dequant - weight
        step_full = step.expand_as(weight)
        rows.append({
            "layer": q.layer, "elements": weight.numel(), "channels": int(weight.shape[spec["axis"]]) if spec["axis"] is not None else 1,
            "bits": int(round(math.log2(spec["qmax"] - spec["qmin"] + 1))),
            "sqnr_db": sqnr_db(float(weight.pow(2).sum()), float(error.pow(2).sum())),
            "measured_mse": float(error.pow(2).mean()),
            "predicted_mse": float((step_full ** 2).mean() / 12),
            "clipped_fraction": float(((raw < spec["qmin"]) | (raw > spec["qmax"])).float().mean()),
            "mean_step": float(step_full.mean()),
        })
    return rows


@dataclass
class _Sums:
    n: int = 0
    signal: float = 0.0  # Σ x² of the tensor entering the quantizer
    noise: float = 0.0  # Σ (x̂ - x)²: this quantizer's own rounding and clipping
    clipped: int = 0
    zeros: int = 0  # entries that are exactly zero (e.g. after ReLU): on the grid, so no rounding error
    reference: float = 0.0  # Σ x_float² at the same point of the float network
    drift: float = 0.0  # Σ (x̂ - x_float)²: all error accumulated up to here
    step: float = 0.0
    layer: str = ""
    node: str = ""
    extra: dict = field(default_factory=dict)


def activation_errors(graph_module: torch.fx.GraphModule, data: DataBundle, batches: int = 0) -> list[dict]:
    """Per layer output quantizer, over test batches: its own SQNR, MSE against Δ²/12 and clipping, and the
    SQNR against the float network (the same graph with every quantize → dequantize pair bypassed)."""
    taps = {q.node: q for q in quantizers(graph_module) if q.kind == "activation" and q.layer is not None}
    quantized = Simulator(graph_module, taps=set(taps))
    floating = Simulator(graph_module, weights=False, activations=False, taps=set(taps))
    sums = {node: _Sums(layer=q.layer, node=node.name) for node, q in taps.items()}
    for i, (images, _) in enumerate(data.batches("test", BATCH)):
        if batches and i >= batches:
            break
        quantized(images)
        floating(images)
        for node, s in sums.items():
            args = quantized.seen[node]
            x = args[0].float()
            spec = _quant_args(args)
            dequant, raw, step = fake_quantize(x, spec["scale"], spec["zero_point"], spec["qmin"], spec["qmax"])
            x_float = floating.seen[node][0].float()
            s.n += x.numel()
            s.signal += float(x.pow(2).sum())
            s.noise += float((dequant - x).pow(2).sum())
            s.clipped += int(((raw < spec["qmin"]) | (raw > spec["qmax"])).sum())
            s.zeros += int((x == 0).sum())
            s.reference += float(x_float.pow(2).sum())
            s.drift += float((dequant - x_float).pow(2).sum())
            s.step = float(step)
    rows = []
    for s in sums.values():
        if not s.n:
            continue
        rows.append({
            "layer": s.layer, "node": s.node, "elements": s.n, "step": s.step,
            "sqnr_db": sqnr_db(s.signal, s.noise),
            "measured_mse": s.noise / s.n,
            "predicted_mse": s.step ** 2 / 12,
            "clipped_fraction": s.clipped / s.n,
            "zero_fraction": s.zeros / s.n,
            "sqnr_vs_float_db": sqnr_db(s.reference, s.drift),
        })
    return rows


def simulated_logits(graph_module: torch.fx.GraphModule, data: DataBundle, weights: bool, activations: bool) -> np.ndarray:
    """Test-set logits of the graph with only the chosen quantizers active (PyTorch simulation)."""
    from core.evaluate import predict

    return predict(Simulator(graph_module, weights=weights, activations=activations), data)
