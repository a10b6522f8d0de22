"""Graph preparation steps that write arithmetic another way (core/graph_prep.py runs them and checks each
against the original in float): a trailing sum as a mean times its count, group norm as its arithmetic, SiLU as
x * sigmoid(x), division by a constant as multiplication by its reciprocal, integer scalars of float arithmetic
as floats. Each returns how many places it rewrote."""

from __future__ import annotations

import torch

from .fx_nodes import calls as _call, is_int as _is_int, is_number as _number, shape as _shape, tensor_value, with_meta as _meta, reshape_sizes as _sizes, product as _product

aten = torch.ops.aten

SUMS = (aten.sum.dim_IntList,)
GROUP_NORMS = (aten.group_norm.default,)
ARITHMETIC = (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.rsub.Scalar,
              aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar)
DIVISIONS = (aten.div.Tensor, aten.div.Scalar)
SILU = (aten.silu.default, aten.silu_.default)


def _call_op(graph, target, args, like, value=None):
    """A new call of `target`, with `like`'s metadata and, unless given, the example value computed from its
    arguments' (later steps read shapes from it)."""
    if value is None:
        try:
            value = target(*torch.fx.node.map_arg(args, lambda n: n.meta.get("val")))
        except Exception:  # noqa: BLE001 - no example value: later steps skip the node
            value = None
    return _meta(graph.call_function(target, args), like, value)


def _plane_mean(graph, x, rows: int, count: int, like):
    """mean over `count` trailing values of each of `rows` leading groups: x as [-1, rows, count, 1], then
    mean over dims (2, 3) kept: [-1, rows, 1, 1]."""
    flat = _call_op(graph, aten.reshape.default, (x, [-1, rows, count, 1]), like)
    return flat, _call_op(graph, aten.mean.dim, (flat, [2, 3], True), like)


def sum_as_mean(gm: torch.fx.GraphModule) -> int:
    """`x.sum(dims, keepdim)` over the trailing dims of a 4-d x of known sizes (but the batch), as
    `mean` over dims (2, 3) of x reshaped to [-1, leading, reduced, 1], times the count; returns how many."""
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if not _call(node, SUMS) or node.kwargs.get("dtype") is not None or len(node.args) < 2:
            continue
        x, shape, out = node.args[0], _shape(node.args[0]), _shape(node)
        if shape is None or out is None or len(shape) != 4 or not all(_is_int(s) for s in shape[1:]):
            continue
        dims = sorted(d % 4 for d in node.args[1])
        if not dims or dims != list(range(4 - len(dims), 4)) or dims[0] == 0:
            continue  # not the trailing dims only
        count = _product(shape[d] for d in dims)
        rows = _product(shape[d] for d in range(1, dims[0]))
        sizes = _sizes(out)
        if sizes is None:
            continue
        with graph.inserting_before(node):
            _, mean = _plane_mean(graph, x, rows, count, node)
            total = _call_op(graph, aten.mul.Tensor, (mean, float(count)), node)
            back = _call_op(graph, aten.reshape.default, (total, sizes), node, node.meta.get("val"))
        node.replace_all_uses_with(back)
        graph.erase_node(node)
        done += 1
    return done


