"""The quantized layers of a converted QAT graph, named as the network names them, and their PyTorch outputs.

A *layer* here is one int8 activation: each `quantize_per_tensor` node of the converted (folded)
graph. It is named after the op that produced it, walked back through fused activations
(conv2d → relu → quantize is one layer, named after the conv): the op's module path from the
export's `nn_module_stack` (`features.3.conv.1.0`, `layer1.0`), or, for ops called in the top
module's own forward, the graph node's name (`max_pool2d`, `flatten`). Quantize nodes after ops
that only copy their input (eval-mode dropout, clone) repeat the layer before and are left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from . import dim_order

FUSED_ACTIVATIONS = {"relu", "relu_", "hardtanh", "hardtanh_", "clamp", "clamp_min", "clamp_max", "relu6"}
IDENTITY_OPS = {"dropout", "clone", "alias", "detach", "contiguous", "_to_copy", "native_dropout"}
INPUT = "input"


@dataclass
class Layer:
    index: int
    name: str  # module path (or node name for top-level ops), unique in the graph
    op: str  # the ops it covers, e.g. "conv2d+relu"
    node: str  # the quantize node in the converted graph
    scale: float
    zero_point: int
    module_path: str  # "" for ops of the top module
    module_class: str
    hierarchy: str  # litert-torch's debug-info name of the layer's main op (.tflite tensor names carry it)
    out_hierarchy: str  # the same for the op whose result is quantized (the last fused activation, if any)
    is_output: bool = False  # feeds the graph output
    activation: str | None = None  # the activation layer that alone reads this one, on the same grid
    inputs: list[str] = field(default_factory=list)  # the layers its op reads (through dequantize), in graph order

    def to_dict(self) -> dict:
        return asdict(self)


def opname(node: torch.fx.Node) -> str:
    if node.op != "call_function":
        return node.op
    return getattr(node.target, "_opname", getattr(node.target, "__name__", str(node.target)))


def is_quantize(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and opname(node) == "quantize_per_tensor" and isinstance(node.args[1], float)


def _class_name(kind) -> str:
    if isinstance(kind, str):
        return kind
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def module_stack(node: torch.fx.Node) -> list[tuple[str, str]]:
    """(path, class) from the top module down to the one that ran this op."""
    return [(path, _class_name(kind)) for path, kind in (node.meta.get("nn_module_stack") or {}).values()]


def hierarchy(node: torch.fx.Node) -> str:
    """The name litert-torch gives an op's location (backend/debuginfo): Class_lastname per level, joined by '/'."""
    return "/".join(cls + (f"_{path.split('.')[-1]}" if path else "") for path, cls in module_stack(node))


def _anchor(q: torch.fx.Node) -> tuple[torch.fx.Node, list[str]]:
    """The op a quantize node's value comes from, walking back through fused activations."""
    ops, node = [], q.args[0]
    while (isinstance(node, torch.fx.Node) and opname(node) in FUSED_ACTIVATIONS
           and isinstance(node.args[0], torch.fx.Node) and opname(node.args[0]) != "dequantize_per_tensor"):
        ops.append(opname(node))
        node = node.args[0]
    return node, [opname(node).rstrip("_")] + [op.rstrip("_") for op in ops[::-1]]


def _feeds_output(q: torch.fx.Node) -> bool:
    return any(u.op == "output" or (opname(u) == "dequantize_per_tensor" and any(v.op == "output" for v in u.users))
               for u in q.users)


