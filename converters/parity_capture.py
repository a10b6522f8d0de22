"""Each layer's int8 output inside the real runtimes: the ExecuTorch .pte and the LiteRT .tflite.

- ExecuTorch: ETDump cannot see inside the XNNPACK delegate (it logs each XNNPACK kernel's
  time, but intermediate values only at the delegate's boundary). So this uses ExecuTorch's own
  intermediate-output tap (`executorch.devtools.intermediate_output_tap`): a *debug copy* of the
  same converted graph is lowered with the same partitioner, each layer's quantize node made an
  extra program output, and run in `executorch.runtime`. The shipped .pte is not the file that
  runs; `LayerProgram.check_against` holds the copy's final output to the shipped file's.
- LiteRT: the interpreter with `experimental_preserve_all_tensors=True` keeps every tensor; each
  layer is found by the module hierarchy litert-torch writes into tensor names, confirmed by
  the tensor's scale, zero point and size (`match_tflite`), and read in the PyTorch layer's dim order
  (converters/dim_order.py: the permutes and reshapes of both graphs followed, not an NCHW/NHWC guess).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core import io as atomic

from . import dim_order
from .layers import INPUT, Layer, is_quantize

# .tflite producers that only move or reshape data; a layer is matched to its computing op first
LAYOUT_OPS = {"TRANSPOSE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS"}
NEW_AXES_OPS = {"FULLY_CONNECTED", "BATCH_MATMUL"}  # ops whose output axes are new (as layers.NEW_AXES_OPS)
NHWC_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "TRANSPOSE_CONV", "RESIZE_BILINEAR",
            "RESIZE_NEAREST_NEIGHBOR"}
OP_KINDS = {  # PyTorch op -> the .tflite ops that compute it
    "conv2d": {"CONV_2D", "DEPTHWISE_CONV_2D"}, "convolution": {"CONV_2D", "DEPTHWISE_CONV_2D"},
    "linear": {"FULLY_CONNECTED"}, "max_pool2d": {"MAX_POOL_2D"},
    "avg_pool2d": {"AVERAGE_POOL_2D"}, "adaptive_avg_pool2d": {"AVERAGE_POOL_2D", "MEAN"}, "mean": {"MEAN"},
    "add": {"ADD"}, "mul": {"MUL"}, "cat": {"CONCATENATION"}, "hardswish": {"HARD_SWISH"},
    "flatten": {"RESHAPE"}, "view": {"RESHAPE"}, "reshape": {"RESHAPE"},
    "relu": {"RELU"}, "hardtanh": {"RELU6", "RELU_N1_TO_1"}, "sigmoid": {"LOGISTIC"},
}
TAP_VERSION = 1


def _layout(how: tuple[list[int], list[int]] | None, axes: list[int] | None) -> str:
    """How the tensor is read in PyTorch's order, in words."""
    if how is None:
        return "read flat"
    if how[1] == sorted(how[1]):
        return "as PyTorch" if axes is not None else "as PyTorch, in another shape"
    return f"transposed {tuple(axes)}" if axes is not None else f"reshaped to {tuple(how[0])}, transposed {tuple(how[1])}"