def group_norm_arithmetic(gm: torch.fx.GraphModule) -> int:
    """`group_norm(x, G, weight, bias, eps)` of a 4-d x of known sizes (but the batch) as its arithmetic:
    each group's mean and (biased) variance as plane means, (x - mean) * rsqrt(var + eps), then the
    per-channel weight and bias; returns how many."""
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if not _call(node, GROUP_NORMS):
            continue
        x, groups, weight, bias, eps = (list(node.args) + [None] * 6)[:5]
        shape = _shape(x)
        if shape is None or len(shape) != 4 or not all(_is_int(s) for s in shape[1:]) or not _is_int(groups):
            continue
        _, c, h, w = shape
        if c % groups:
            continue
        eps = 1e-5 if eps is None else float(eps)
        count = c // groups * h * w
        with graph.inserting_before(node):
            flat, mean = _plane_mean(graph, x, groups, count, node)
            centred = _call_op(graph, aten.sub.Tensor, (flat, mean), node)
            square = _call_op(graph, aten.mul.Tensor, (centred, centred), node)
            var = _call_op(graph, aten.mean.dim, (square, [2, 3], True), node)
            scale = _call_op(graph, aten.rsqrt.default, (_call_op(graph, aten.add.Tensor, (var, eps), node),), node)
            y = _call_op(graph, aten.reshape.default, (_call_op(graph, aten.mul.Tensor, (centred, scale), node),
                                                       [-1, c, h, w]), node)
            if weight is not None:
                y = _call_op(graph, aten.mul.Tensor,
                             (y, _call_op(graph, aten.reshape.default, (weight, [1, c, 1, 1]), node)), node)
            if bias is not None:
                y = _call_op(graph, aten.add.Tensor,
                             (y, _call_op(graph, aten.reshape.default, (bias, [1, c, 1, 1]), node)), node)
        y.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(y)
        graph.erase_node(node)
        done += 1
    return done


def float_scalars(gm: torch.fx.GraphModule) -> int:
    """Integer scalar operands of float arithmetic made float (`x / 2` -> `x / 2.0`); returns how many."""
    done = 0
    for node in gm.graph.nodes:
        if not _call(node, ARITHMETIC):
            continue
        tensor = next((a for a in node.args if isinstance(a, torch.fx.Node)), None)
        value = tensor_value(tensor)
        if value is None or not value.dtype.is_floating_point:
            continue
        if any(_is_int(a) for a in node.args):
            node.args = tuple(float(a) if _is_int(a) else a for a in node.args)
            done += 1
    return done


def division_as_multiplication(gm: torch.fx.GraphModule) -> int:
    """`x / c` for a constant number c (not 0) as `x * (1 / c)`; returns how many.

    Only true division of a float tensor: a `rounding_mode` (floor, trunc) is left alone.
    """
    done = 0
    for node in list(gm.graph.nodes):
        if not _call(node, DIVISIONS) or node.kwargs.get("rounding_mode") is not None or len(node.args) != 2:
            continue
        x, c = node.args
        value = tensor_value(x)
        if not _number(c) or c == 0 or value is None or not value.dtype.is_floating_point:
            continue
        with gm.graph.inserting_before(node):
            product = _meta(gm.graph.call_function(aten.mul.Tensor, (x, 1.0 / float(c))), node, node.meta.get("val"))
        node.replace_all_uses_with(product)
        gm.graph.erase_node(node)
        done += 1
    return done


def silu_as_sigmoid_mul(gm: torch.fx.GraphModule) -> int:
    """`silu(x)` as `x * sigmoid(x)` (its definition); returns how many.

    LiteRT has no int8 SiLU: a quantized graph's silu reached the `.tflite` as a float LOGISTIC and MUL between a
    DEQUANTIZE and a QUANTIZE. As sigmoid and mul, both quantize: the sigmoid on its fixed output grid
    (core/int8_constraints.py), the product as any int8 mul, in the `.pte`, the `.tflite` and Core ML alike.
    """
    done = 0
    for node in list(gm.graph.nodes):
        if not _call(node, SILU):
            continue
        x = node.args[0]
        value = x.meta.get("val")
        with gm.graph.inserting_before(node):
            gate = _meta(gm.graph.call_function(aten.sigmoid.default, (x,)), node,
                         torch.sigmoid(value) if isinstance(value, torch.Tensor) else None)
            product = _meta(gm.graph.call_function(aten.mul.Tensor, (x, gate)), node, node.meta.get("val"))
        node.replace_all_uses_with(product)
        gm.graph.erase_node(node)
        done += 1
    return done
