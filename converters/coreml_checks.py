"""Checks of a saved Core ML file against what it was made from: its op histogram, its palettes (LUT widths and
groups), and a W8A8 program's int8 weights and activation scales against the PT2E int8 graph's.

Core ML cannot run on Linux, so these read the file's MIL program (`get_spec()`) instead of running it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .base import ConversionError
from .coreml_graph import layer_of
from .coreml_scales import file_scales
from .coreml_weights import read_weights

W8A8_MISMATCH = ("coremltools requantized those layers its own way, so the file would not compute like the int8 "
                 ".pte; it was not kept. The fp16 and palettized Core ML files do not depend on it")


def op_histogram(path: Path) -> dict:
    """Core ML's op placement as far as the file tells it: ops by type, compute precision, compressed weights.

    Which compute unit (CPU, GPU, Neural Engine) runs an op is decided by Core ML at load time on the
    device; the file fixes only the ops, their precision, and how each weight is stored.
    """
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    main = spec.mlProgram.functions["main"]
    ops: dict[str, int] = {}
    precision: dict[str, int] = {}
    for op in main.block_specializations[main.opset].operations:
        ops[op.type] = ops.get(op.type, 0) + 1
        if op.type.startswith("const"):
            continue
        for out in op.outputs[:1]:
            dtype = MIL_pb2.DataType.Name(out.type.tensorType.dataType) if out.type.HasField("tensorType") else "other"
            precision[dtype] = precision.get(dtype, 0) + 1
    return {"ops": ops, "compute_outputs_by_dtype": precision,
            "lut_weights": ops.get("constexpr_lut_to_dense", 0),
            "linear_quantized_weights": ops.get("constexpr_blockwise_shift_scale", 0) + ops.get("constexpr_affine_dequantize", 0),
            "activation_quantize_ops": ops.get("quantize", 0) + ops.get("dequantize", 0)}


def lut_checks(path: Path, nbits: int | dict[str, int]) -> dict:
    """Read the saved program: which weights are LUT-palettized, with which index width, and which stayed dense.

    `nbits`: one width for every LUT, or the width of each weight const (--nbits auto:PP); then each of those
    consts not palettized is listed in `not_palettized`. `lut_groups`: per LUT weight, how many LUTs it has along
    its output channels (per_grouped_channel: one per group of --group-size channels) and how many channels."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    main = spec.mlProgram.functions["main"]
    palettized, wrong, dense, groups = {}, {}, [], {}
    for op in main.block_specializations[main.opset].operations:
        name = op.outputs[0].name if op.outputs else ""
        if op.type == "constexpr_lut_to_dense":
            indices = op.inputs["indices"].arguments[0].value.type.tensorType
            lut = op.inputs["lut"].arguments[0].value.type.tensorType
            index_type = MIL_pb2.DataType.Name(indices.dataType)
            entries = [d.constant.size for d in lut.dimensions][-2]
            palettized[name] = {"indices": index_type, "lut_entries": entries}
            groups[name] = {"luts": int(np.prod([d.constant.size for d in lut.dimensions][:-2])),
                            "channels": indices.dimensions[0].constant.size}
            bits = nbits.get(name.removesuffix("_palettized")) if isinstance(nbits, dict) else nbits
            if index_type != f"UINT{bits}" or entries != 2 ** (bits or 0):
                wrong[name] = {**palettized[name], "expected_bits": bits}
        elif op.type == "const" and name.endswith("weight_to_fp16"):
            dense.append(name)
    missing = [c for c in nbits if f"{c}_palettized" not in palettized] if isinstance(nbits, dict) else []
    return {"palettized": palettized, "wrong_nbits": wrong, "dense": dense, "not_palettized": missing,
            "lut_groups": groups}


