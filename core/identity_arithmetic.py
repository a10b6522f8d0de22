"""Arithmetic with an identity scalar (`x + 0`, `x - 0`, `x * 1`, `x / 1`), removed from a torch.export graph.

A block that sums its branches from a Python `0` (timm's MobileOneBlock: `identity_out = 0`, then
`out += identity_out` when the block has no identity branch; `out = 0; out += conv(x)` when it has no
scale branch) traces to `add_(out, 0)` / `add(out, 0)`. Two harms, both from ops that compute nothing:

- ExecuTorch lifts the int `0` to an int64 scalar tensor and casts it to float with a
  `_to_dim_order_copy` that XNNPACK refuses (a dtype conversion): the `.pte`, fp32 or int8, is
  refused for ops outside the delegate (MobileOne: 8, one per block without an identity branch);
- in a quantized graph the quantizer annotates the add as an int8 op with an output observer of
  its own: a requantize of a tensor onto a second grid, which one runtime may keep and another
  fold away.

The value of each such op is exactly its tensor operand (IEEE: x + 0 = x - 0 = x * 1 = x / 1 for
every x but -0.0 + 0, which is +0.0 and equal to it), so the node is replaced by that operand. In-place
variants (`add_`, which the training-dialect graph keeps) are removed the same way: they leave their
operand's values as they were. Only nodes whose result has the operand's shape and dtype are removed
(no broadcast, no type promotion), so the graph's outputs are unchanged.
"""

from __future__ import annotations

import torch

from .fx_nodes import is_number, tensor_value

aten = torch.ops.aten
# op -> the scalar that makes it the identity on its first (tensor) operand
IDENTITIES = {
    **{op: 0 for op in (aten.add.Tensor, aten.add.Scalar, aten.add_.Tensor, aten.add_.Scalar,
                        aten.sub.Tensor, aten.sub.Scalar, aten.sub_.Tensor, aten.sub_.Scalar)},
    **{op: 1 for op in (aten.mul.Tensor, aten.mul.Scalar, aten.mul_.Tensor, aten.mul_.Scalar,
                        aten.div.Tensor, aten.div.Scalar, aten.div_.Tensor, aten.div_.Scalar)},
}


def _is_identity(node: torch.fx.Node) -> bool:
    if node.op != "call_function" or node.target not in IDENTITIES or len(node.args) != 2:
        return False
    x, scalar = node.args
    if not isinstance(x, torch.fx.Node) or not is_number(scalar):
        return False
    if scalar != IDENTITIES[node.target]:
        return False
    alpha = node.kwargs.get("alpha", 1)
    if set(node.kwargs) - {"alpha"} or not isinstance(alpha, (int, float)) or alpha != alpha:
        return False  # a rounding mode (div) or anything else: not the plain identity
    before, after = tensor_value(x), tensor_value(node)
    return before is not None and after is not None and before.dtype.is_floating_point \
        and before.dtype == after.dtype and tuple(before.shape) == tuple(after.shape)


def remove_identity_arithmetic(gm: torch.fx.GraphModule) -> int:
    """Replace each `x + 0`, `x - 0`, `x * 1`, `x / 1` (in place or not) by `x`; returns how many."""
    removed = 0
    for node in list(gm.graph.nodes):
        if _is_identity(node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
    return removed


STEP = ("identity arithmetic (x + 0, x * 1)", "removed", remove_identity_arithmetic,
        "computes nothing; ExecuTorch casts the int 0 with a _to_dim_order_copy XNNPACK refuses, "
        "and a quantizer requantizes the sum")
