"""The activation scales of a W8A8 Core ML program, in the int8 graph's own units.

coremltools' MIL pass `distributive_quantized_binary_op_scale_normalization` rewrites every quantized
`add`/`sub` (optionally followed by `relu`) whose inputs are both dequantized: it divides the whole
sum by one input's scale s_y,

    dequantize(x, s_x), dequantize(y, s_y) -> add -> quantize(s_z)
    dequantize(x, s_x / s_y), dequantize(y, 1.0) -> add -> quantize(s_z / s_y)

so that the backend can skip one multiply. The int8 values are the same (round(z / s_z) is
round((z / s_y) / (s_z / s_y))), but the graph's s_z is no longer written in the file. When the sum
is read back only by another such add (a chain `a + b + c`: RepViT's `conv(x) + conv1(x) + x`,
MobileOne's branch sums), its dequantize is rescaled too, and s_z appears nowhere in the file.

This module undoes that, exactly as the pass did it, by following each value's unit through the
program: a float value in the file is its true value divided by its unit u (1 for unrescaled values).

- `quantize(v, s)` of a value of unit u stores int8 with true scale s·u;
- `dequantize(q, d)` of int8 with true scale t gives a value of unit t / d;
- `add`/`sub` need both inputs in one unit (else the file computes another sum), and keep it;
  `relu` keeps its input's unit (it commutes with a positive factor);
- int8 data movement (reshape, transpose, ...) keeps the true scale;
- any other op must read values of unit 1: a rescaled value anywhere else is reported.

A recovered scale within fp16's precision of one of the graph's scales is taken as that scale before
it is carried on, so each scale is checked against the file's numbers next to it, and fp16 rounding
does not accumulate along a residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOLERANCE = 2e-3  # fp16 keeps ~3 significant digits; a recovered scale is a ratio of two fp16 values
DISTRIBUTIVE = ("add", "sub")
KEEPS_UNIT = ("relu",)


@dataclass
class FileScales:
    scales: list[float] = field(default_factory=list)  # one per quantize op, in program order, in true units
    rescaled_adds: int = 0  # adds whose inputs coremltools rescaled (the pass above)
    inconsistent: list[str] = field(default_factory=list)  # ops whose rescaled inputs disagree, or read unnormalized


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(abs(a), abs(b))


def _snap(value: float, known: list[float]) -> float:
    near = min(known, key=lambda k: abs(k - value), default=None)
    return near if near is not None and _close(near, value) else value


def _const(value) -> np.ndarray:
    """The value of a MIL `const` op's immediate tensor."""
    from coremltools.proto import MIL_pb2

    tensor = value.immediateValue.tensor
    kind = MIL_pb2.DataType.Name(value.type.tensorType.dataType)
    if tensor.HasField("bytes"):
        return np.frombuffer(tensor.bytes.values, {"FLOAT16": np.float16, "INT8": np.int8, "UINT8": np.uint8}[kind])
    for name in ("floats", "ints", "doubles"):
        if tensor.HasField(name):
            return np.asarray(getattr(tensor, name).values)
    raise ValueError(f"unreadable const of type {kind}")


def _names(op, key: str) -> list[str]:
    return [a.name for a in op.inputs[key].arguments] if key in op.inputs else []


def file_scales(path: Path, graph_scales: list[float] = ()) -> FileScales:
    """Each int8 activation's scale in the program at `path`, undoing coremltools' rescaling of quantized adds."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    main = spec.mlProgram.functions["main"]
    ops = list(main.block_specializations[main.opset].operations)
    consts = {op.outputs[0].name: op.attributes["val"] for op in ops if op.type == "const"}
    known = sorted(float(s) for s in graph_scales)
    result = FileScales()
    unit: dict[str, float] = {}  # float values not of unit 1
    true: dict[str, float] = {}  # int8 activations: their true scale

    def scale_of(op) -> float:
        return float(_const(consts[_names(op, "scale")[0]]).astype(np.float64).reshape(-1)[0])

    for op in ops:
        if op.type == "const":
            continue
        inputs = [n for key in op.inputs for n in _names(op, key)]
        outputs = [o.name for o in op.outputs]
        if op.type == "quantize":
            recovered = _snap(scale_of(op) * unit.get(_names(op, "input")[0], 1.0), known)
            true[outputs[0]] = recovered
            result.scales.append(recovered)
        elif op.type == "dequantize" and _names(op, "input")[0] in true:
            u = true[_names(op, "input")[0]] / scale_of(op)
            if not _close(u, 1.0):
                unit[outputs[0]] = u
        elif any(n in true for n in inputs):  # int8 in: data movement on the int8 values
            scales = {true[n] for n in inputs if n in true}
            if len(scales) > 1 and not all(_close(a, b) for a in scales for b in scales):
                result.inconsistent.append(f"{op.type} `{outputs[0]}` moves int8 values of different scales")
            for name in outputs:
                true[name] = next(iter(scales))
        else:
            units = [unit.get(n, 1.0) for n in inputs]
            if all(_close(u, 1.0) for u in units):
                continue
            if op.type in DISTRIBUTIVE + KEEPS_UNIT and len(inputs) <= 2 and all(_close(units[0], u) for u in units):
                unit[outputs[0]] = units[0]
                result.rescaled_adds += op.type in DISTRIBUTIVE
            else:
                result.inconsistent.append(f"{op.type} `{outputs[0]}` reads values rescaled by "
                                           f"{', '.join(f'{u:.4g}' for u in units)}")
    return result