# ---- ExecuTorch ---------------------------------------------------------------------------------
@dataclass
class LayerProgram:
    """A debug .pte whose extra outputs are the layers' int8 values, and how to read them."""

    path: Path
    outputs: dict[str, int]  # layer name -> program output index
    info: dict = field(default_factory=dict)
    _method: object = field(default=None, repr=False)

    def run(self, images: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per layer, the int8 outputs of every image (batch 1 at a time), and the final outputs."""
        if self._method is None:
            from executorch.runtime import Runtime

            self._method = Runtime.get().load_program(str(self.path)).load_method("forward")
        rows = [self._method.execute([images[i:i + 1].contiguous()]) for i in range(len(images))]
        layers = {name: np.concatenate([r[i].numpy() for r in rows]) for name, i in self.outputs.items()}
        return layers, np.concatenate([r[0].numpy() for r in rows])


def layer_program(folded: torch.fx.GraphModule, layers: list[Layer], input_shape, path: Path, key: str) -> LayerProgram:
    """Lower (or reuse, when `key` matches) the debug copy of the folded graph with every layer tapped."""
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists():
        meta = json.loads(sidecar.read_text())
        if meta.get("key") == key and meta.get("version") == TAP_VERSION and set(meta["outputs"]) == {l.name for l in layers}:
            return LayerProgram(path, meta["outputs"], {**meta["info"], "reused": True})
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.devtools.intermediate_output_tap import FULL_TENSOR, strip_taps_, tap_intermediate_outputs_
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(folded, (torch.zeros(1, *input_shape),))
    ours = [n for n in folded.graph.nodes if is_quantize(n) and isinstance(n.args[0], torch.fx.Node)]
    theirs = [n for n in program.graph.nodes if is_quantize(n) and isinstance(n.args[0], torch.fx.Node)]
    if [(n.args[1], n.args[2]) for n in ours] != [(n.args[1], n.args[2]) for n in theirs]:
        raise RuntimeError("re-exporting the converted graph changed its quantize nodes; cannot tap the layers")
    by_node = {n.name: layer.name for layer in layers for n in ours if n.name == layer.node}
    wanted = {t.name: by_node[o.name] for o, t in zip(ours, theirs) if o.name in by_node}
    program, specs = tap_intermediate_outputs_(program, (lambda n: n.name in wanted, FULL_TENSOR))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    table = get_delegation_info(edge.exported_program().graph_module).get_operator_delegation_dataframe()
    outside = {r.op_type: int(r.occurrences_in_non_delegated_graphs) for r in table.itertuples()
               if r.op_type != "Total" and r.occurrences_in_non_delegated_graphs
               and r.op_type not in ("getitem", "executorch_devtools_tap_tensor")}
    strip_taps_(edge)
    atomic.write_bytes(path, edge.to_executorch().buffer)
    outputs = {wanted[s.node_name]: s.output_index for s in specs}
    info = {"method": "executorch.devtools.intermediate_output_tap (debug copy lowered with XnnpackPartitioner)",
            "ops_outside_delegate": outside, "taps": len(specs)}
    atomic.write_json(sidecar, {"key": key, "version": TAP_VERSION, "outputs": outputs, "info": info})
    return LayerProgram(path, outputs, {**info, "reused": False})


def xnnpack_float_kernels(pte: Path, image: torch.Tensor) -> list[str]:
    """XNNPACK kernels of the shipped .pte that compute in float (from its ETDump profile), e.g. 'Hardswish (NC, F32)'."""
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(pte), enable_etdump=True, debug_buffer_size=1 << 20)
    program.load_method("forward").execute([image[:1].contiguous()])
    with atomic.scratch_dir(pte) as tmp:  # under OUT: a killed run's leftovers are cleaned by the next one
        dump, buffer = os.path.join(tmp, "run.etdp"), os.path.join(tmp, "debug.bin")
        program.write_etdump_result_to_file(dump, buffer)
        names = {e.name for block in Inspector(etdump_path=dump, debug_buffer_path=buffer).event_blocks
                 for e in block.events if e.is_delegated_op}
    return sorted(n for n in names if re.search(r"\bF(32|16)\b", n) and not n.startswith("Convert"))


def kernel_op(kernel: str) -> str:
    """'Hardswish (NC, F32)' -> 'hardswish'; 'Global Average Pooling (NWC, F32)' -> 'global_average_pooling'."""
    return kernel.split(" (")[0].strip().lower().replace(" ", "_")


# ---- LiteRT -------------------------------------------------------------------------------------
@dataclass
class TensorMatch:
    index: int
    name: str
    layout: str
    scale: float
    zero_point: int
    producer: str
    method: str  # how the tensor was tied to the layer
    float_op: str | None = None  # the op this runtime computes in float to produce it
    # how to read the tensor in PyTorch's dim order: values.reshape(reading[0]).transpose(reading[1]); None: as it is
    reading: list[list[int]] | None = None


def _pieces(name: str) -> set[str]:
    return {p for p in name.split(";") if p}


def _named_after(layer: Layer, first: str, pieces: set[str], owners: dict[str, str]) -> bool:
    """Does a tensor's name say it is `layer`'s output? Named first after the op whose result is quantized (the
    fused activation, when it names only this layer or the main op is named too), or first after the layer's own
    op with its activation among the fused ops (litert-torch writes FULLY_CONNECTED + RELU this way round)."""
    if first == layer.out_hierarchy:
        return layer.out_hierarchy in owners or ("/" in layer.hierarchy and layer.hierarchy in pieces)
    return (first == layer.hierarchy != layer.out_hierarchy and "/" in layer.hierarchy
            and layer.out_hierarchy in pieces)


def match_tflite(interpreter, layers: list[Layer], sizes: dict[str, int], input_layout: str = "NCHW",
                 frames: dict[str, dim_order.Frame] | None = None,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[dict[str, TensorMatch], dict[str, str]]:
    """Tie each layer to the .tflite tensor that holds it.

    litert-torch names a tensor after the ops that made it, ';'-separated: usually first the op whose
    output it is, then ops fused into it. A layer takes the tensor so named (`_named_after`) when scale,
    zero point and size agree; the model's input and output tensors by position; otherwise the only
    tensor with its scale, zero point, size and op kind, never one named after another layer (an activation
    fused into its producer has no tensor of its own, and must not take the next block's); a choice among several
    is marked a guess.
    A layer whose lone reader is an activation the converter fused into it has no tensor.
    Each match says how to read its tensor in PyTorch's dim order (converters/dim_order.py): from the tensor's
    frame and the layer's PyTorch frame (`frames`, converters/layers.py layer_frames) and shape (`shapes`, batch
    1); without them, as it is.
    Returns the matches, and for each layer without a tensor, why.
    """
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    producer, frame = {}, {}  # each tensor's frame (converters/dim_order.py), walked as layers.py walks PyTorch's
    in_index = interpreter.get_input_details()[0]["index"]
    out_index = interpreter.get_output_details()[0]["index"]
    in_shape = list(details[in_index]["shape"])
    frame[in_index] = (dim_order.named(input_layout, in_shape) if len(in_shape) == 4 and input_layout in ("NCHW", "NHWC")
                       else dim_order.fresh(in_shape))
    for pos, op in enumerate(ops):
        ins = [i for i in op["inputs"] if i >= 0]
        first = frame.get(ins[0]) if ins else None
        for t in op["outputs"]:
            producer[t] = (pos, op["op_name"], ins)
            shape = [int(d) for d in details[t]["shape"]]
            if op["op_name"] in NHWC_OPS and len(shape) == 4:
                frame[t] = dim_order.named(dim_order.NHWC, shape)
            elif op["op_name"] == "TRANSPOSE" and first is not None and len(first) == len(shape) and len(ins) > 1:
                frame[t] = dim_order.permute(first, interpreter.get_tensor(ins[1]))
            elif op["op_name"] in LAYOUT_OPS and first is not None:
                frame[t] = dim_order.reshape(first, shape) or dim_order.fresh(shape)
            elif op["op_name"] in NEW_AXES_OPS:
                frame[t] = dim_order.fresh(shape)
            else:  # elementwise, pad, slice, concatenation
                frame[t] = dim_order.follow([frame[i] for i in ins if i in frame], shape)

    def qparams(t):
        q = details[t]["quantization"]
        return float(q[0]), int(q[1])

    def float_source(t) -> str | None:
        """If t is quantized from a float tensor, the op that computed that float tensor."""
        pos_op = producer.get(t)
        if not pos_op or pos_op[1] != "QUANTIZE":
            return None
        src = pos_op[2][0]
        if np.dtype(details[src]["dtype"]).kind != "f":
            return None
        return producer.get(src, (None, "input"))[1]

    candidates = [t for t in producer if np.dtype(details[t]["dtype"]) == np.int8] + [in_index]
    shared = {l.out_hierarchy for l in layers if sum(m.out_hierarchy == l.out_hierarchy for m in layers) > 1}
    owners = {l.out_hierarchy: l.name for l in layers if "/" in l.out_hierarchy and l.out_hierarchy not in shared}

    def first_piece(t) -> str:  # the op whose output the tensor is; later pieces name ops fused into it
        return details[t]["name"].split(";")[0]

    claimed: dict[int, set[str]] = {}  # tensor -> the layers its name says it holds
    for t in candidates:
        first, pieces = first_piece(t), _pieces(details[t]["name"])
        claimed[t] = {l.name for l in layers if _named_after(l, first, pieces, owners)}

    copy_of: dict[int, int] = {}  # tensor -> a tensor it only moves or reshapes (its data, in another layout)

    def original(t):
        while t in copy_of:
            t = copy_of[t]
        return t

    for t, (_, name, ins) in producer.items():
        if name in LAYOUT_OPS and ins:
            copy_of[t] = ins[0]

    def reads_inputs(pool: list[int], layer: Layer) -> list[int]:
        """Of several tensors named after a layer, those that hold the data of, or are computed from, the tensors
        of the layer's own inputs (k and v of one attention head are both slices of one conv with its name and
        scale; each is read by its own op); all of them where none or no input is known."""
        inputs = {original(matches[i].index) for i in layer.inputs if i in matches}
        near = [t for t in pool if original(t) in inputs
                or any(original(i) in inputs for i in producer.get(t, (0, "", []))[2])]
        return near or pool

    used, matches, missing = set(), {}, {}
    for layer in layers:
        fits = [t for t in candidates if t not in used and int(np.prod(details[t]["shape"])) == sizes[layer.name]
                and qparams(t)[1] == layer.zero_point and np.isclose(qparams(t)[0], layer.scale, rtol=1e-6, atol=0)
                and owners.get(first_piece(t), layer.name) == layer.name]
        fits.sort(key=lambda t: producer.get(t, (-1,))[0])
        kinds = set().union(*(OP_KINDS.get(op.rstrip("_"), set()) for op in layer.op.split("+")))
        named = [t for t in fits if _named_after(layer, first_piece(t), _pieces(details[t]["name"]), owners)]
        near = reads_inputs(named, layer)
        if layer.name == INPUT and in_index in fits:
            chosen, method = in_index, "model input"
        elif layer.is_output and out_index in fits:
            chosen, method = out_index, "model output"
        elif len(named) == 1:
            chosen, method = named[0], "tensor name"
        elif len({original(t) for t in near}) == 1:  # one tensor (in one or more layouts) reads the layer's inputs
            chosen, method = near[0], f"tensor name, the one of {len(named)} that reads the layer's inputs"
        elif named:
            computing = [t for t in near if producer[t][1] in kinds] or near
            chosen, method = computing[0], f"tensor name, first of {len(near)} (guess)"
        elif layer.activation:
            missing[layer.name] = f"the converter fused `{layer.activation}` into its op: no tensor of its own"
            continue
        elif fits := [t for t in fits if claimed[t] <= {layer.name}]:  # not a tensor named after another layer
            computing = [t for t in fits if producer.get(t, (0, ""))[1] in kinds]
            if len(computing) == 1:
                chosen, method = computing[0], "scale, zero point, size and op kind: the only fit (no name)"
            elif len(fits) == 1:
                chosen, method = fits[0], "scale, zero point and size: the only fit (no name)"
            else:
                pool = computing or [t for t in fits if producer.get(t, (0, ""))[1] not in LAYOUT_OPS] or fits
                pool = reads_inputs(pool, layer)
                chosen, method = pool[0], f"first in graph order of {len(pool)} that fit (guess)"
        else:
            missing[layer.name] = "no tensor left with its scale, zero point and size (folded into a neighbour)"
            continue
        used.add(chosen)
        scale, zero = qparams(chosen)
        how = _reading(frame.get(chosen), [int(d) for d in details[chosen]["shape"]], layer.name, frames, shapes)
        axes = None if how is None else dim_order.transpose(frame[chosen], frames[layer.name])
        matches[layer.name] = TensorMatch(chosen, details[chosen]["name"], _layout(how, axes),
                                          scale, zero, producer.get(chosen, (0, "input"))[1], method,
                                          float_source(chosen), None if how is None else [list(how[0]), list(how[1])])
    return matches, missing


def _reading(frame, shape: list[int], layer: str, frames, shapes) -> tuple[list[int], list[int]] | None:
    """How to read a layer's tensor (its frame and shape) in PyTorch's order; None: as it is."""
    if frame is None or not frames or not shapes or layer not in frames:
        return None
    return dim_order.reading(frame, shape, frames[layer], shapes[layer])


class TFLiteLayers:
    """Runs a .tflite one image at a time and reads every matched layer's tensor."""

    def __init__(self, path: Path, layers: list[Layer], sizes: dict[str, int], input_layout: str,
                 frames: dict[str, dim_order.Frame], shapes: dict[str, tuple[int, ...]]):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=1, experimental_preserve_all_tensors=True)
        self.interpreter.allocate_tensors()
        self.plain = Interpreter(model_path=str(path), num_threads=1)  # the shipped way to run it
        self.plain.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.nhwc = input_layout == "NHWC"
        self.matches, self.missing = match_tflite(self.interpreter, layers, sizes, input_layout, frames, shapes)

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        scale, zero = self.input["quantization"]
        x = x[None].transpose(0, 2, 3, 1) if self.nhwc else x[None]
        if np.dtype(self.input["dtype"]) != np.int8:  # a float first layer (--keep-float): the file takes float input
            return x.astype(self.input["dtype"])
        return np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)

    def run(self, images: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Per layer, int8 values in PyTorch's dim order (read flat where no transpose gives its shape); the final
        int8 outputs; and those of the plain interpreter."""
        rows, finals, plain = {name: [] for name in self.matches}, [], []
        for x in images.numpy().astype(np.float32):
            q = self.quantize_input(x)
            for interp in (self.interpreter, self.plain):
                interp.set_tensor(self.input["index"], q)
                interp.invoke()
            for name, m in self.matches.items():
                rows[name].append(dim_order.read(self.interpreter.get_tensor(m.index), m.reading))
            finals.append(self.interpreter.get_tensor(self.output["index"]))
            plain.append(self.plain.get_tensor(self.plain.get_output_details()[0]["index"]))
        return ({name: np.concatenate(v) for name, v in rows.items()}, np.concatenate(finals), np.concatenate(plain))