def quantized_layers(gm: torch.fx.GraphModule) -> list[Layer]:
    """Every int8 activation of a converted graph, in graph order, with its network name."""
    layers, taken = [], set()
    for q in gm.graph.nodes:
        if not is_quantize(q) or not isinstance(q.args[0], torch.fx.Node):
            continue
        anchor, ops = _anchor(q)
        if anchor.op == "placeholder":
            name, path, cls, ops = INPUT, "", "", ["quantize"]
        elif opname(anchor) in IDENTITY_OPS:
            continue
        else:
            stack = module_stack(anchor)
            path, cls = stack[-1] if stack else ("", "")
            name = path or anchor.name
        if name in taken:
            name = f"{name}:{anchor.name}"
        taken.add(name)
        layers.append(Layer(index=len(layers), name=name, op="+".join(ops), node=q.name, scale=float(q.args[1]),
                            zero_point=int(q.args[2]), module_path=path, module_class=cls.rsplit(".", 1)[-1],
                            hierarchy=hierarchy(anchor) if anchor.op != "placeholder" else "",
                            out_hierarchy=hierarchy(q.args[0]) if anchor.op != "placeholder" else "",
                            is_output=_feeds_output(q)))
    if not layers:
        raise ValueError("the graph has no quantize_per_tensor nodes: it is not a converted int8 PT2E graph")
    by_node = {layer.node: layer for layer in layers}
    nodes = {n.name: n for n in gm.graph.nodes}
    for layer in layers:
        follower = _lone_activation(nodes[layer.node])
        if follower is not None and follower.name in by_node:
            layer.activation = by_node[follower.name].name
        layer.inputs = [by_node[q].name for q in _read_quantized(nodes[layer.node]) if q in by_node]
    return layers


def _read_quantized(q: torch.fx.Node) -> list[str]:
    """The quantize nodes whose values the op behind quantize node q reads (walking back to each dequantize)."""
    found, stack, seen = [], list(q.all_input_nodes), set()
    while stack:
        node = stack.pop(0)
        if node.name in seen:
            continue
        seen.add(node.name)
        if opname(node) == "dequantize_per_tensor":
            source = node.args[0]
            if isinstance(source, torch.fx.Node) and is_quantize(source) and source.name not in found:
                found.append(source.name)
        elif not is_quantize(node) and node.op == "call_function":
            stack += node.all_input_nodes
    return found


def _lone_activation(q: torch.fx.Node) -> torch.fx.Node | None:
    """The quantize node after q -> dequantize -> relu/relu6 -> quantize on q's grid, if that is q's only reader.

    Converters fuse such an activation into the op before it, so that op's own int8 output exists
    in PyTorch (and in a tapped .pte) but not in a .tflite.
    """
    readers = list(q.users)
    if len(readers) != 1 or opname(readers[0]) != "dequantize_per_tensor" or len(readers[0].users) != 1:
        return None
    act = next(iter(readers[0].users))
    if opname(act) not in FUSED_ACTIVATIONS or len(act.users) != 1:
        return None
    nxt = next(iter(act.users))
    return nxt if is_quantize(nxt) and nxt.args[1:3] == q.args[1:3] else None


class _Capture(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, nodes: set[str]):
        super().__init__(gm)
        self.nodes, self.values = nodes, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.nodes:
            self.values[n.name] = out.detach().clone()
        return out


