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


def _quantized_layers(gm: torch.fx.GraphModule):
    """(layer node, its int8 weight's dequantize node, the weight grid, the bias tensor, the bias step or None) for
    every conv/linear whose input comes from a per-tensor dequantize and whose weight from a dequantize node."""
    for node in gm.graph.nodes:
        if _opname(node) not in LAYER_OPS or len(node.args) < 2:
            continue
        x, w = node.args[0], node.args[1]
        if not (isinstance(x, torch.fx.Node) and _opname(x) == "dequantize_per_tensor" and isinstance(x.args[1], float)):
            continue
        if not isinstance(w, torch.fx.Node) or (grid := _weight_grid(gm, w)) is None:
            continue
        bias_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        bias, (scales, axis) = _attr(gm, bias_node), grid
        on_grid = bias is not None and axis == 0 and scales.numel() in (1, bias.numel())
        yield node, w, bias_node, bias, (x.args[1] * scales if on_grid else None)  # s_in·s_w per output channel


def _bias_on_grid(bias: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    k = torch.clamp(torch.round(bias.double() / step), -INT32, INT32)
    return (k * step).to(bias.dtype)


def snap_to_grid(gm: torch.fx.GraphModule) -> dict:
    """Snap, in place, every quantized conv/linear weight and bias of a converted graph (folded or not).

    A layer counts as quantized when its input comes from a per-tensor dequantize and its weight
    from a dequantize node; other layers are left alone. Returns counts for the record.
    """
    layers = weights_moved = biases_moved = 0
    largest = 0.0  # the largest bias move, in units of its int32 step
    for _, w, _, bias, step in _quantized_layers(gm):
        layers += 1
        weights_moved += _snap_weight(gm, w)
        if step is None:
            continue
        with torch.no_grad():
            snapped = _bias_on_grid(bias, step)
            moved = snapped != bias
            if moved.any():
                largest = max(largest, float(((snapped.double() - bias.double()) / step).abs().max()))
            biases_moved += int(moved.sum())
            bias.copy_(snapped)
    return {"layers": layers, "weights_moved": weights_moved, "biases_moved": biases_moved,
            "largest_bias_move_steps": largest}


def restore_float(gm: torch.fx.GraphModule, float_state: dict) -> dict:
    """Undo snap_to_grid in place where the float values are known: put back the float weight and bias
    of each quantized layer of an unfolded graph, from `float_state` (keyed as the graph's constants).

    A float value is put back only where it snaps to exactly the value the graph holds, so a weight
    that is not the graph's (a conv weight before BatchNorm folding) is never swapped in. Used where
    the float network matters: the quantization study's error and bypass measurements. Returns how
    many weights and biases were restored and how many quantized layers kept their on-grid values.
    """
    restored_w = restored_b = kept = 0
    for _, w, bias_node, bias, step in list(_quantized_layers(gm)):
        q = w.args[0]
        weight = _attr(gm, q.args[0]) if isinstance(q, torch.fx.Node) else None
        candidate = float_state.get(q.args[0].target) if weight is not None else None
        if candidate is None or candidate.shape != weight.shape or not weight.is_floating_point():
            kept += 1
            continue
        trial = weight.detach().clone()
        with torch.no_grad():
            weight.copy_(candidate)
            _snap_weight(gm, w)  # snaps `weight` in place: equal to `trial` iff `candidate` is its float original
            if not torch.equal(weight, trial):
                weight.copy_(trial)
                kept += 1
                continue
            weight.copy_(candidate)
        restored_w += 1
        b = float_state.get(bias_node.target) if step is not None and isinstance(bias_node, torch.fx.Node) else None
        if b is not None and b.shape == bias.shape and torch.equal(_bias_on_grid(b.to(bias.dtype), step), bias):
            with torch.no_grad():
                bias.copy_(b)
            restored_b += 1
    return {"weights_restored": restored_w, "biases_restored": restored_b, "layers_left_on_grid": kept}