def wrong_groups(checks: dict, options) -> dict:
    """The LUT weights whose number of LUTs is not what --granularity (and --group-size) asks for."""
    grouped = options.granularity == "per_grouped_channel"
    return {name: g for name, g in checks["lut_groups"].items()
            if g["luts"] != (g["channels"] // options.group_size if grouped else 1)}


def activation_scales(path: Path, graph_scales: list[float] = ()) -> list[float]:
    """The scale of each int8 activation of a Core ML program (one per `quantize` op, in program order), in the
    int8 graph's units: coremltools rescales the inputs and output of each quantized add (see
    converters/coreml_scales.py), and that is undone here; `graph_scales` lets fp16 rounding not accumulate."""
    return file_scales(path, graph_scales).scales


def _is_weight(value: np.ndarray) -> bool:
    """A conv/linear weight, not a quantized scalar constant (which Core ML folds into its ops)."""
    return value.ndim >= 2


def graph_weights_and_scales(program: nn.Module, layers: dict | None = None) -> tuple[list[np.ndarray], list[float]]:
    """A PT2E graph's dequantized conv/linear weights (graph order) and its activation quantize scales.

    Quantized scalar constants (the 3 and 1/6 of a rewritten hardswish) are not weights: Core ML folds
    them into its own ops, so they are not counted on either side. `layers`, if given, receives the
    module path of each weight's layer ("weights", a list) and of each scale's ("scales", scale -> path)."""
    weights, scales = [], []
    for node in program.graph.nodes:
        target = str(node.target)
        if node.op != "call_function" or "quantized_decomposed" not in target:
            continue
        first = node.args[0]
        if "dequantize" in target and isinstance(first, torch.fx.Node) and first.op == "get_attr":
            args = [_fetch(program, a.target) if isinstance(a, torch.fx.Node) else a for a in node.args]
            value = node.target(*args).detach().numpy()
            if _is_weight(value):
                weights.append(value)
                if layers is not None:
                    layers.setdefault("weights", []).append(
                        next((layer_of(u) for u in node.users if layer_of(u)), None) or node.name)
        elif "quantize_per_tensor" in target and "dequantize" not in target:
            scales.append(float(node.args[1]))
            if layers is not None:
                source = first if isinstance(first, torch.fx.Node) else node
                layers.setdefault("scales", {})[float(node.args[1])] = layer_of(source) or source.name
    return weights, scales


def _fetch(module: nn.Module, target: str):
    for atom in target.split("."):
        module = getattr(module, atom)
    return module


def w8a8_checks(path: Path, program: nn.Module) -> dict:
    """Does the W8A8 .mlpackage hold the int8 graph's weights and activation scales? Raise if not, naming the
    layers whose numbers the file does not hold."""
    layers: dict = {}
    ours, our_scales = graph_weights_and_scales(program, layers)
    theirs = [w for name, w in sorted(read_weights(path).items(), key=lambda kv: _weight_order(kv[0]))
              if name.startswith("dequantize_per_") and _is_weight(w)]
    theirs = _paired(ours, theirs, path.name)
    diffs = [float(np.abs(a - b.astype(np.float32)).max() / max(np.abs(a).max(), 1e-12)) for a, b in zip(ours, theirs)]
    weight_diff = max(diffs, default=0.0)
    graph_scales = sorted(set(our_scales))
    read = file_scales(path, graph_scales)
    if read.inconsistent:
        print(f"{path.name}: rescaled values read inconsistently: {read.inconsistent}")
        raise ConversionError(f"{path.name}: coremltools rescaled activations in a way that is not one factor per "
                              f"sum: {read.inconsistent[0]}" + (f" and {len(read.inconsistent) - 1} more (in the log)"
                                                                if len(read.inconsistent) > 1 else "")
                              + f". {W8A8_MISMATCH}")
    found_scales = sorted(read.scales)
    missing = [s for s in graph_scales if not any(abs(s - f) <= 2e-3 * s for f in found_scales)]
    if weight_diff > 2e-3 or missing:  # fp16 keeps ~3 significant digits
        worst = diffs.index(weight_diff) if diffs else None
        found = [] if weight_diff <= 2e-3 else [
            f"the weights of `{layers['weights'][worst]}` differ by {weight_diff:.2e} relative (allowed 2e-3)"]
        if missing:
            named = [f"{s:.4g} (`{layers['scales'].get(s, '?')}`)" for s in missing]
            print(f"{path.name}: activation scales not found in the file: {named}")
            shown = ", ".join(named[:3]) + (f" and {len(named) - 3} more (all in the log)" if len(named) > 3 else "")
            found.append(f"activation scales not found: {shown}")
        raise ConversionError(f"{path.name}: the file does not hold the int8 graph's numbers: {'; '.join(found)} "
                              f"(max relative weight difference {weight_diff:.2e}). {W8A8_MISMATCH}")
    return {"quantized_weights": len(theirs), "max_relative_weight_diff": weight_diff,
            "activation_scales": len(found_scales), "graph_activation_scales": len(graph_scales),
            "rescaled_adds": read.rescaled_adds}


def _paired(ours: list[np.ndarray], theirs: list[np.ndarray], file: str) -> list[np.ndarray]:
    """The file's weight for each of the graph's, in the graph's order: the same shape and the closest values.
    coremltools numbers its dequantize ops in its own order, which is not always the graph's (timm fastvit_t8:
    from one block on); a weight the file lacks, or a shape it holds more or fewer of, is a changed structure."""
    from scipy.optimize import linear_sum_assignment

    from .coreml_weights import relative_diffs

    mine, other = {}, {}
    for i, w in enumerate(ours):
        mine.setdefault(tuple(w.shape), []).append(i)
    for j, w in enumerate(theirs):
        other.setdefault(tuple(w.shape), []).append(j)
    if {k: len(v) for k, v in mine.items()} != {k: len(v) for k, v in other.items()}:
        differ = sorted({k for k in {*mine, *other} if len(mine.get(k, [])) != len(other.get(k, []))})
        shown = ", ".join(f"{k}: {len(mine.get(k, []))} in the graph, {len(other.get(k, []))} in the file"
                          for k in differ[:3])
        raise ConversionError(f"{file}: {len(theirs)} quantized weights in the file, {len(ours)} in the int8 graph "
                              f"({shown}{' and more' if len(differ) > 3 else ''}): coremltools changed the graph's "
                              f"structure. {W8A8_MISMATCH}")
    paired: list = [None] * len(ours)
    for shape, rows in mine.items():
        cols = other[shape]
        a = np.stack([ours[i].astype(np.float64).reshape(-1) for i in rows])
        b = np.stack([theirs[j].astype(np.float64).reshape(-1) for j in cols])
        order = np.abs(np.arange(len(rows))[:, None] - np.arange(len(cols))[None, :]) / max(len(rows), 1)
        r, c = linear_sum_assignment(relative_diffs(a, b) + 1e-6 * order)  # the order only breaks near-ties
        for i, j in zip(r.tolist(), c.tolist()):
            paired[rows[i]] = theirs[cols[j]]
    return paired


def _weight_order(name: str) -> int:
    digits = "".join(ch if ch.isdigit() else " " for ch in name.split("_cast")[0]).split()
    return int(digits[-1]) if digits and name.split("_cast")[0][-1].isdigit() else 0
