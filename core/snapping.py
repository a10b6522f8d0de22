"""Put a converted PT2E graph's float weights and biases on the integer grids the runtimes use.

The two int8 exports start from different forms of one converted QAT model: ExecuTorch lowers
the folded graph (int8 weights computed here, by torch), litert-torch the unfolded graph (float
weights it quantizes itself), and both runtimes quantize each conv/linear bias to int32 with
scale s_in·s_w on their own. Their roundings differ, so the two files disagree on a few int8
weights and int32 biases, and the difference grows through a deep network. Snapping every
weight to dequant(quant(w)) and every bias to round(b / (s_in·s_w))·s_in·s_w hands both
converters numbers that are already on the grid: re-quantizing them is exact whatever the
rounding rule, so both files hold the same int8 weights and int32 biases.
"""

from __future__ import annotations

import torch

Q = torch.ops.quantized_decomposed
INT32 = 2 ** 31 - 1
LAYER_OPS = {"conv1d", "conv2d", "conv3d", "linear", "convolution"}


def _opname(node: torch.fx.Node) -> str:
    return getattr(node.target, "_opname", str(node.target)) if node.op == "call_function" else ""


def _attr(gm: torch.fx.GraphModule, node) -> torch.Tensor | None:
    """The tensor a get_attr node reads, or None when the argument is something else."""
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    owner, _, name = node.target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _weight_grid(gm, dq: torch.fx.Node) -> tuple[torch.Tensor, int] | None:
    """Per-output-channel weight scales (and the channel axis) of a weight's dequantize node."""
    if _opname(dq) == "dequantize_per_channel":
        scales, axis = _attr(gm, dq.args[1]), int(dq.args[3])
        return (scales.detach().double(), axis) if scales is not None else None
    if _opname(dq) == "dequantize_per_tensor" and isinstance(dq.args[1], float):
        return torch.tensor([dq.args[1]], dtype=torch.float64), 0
    return None


def _snap_weight(gm, dq: torch.fx.Node) -> int:
    """Unfolded graphs: replace the float weight by dequant(quant(w)); returns how many values moved."""
    q = dq.args[0]
    if not isinstance(q, torch.fx.Node) or _opname(q) not in ("quantize_per_channel", "quantize_per_tensor"):
        return 0  # folded graph: the weight is int8 already
    weight = _attr(gm, q.args[0])
    if weight is None or not weight.is_floating_point():
        return 0
    def resolve(args):
        return [_attr(gm, a) if isinstance(a, torch.fx.Node) else a for a in args]

    quant, dequant = getattr(Q, _opname(q)).default, getattr(Q, _opname(dq)).default
    with torch.no_grad():  # torch's own ops: the same int8 values the folded graph holds
        snapped = dequant(quant(weight, *resolve(q.args[1:])), *resolve(dq.args[1:]), **dq.kwargs)
        moved = int((snapped != weight).sum())
        weight.copy_(snapped)
    return moved


def snap_to_grid(gm: torch.fx.GraphModule) -> dict:
    """Snap, in place, every quantized conv/linear weight and bias of a converted graph (folded or not).

    A layer counts as quantized when its input comes from a per-tensor dequantize and its weight
    from a dequantize node; other layers are left alone. Returns counts for the record.
    """
    layers = weights_moved = biases_moved = 0
    largest = 0.0  # the largest bias move, in units of its int32 step
    for node in gm.graph.nodes:
        if _opname(node) not in LAYER_OPS or len(node.args) < 2:
            continue
        x, w = node.args[0], node.args[1]
        if not (isinstance(x, torch.fx.Node) and _opname(x) == "dequantize_per_tensor" and isinstance(x.args[1], float)):
            continue
        if not isinstance(w, torch.fx.Node) or (grid := _weight_grid(gm, w)) is None:
            continue
        layers += 1
        weights_moved += _snap_weight(gm, w)
        bias = _attr(gm, node.args[2] if len(node.args) > 2 else node.kwargs.get("bias"))
        scales, axis = grid
        if bias is None or axis != 0 or scales.numel() not in (1, bias.numel()):
            continue
        step = x.args[1] * scales  # s_in·s_w per output channel (one value for per-tensor weights)
        with torch.no_grad():
            k = torch.clamp(torch.round(bias.double() / step), -INT32, INT32)
            snapped = (k * step).to(bias.dtype)
            moved = snapped != bias
            if moved.any():
                largest = max(largest, float(((snapped.double() - bias.double()) / step).abs().max()))
            biases_moved += int(moved.sum())
            bias.copy_(snapped)
    return {"layers": layers, "weights_moved": weights_moved, "biases_moved": biases_moved,
            "largest_bias_move_steps": largest}
