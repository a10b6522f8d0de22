"""The int8 runtimes' constraints on activations, as data, applied by the one PT2E annotation.

The `.pte` (XNNPACK) and the `.tflite` (LiteRT) are both made from one PT2E graph, so the graph
must already hold the quantization parameters each runtime's int8 kernels insist on; otherwise a
runtime either refuses the file or requantizes on its own, and the two files stop agreeing.

Two kinds of constraint, each a table below:

- FIXED_GRIDS: ops whose int8 output grid is fixed by the kernel, whatever range was observed.
  LiteRT's int8 LOGISTIC and SOFTMAX require an output scale of 1/256 with zero point -128 (the
  grid of [0, 1)), TANH 1/128 with zero point 0 (the grid of [-1, 1)); XNNPACK's int8 sigmoid has
  the same requirement. hardsigmoid's [0, 1] and relu6's [0, 6] get the grid that spans them
  exactly. An observed range would give the PT2E graph another scale (LiteRT then fails to
  prepare: "output->params.scale == 1. / 256 was not true ... (LOGISTIC)").
- SAME_SCALE: ops that move or select values without computing new ones (pad, concatenate, max
  pool, nearest upsampling, slicing, reshapes and permutes). LiteRT's kernels require one scale
  and zero point on input and output (PAD's "same scale constraint"); the PT2E graph gets them by
  sharing the input's quantization parameters with the output.

`apply(model)` runs after XNNPACKQuantizer's own annotation, on its annotated graph: it fixes the
grid of each FIXED_GRIDS op whose input is int8, lets the ops reading that output read it on the
same grid (no requantize in between), and makes each SAME_SCALE op whose input is int8 share the
input's parameters. Nothing is annotated for float or dynamic (run-time range) activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KEY = "quantization_annotation"


@dataclass(frozen=True)
class Grid:
    """A fixed int8 output grid: value = scale * (q - zero_point), q in [-128, 127]."""

    scale: float
    zero_point: int
    why: str


aten = torch.ops.aten
SIGMOID_GRID = Grid(1.0 / 256, -128, "LiteRT LOGISTIC and XNNPACK qs8 sigmoid: output scale 1/256, zero point -128")
FIXED_GRIDS: dict = {
    aten.sigmoid.default: SIGMOID_GRID,
    aten.tanh.default: Grid(1.0 / 128, 0, "LiteRT TANH: output scale 1/128, zero point 0"),
    aten.softmax.int: Grid(1.0 / 256, -128, "LiteRT SOFTMAX: output scale 1/256, zero point -128"),
    aten._softmax.default: Grid(1.0 / 256, -128, "LiteRT SOFTMAX: output scale 1/256, zero point -128"),
    aten.hardsigmoid.default: Grid(1.0 / 255, -128, "the grid that spans hardsigmoid's [0, 1] exactly"),
}
# relu6 after an add is quantized on this grid by core.qat.relu6_after_add_in_its_range
RELU6_GRID = Grid(6.0 / 255, -128, "the grid that spans relu6's [0, 6] exactly; LiteRT fuses relu6 into the ADD")

SAME_SCALE: dict = {op: why for ops, why in [
    ((aten.constant_pad_nd.default, aten.pad.default), "LiteRT PAD: input and output share one scale"),
    ((aten.cat.default, aten.concat.default), "LiteRT CONCATENATION: inputs and output share one scale"),
    ((aten.max_pool2d.default,), "LiteRT MAX_POOL_2D: input and output share one scale"),
    ((aten.upsample_nearest2d.default, aten.upsample_nearest2d.vec),
     "LiteRT RESIZE_NEAREST_NEIGHBOR: input and output share one scale"),
    ((aten.slice.Tensor, aten.slice_copy.Tensor, aten.narrow.default, aten.select.int),
     "LiteRT STRIDED_SLICE / SLICE: input and output share one scale"),
    ((aten.view.default, aten.reshape.default, aten.view_copy.default, aten.flatten.using_ints,
      aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default), "LiteRT RESHAPE: input and output share one scale"),
    ((aten.permute.default, aten.permute_copy.default, aten.transpose.int),
     "LiteRT TRANSPOSE: input and output share one scale"),
    ((aten.alias.default, aten.clone.default, aten.contiguous.default), "no computation: the input's values"),
] for op in ops}


def _static_int8(spec) -> bool:
    return getattr(spec, "dtype", None) == torch.int8 and not getattr(spec, "is_dynamic", False)


def _output_spec(node) -> object | None:
    annotation = node.meta.get(KEY) if isinstance(node, torch.fx.Node) else None
    return None if annotation is None else annotation.output_qspec


def _root_spec(model: torch.fx.GraphModule, spec, seen: int = 0):
    """The spec a SharedQuantizationSpec chain ends at (the one that says the dtype)."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    while isinstance(spec, SharedQuantizationSpec) and seen < 1000:
        edge = spec.edge_or_node
        node = edge[0] if isinstance(edge, tuple) else edge
        spec, seen = _output_spec(node), seen + 1
    return spec


def _int8_output(model: torch.fx.GraphModule, node) -> bool:
    return _static_int8(_root_spec(model, _output_spec(node)))


def fixed_spec(grid: Grid):
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec

    return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=grid.scale, zero_point=grid.zero_point,
                                        quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine)


def read_on_its_grid(node: torch.fx.Node) -> None:
    """Let every op that reads `node` with a static int8 input spec read it on `node`'s own grid."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    for reader in node.users:
        spec = reader.meta.get(KEY)
        if spec is not None and node in spec.input_qspec_map and _static_int8(spec.input_qspec_map[node]):
            spec.input_qspec_map[node] = SharedQuantizationSpec(node)


def apply(model: torch.fx.GraphModule, allowed=None) -> dict[str, int]:
    """Annotate `model` (already annotated by XNNPACKQuantizer) with the tables' constraints; returns counts.

    `allowed(node)`, when given, is the quantizer's filter: nodes it refuses stay float."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    counts = {"fixed_grid": 0, "same_scale": 0}
    for node in model.graph.nodes:  # topological order: a chain of same-scale ops shares one grid
        if node.op != "call_function" or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        x = node.args[0]
        if allowed is not None and not allowed(node):
            continue
        if node.target in FIXED_GRIDS and _int8_output(model, x):
            node.meta[KEY] = QuantizationAnnotation(input_qspec_map={x: SharedQuantizationSpec(x)},
                                                    output_qspec=fixed_spec(FIXED_GRIDS[node.target]),
                                                    _annotated=True)
            read_on_its_grid(node)
            counts["fixed_grid"] += 1
        elif node.target in SAME_SCALE and node.target not in (aten.cat.default, aten.concat.default):
            annotation = node.meta.get(KEY)
            if not _int8_output(model, x):
                continue
            shared = SharedQuantizationSpec(x)
            if annotation is None or annotation.output_qspec is None or not _shares(annotation, x):
                node.meta[KEY] = QuantizationAnnotation(input_qspec_map={x: shared}, output_qspec=shared,
                                                        _annotated=True)
                counts["same_scale"] += 1
            read_on_its_grid(node)
    return counts


def _shares(annotation, x: torch.fx.Node) -> bool:
    """Does the annotation already give the output the input's parameters (XNNPACK's own propagation)?"""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    out = annotation.output_qspec
    return isinstance(out, SharedQuantizationSpec) and out.edge_or_node in (x, (x, None))