def capture_pytorch(gm: torch.fx.GraphModule, layers: list[Layer], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's int8 output in the converted graph itself (torch.fx Interpreter), keyed by layer name."""
    runner = _Capture(gm, {layer.node for layer in layers})
    with torch.no_grad():
        runner.run(images)
    return {layer.name: runner.values[layer.node] for layer in layers}


class _Forced(_Capture):
    """Records each layer's value as PyTorch computes it, then hands the next op the runtime's value instead."""

    def __init__(self, gm: torch.fx.GraphModule, nodes: set[str], forced: dict[str, torch.Tensor]):
        super().__init__(gm, nodes)
        self.forced = forced

    def run_node(self, n):
        out = super().run_node(n)
        given = self.forced.get(n.name)
        return out if given is None else given.reshape(out.shape).to(out.dtype)


def capture_local(gm: torch.fx.GraphModule, layers: list[Layer], images: torch.Tensor,
                  runtime: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each layer as the converted graph computes it from a runtime's own values of the layers before it.

    Teacher forcing: wherever `runtime` (layer name -> that runtime's int8 values, any layout-free shape
    of the same size) has a layer, the graph continues from the runtime's value, not its own. So each
    returned layer differs from the runtime's only by what the runtime does at that one op (a layer the
    runtime has no tensor for is computed on, and joins the next layer's op), never by what it
    inherited from earlier layers. Keyed by layer name.
    """
    nodes = {layer.name: layer.node for layer in layers}
    forced = {nodes[name]: value for name, value in runtime.items() if name in nodes}
    runner = _Forced(gm, set(nodes.values()), forced)
    with torch.no_grad():
        runner.run(images)
    return {layer.name: runner.values[layer.node] for layer in layers}


# ---- dimension order (converters/dim_order.py) -----------------------------------------------------
PERMUTE_OPS = {"permute", "permute_copy", "transpose", "transpose_copy", "swapaxes", "t", "t_copy", "numpy_T"}
RESHAPE_OPS = {"view", "view_copy", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "squeeze_copy",
               "unsqueeze", "unsqueeze_copy"}
CONV_OPS = {"conv2d", "convolution"}
NEW_AXES_OPS = {"conv1d", "conv_transpose2d", "linear", "matmul", "bmm", "mm", "addmm", "baddbmm", "einsum",
                "pixel_shuffle", "pixel_unshuffle", "channel_shuffle"}


def _permutation(node: torch.fx.Node, rank: int) -> list[int]:
    """The dims a PyTorch permute/transpose node takes its output's dims from."""
    op = opname(node)
    if op in ("t", "t_copy", "numpy_T"):
        return list(range(rank))[::-1]
    if op.startswith("permute"):
        return [d % rank for d in (node.args[1] if len(node.args) > 1 else node.kwargs["dims"])]
    a, b = (d % rank for d in node.args[1:3])
    dims = list(range(rank))
    dims[a], dims[b] = b, a
    return dims


class _Frames(torch.fx.Interpreter):
    """Each node's frame (dim_order), as the graph's ops move its dims."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm)
        self.frames: dict[str, dim_order.Frame] = {}

    def run_node(self, n):
        out = super().run_node(n)
        inputs = [a for a in n.all_input_nodes if a.name in self.frames]
        if not isinstance(out, torch.Tensor):  # a list (split), read by getitem: its parts keep the input's frame
            if inputs:
                self.frames[n.name] = self.frames[inputs[0].name]
            return out
        shape, op = tuple(out.shape), opname(n)
        first = self.frames.get(n.args[0].name) if n.args and isinstance(n.args[0], torch.fx.Node) else None
        if n.op == "placeholder":
            frame = dim_order.named(dim_order.NCHW, shape) if len(shape) == 4 else dim_order.fresh(shape)
        elif op in CONV_OPS and len(shape) == 4:
            frame = dim_order.named(dim_order.NCHW, shape)
        elif op in PERMUTE_OPS and first is not None and len(first) == len(shape):
            frame = dim_order.permute(first, _permutation(n, len(shape)))
        elif op in RESHAPE_OPS and first is not None:
            frame = dim_order.reshape(first, shape) or dim_order.fresh(shape)
        elif op in NEW_AXES_OPS or op in CONV_OPS:
            frame = dim_order.fresh(shape)
        else:  # elementwise, pad, slice, cat, pooling, quantize
            frame = dim_order.follow([self.frames[a.name] for a in inputs], shape)
        self.frames[n.name] = frame
        return out


def layer_frames(gm: torch.fx.GraphModule, layers: list[Layer], image: torch.Tensor) -> dict[str, dim_order.Frame]:
    """Each layer's frame (dim_order) in the converted graph, for a batch of one image; keyed by layer name."""
    runner = _Frames(gm)
    with torch.no_grad():
        runner.run(image[:1])
    return {layer.name: runner.frames[layer.node] for layer in layers}
