"""Small facts about torch.fx nodes of a torch.export graph, shared by the graph rewrites (core/graph_layout.py,
core/graph_arithmetic.py, core/identity_arithmetic.py): the example value export recorded on a node, its shape,
what kind of Python scalar an operand is, and reshape sizes of a shape whose batch may be symbolic."""

from __future__ import annotations

import torch


def calls(node: torch.fx.Node, targets) -> bool:
    """Whether `node` calls one of `targets` (aten overloads)."""
    return node.op == "call_function" and node.target in targets


def tensor_value(node) -> torch.Tensor | None:
    """The tensor torch.export recorded for `node` (`meta["val"]`), or None (not a node, or no tensor)."""
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def shape(node) -> tuple | None:
    value = tensor_value(node)
    return tuple(value.shape) if value is not None else None


def is_int(v) -> bool:
    """A Python int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A Python int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def with_meta(node: torch.fx.Node, like: torch.fx.Node, value) -> torch.fx.Node:
    """`node` given `like`'s metadata (module stack, source) and `value` as its recorded example value."""
    node.meta = {k: v for k, v in like.meta.items() if k != "val"}
    if value is not None:
        node.meta["val"] = value
    return node


def reshape_sizes(shape) -> list | None:
    """`shape` as reshape sizes: a symbolic size (the dynamic batch) as -1; None when more than one is symbolic."""
    dynamic = [i for i, s in enumerate(shape) if not is_int(s)]
    return None if len(dynamic) > 1 else [s if is_int(s) else -1 for s in shape]


def product(sizes):
    """The product of `sizes` (ints, or symbolic sizes)."""
    total = 1
    for s in sizes:
        total = total * s
    return total
