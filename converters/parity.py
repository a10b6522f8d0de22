"""Layer-by-layer parity: the converted PT2E graph (QAT or PTQ) in PyTorch, its .pte and its .tflite.

`run` captures every quantized layer's output (converters/layers.py, converters/parity_capture.py)
for a fixed set of test images and compares three pairs, layer by layer: the largest and mean
absolute difference in the layer's output quantization steps, the share of exactly equal
values, and the SQNR of the second against the first. `check` turns the .pte/.tflite pair into
a pass or a failure that names the first layer over the allowed difference. `coreml_weights`
holds a Core ML file's weights to the float weights it was made from (its kernels run only on macOS).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import REGISTRY
from .layers import Layer, capture_local, capture_pytorch, layer_frames, quantized_layers
from .parity_capture import TFLiteLayers, kernel_op, layer_program, xnnpack_float_kernels

PAIRS = {"pytorch_vs_pte": ("pytorch", "pte"), "pytorch_vs_tflite": ("pytorch", "tflite"), "pte_vs_tflite": ("pte", "tflite")}
# The compared runtimes by their files' suffix, each named as its backend names itself.
RUNTIME_NAMES = {"pytorch": "PyTorch (converted PT2E graph)",
                 **{c.format: f"{c.display_name} .{c.format}" for c in REGISTRY.values() if c.format in ("pte", "tflite")}}
# XNNPACK kernel names (ETDump) -> the PyTorch ops they compute
KERNEL_OPS = {"hardswish": {"hardswish"}, "sigmoid": {"sigmoid"}, "multiply": {"mul"}, "add": {"add"},
              "global_average_pooling": {"mean", "adaptive_avg_pool2d"}, "average_pooling": {"avg_pool2d"},
              "swish": {"silu"}, "softmax": {"softmax"}, "tanh": {"tanh"}, "clamp": {"hardtanh", "clamp"},
              "batch_matrix_multiply": {"bmm", "matmul"}}


class ParityError(RuntimeError):
    """Parity cannot run on this output folder (no int8 artifacts, or a graph it cannot read)."""


def sqnr_db(signal: float, noise: float) -> float | str:
    """10·log10(signal/noise); the strings 'inf' (identical) and '-inf' (no signal) keep the JSON strict."""
    if noise == 0:
        return "inf"
    return 10 * math.log10(signal / noise) if signal else "-inf"


@dataclass
class Stats:
    """Running totals of one pair on one layer."""

    values: int = 0
    equal: int = 0
    sum_steps: float = 0.0
    max_steps: float = 0.0
    signal: float = 0.0  # sum of the first runtime's values squared
    noise: float = 0.0  # sum of squared differences

    def update(self, a: np.ndarray, qa: tuple[float, int], b: np.ndarray, qb: tuple[float, int], step: float) -> None:
        fa = (a.astype(np.float64) - qa[1]) * qa[0]
        fb = (b.astype(np.float64) - qb[1]) * qb[0]
        if qa[1] == qb[1] and math.isclose(qa[0], qb[0], rel_tol=1e-6):  # one grid: compare the integers
            steps = np.abs(a.astype(np.int64) - b.astype(np.int64)).astype(np.float64)
            equal = int((a == b).sum())
        else:
            steps = np.abs(fa - fb) / step
            equal = int((fa == fb).sum())
        self.values += a.size
        self.equal += equal
        self.sum_steps += float(steps.sum())
        self.max_steps = max(self.max_steps, float(steps.max(initial=0.0)))
        self.signal += float((fa ** 2).sum())
        self.noise += float(((fa - fb) ** 2).sum())

    def summary(self) -> dict:
        sqnr = sqnr_db(self.signal, self.noise)
        return {"max_steps": self.max_steps, "mean_steps": self.sum_steps / max(self.values, 1),
                "equal_share": self.equal / max(self.values, 1), "sqnr_db": sqnr, "values": self.values}


def first_divergence(rows: list[dict]) -> dict | None:
    """The first layer (graph order) whose values are not all equal, with its size and the output's."""
    for i, row in enumerate(rows):
        if row["equal_share"] < 1.0:
            return {"layer": row["layer"], "index": i, "op": row["op"], "max_steps": row["max_steps"],
                    "equal_share": row["equal_share"], "output_max_steps": rows[-1]["max_steps"],
                    "output_equal_share": rows[-1]["equal_share"]}
    return None


def verdict(pair: str, rows: list[dict], images: int) -> str:
    a, b = (RUNTIME_NAMES[r] for r in PAIRS[pair])
    div = first_divergence(rows)
    if not rows:
        return f"{a} vs {b}: no layer could be compared"
    if div is None:
        return f"{a} vs {b}: identical on all {len(rows)} layers, {images} images"
    return (f"{a} vs {b}: diverging from layer `{div['layer']}` ({div['op']}): up to {div['max_steps']:g} steps, "
            f"{_differ(div['equal_share'])} of its values differ; at the output up to {div['output_max_steps']:g} "
            f"steps, {_differ(div['output_equal_share'])} differ")


def pct(share: float) -> str:
    """A share in percent that never shows 100% for values that are not all equal."""
    if share == 1:
        return "100%"
    return f"{100 * share:.4f}%" if share > 0.9999 else f"{100 * share:.2f}%"


def _differ(equal_share: float) -> str:
    share = 1 - equal_share
    return "none" if share == 0 else f"{100 * share:.2g}%"


def run(folded: torch.fx.GraphModule, images: torch.Tensor, input_shape, pte: Path | None = None,
        tflite: Path | None = None, tflite_layout: str = "NCHW", work_dir: Path | None = None, key: str = "",
        chunk: int = 64) -> dict:
    """Capture every layer in each available runtime and compare the pairs; a JSON-ready dict."""
    layers = quantized_layers(folded)
    with torch.no_grad():
        probe = capture_pytorch(folded, layers, images[:2])
    sizes = {name: int(np.prod(v.shape[1:])) for name, v in probe.items()}
    shapes = {name: tuple(v.shape[1:]) for name, v in probe.items()}
    notes, runtimes = {}, {"pytorch": {"method": "torch.fx Interpreter over the converted (folded) PT2E graph"}}
    program = tfl = None
    if pte is not None:
        program = layer_program(folded, layers, input_shape, Path(work_dir) / f"{Path(pte).stem}_layers.pte", key)
        runtimes["pte"] = {"file": Path(pte).name, **program.info,
                           "float_kernels": xnnpack_float_kernels(Path(pte), images[:1])}
    if tflite is not None:
        frames = layer_frames(folded, layers, images[:1])  # each layer's dim order, to read its .tflite tensor in
        tfl = TFLiteLayers(Path(tflite), layers, sizes, tflite_layout, frames, {k: (1, *v) for k, v in shapes.items()})
        runtimes["tflite"] = {"file": Path(tflite).name,
                              "method": "ai_edge_litert Interpreter, experimental_preserve_all_tensors=True"}
    stats = {pair: {l.name: Stats() for l in layers} for pair in PAIRS}
    local = {rt: {l.name: Stats() for l in layers} for rt in ("pte", "tflite")}
    same_as_shipped = {"pte": 0, "tflite": 0}
    shipped = _shipped_pte(pte) if pte is not None else None
    for start in range(0, len(images), chunk):
        batch = images[start:start + chunk]
        values = {"pytorch": {k: v.numpy() for k, v in capture_pytorch(folded, layers, batch).items()}}
        qparams = {"pytorch": {l.name: (l.scale, l.zero_point) for l in layers}}
        if program is not None:
            values["pte"], finals = program.run(batch)
            qparams["pte"] = qparams["pytorch"]
            same_as_shipped["pte"] += int(sum(np.array_equal(finals[i], shipped(batch[i:i + 1])) for i in range(len(batch))))
        if tfl is not None:
            values["tflite"], finals, plain = tfl.run(batch)
            qparams["tflite"] = {n: (m.scale, m.zero_point) for n, m in tfl.matches.items()}
            same_as_shipped["tflite"] += int(sum(np.array_equal(finals[i], plain[i]) for i in range(len(batch))))
        for rt in ("pte", "tflite"):
            if rt not in values:
                continue
            given = {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in values[rt].items()}
            ours = capture_local(folded, layers, batch, given)
            for layer in layers:
                if layer.name in values[rt]:
                    theirs = values[rt][layer.name].reshape(len(batch), *shapes[layer.name])
                    local[rt][layer.name].update(ours[layer.name].numpy().reshape(theirs.shape),
                                                 (layer.scale, layer.zero_point), theirs, qparams[rt][layer.name],
                                                 layer.scale)
        for pair, (a, b) in PAIRS.items():
            if a not in values or b not in values:
                continue
            for layer in layers:
                if layer.name in values[a] and layer.name in values[b]:
                    va = values[a][layer.name].reshape(len(batch), *shapes[layer.name])
                    vb = values[b][layer.name].reshape(len(batch), *shapes[layer.name])
                    stats[pair][layer.name].update(va, qparams[a][layer.name], vb, qparams[b][layer.name], layer.scale)
    for name in ("pte", "tflite"):
        if name in runtimes:
            runtimes[name]["final_output_equals_shipped"] = f"{same_as_shipped[name]}/{len(images)}"
    layer_rows = _layer_rows(layers, shapes, tfl, runtimes.get("pte", {}).get("float_kernels", []))
    pairs = {}
    for pair, (a, b) in PAIRS.items():
        if a in runtimes and b in runtimes:
            rows = [{"layer": l.name, "op": l.op, **stats[pair][l.name].summary()} for l in layers
                    if stats[pair][l.name].values]
            pairs[pair] = {"rows": rows, "first_divergence": first_divergence(rows), "verdict": verdict(pair, rows, len(images))}
    teacher_forced = {}
    for rt in runtimes.keys() & local.keys():
        rows = [{"layer": l.name, "op": l.op, **local[rt][l.name].summary()} for l in layers if local[rt][l.name].values]
        worst = max(rows, key=lambda r: (r["max_steps"], -r["equal_share"]), default=None)
        teacher_forced[rt] = {"rows": rows, "worst": worst}
    if tfl is not None and tfl.missing:
        notes["tflite_unmatched"] = tfl.missing
    return {"images": len(images), "layers": layer_rows, "runtimes": runtimes, "pairs": pairs, "local": teacher_forced,
            "notes": notes}


def _shipped_pte(path: Path):
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return lambda x: method.execute([x.contiguous()])[0].numpy()[0]


def _layer_rows(layers: list[Layer], shapes, tfl, float_kernels: list[str]) -> list[dict]:
    float_ops = {op: k for k in float_kernels for op in KERNEL_OPS.get(kernel_op(k), {kernel_op(k)})}
    rows = []
    for layer in layers:
        match = tfl.matches.get(layer.name) if tfl is not None else None
        floats = {}
        pte_kernels = [float_ops[op] for op in layer.op.split("+") if op in float_ops]
        if pte_kernels:
            floats["pte"] = ", ".join(pte_kernels)
        if match is not None and match.float_op:
            floats["tflite"] = match.float_op
        rows.append({**layer.to_dict(), "shape": list(shapes[layer.name]), "float_in": floats,
                     "tflite": None if match is None else asdict(match),
                     "tflite_missing": tfl.missing.get(layer.name) if tfl is not None else None})
    return rows


def check(result: dict, max_steps: float, max_steps_float: float, pair: str = "pte_vs_tflite") -> tuple[bool, list[str], list[dict]]:
    """Hold two runtimes of one scheme to each other, layer by layer.

    Each layer may differ by at most `max_steps` output steps, or `max_steps_float` where a
    runtime computes the layer's op in float (listed in the layer's `float_in`). A layer that
    differs within that float allowance changes everything after it, so the layers downstream
    are reported but not held to exactness; the final output is still held by `verify`'s
    agreement thresholds. Returns (passed, failures, per-layer status rows).
    """
    if pair not in result["pairs"]:
        return True, [], []
    float_in = {row["name"]: row["float_in"] for row in result["layers"]}
    failures, status, inherited = [], [], None
    for row in result["pairs"][pair]["rows"]:
        floats = float_in.get(row["layer"], {})
        allowed = max(max_steps, max_steps_float) if floats else max_steps
        if inherited:
            state = f"after {inherited}"
        elif row["max_steps"] <= allowed:
            state = "ok" if row["max_steps"] <= max_steps else f"float op, within {allowed:g}"
            if row["max_steps"] > max_steps:
                inherited = row["layer"]
        else:
            state = "FAILED"
            where = f" (computed in float: {floats})" if floats else ""
            failures.append(f"layer `{row['layer']}` ({row['op']}){where}: the .pte and the .tflite differ by up to "
                            f"{row['max_steps']:g} output steps (allowed {allowed:g}); "
                            f"{pct(row['equal_share'])} of its values equal")
            inherited = row["layer"]
        status.append({"layer": row["layer"], "max_steps": row["max_steps"], "equal_share": row["equal_share"],
                       "allowed": allowed, "state": state})
    return not failures, failures[:1], status


def check_local(result: dict, max_steps: float) -> dict[str, dict]:
    """Per runtime: is every layer, computed by PyTorch from the runtime's own inputs (teacher-forced), within
    `max_steps` output steps of the runtime's value? Then the runtime computes each op of the graph, and any
    larger difference at the output is rounding carried through the network, not a conversion error."""
    verdicts = {}
    for rt, block in (result.get("local") or {}).items():
        over = [r for r in block["rows"] if r["max_steps"] > max_steps]
        worst = block["worst"]
        verdicts[rt] = {
            "passed": bool(block["rows"]) and not over, "max_steps": max_steps, "layers": len(block["rows"]),
            "worst": None if worst is None else {k: worst[k] for k in ("layer", "op", "max_steps", "equal_share")},
            "failures": [f"layer `{r['layer']}` ({r['op']}): {r['max_steps']:g} output steps from PyTorch's value "
                         f"computed on the {RUNTIME_NAMES[rt]}'s own inputs (allowed {max_steps:g}); "
                         f"{pct(r['equal_share'])} equal" for r in over[:3]]}
    return verdicts


def coreml_weights(mlpackage: Path, float_model: torch.nn.Module, shape: tuple[int, ...] | None = None) -> list[dict]:
    """Per weight: the Core ML file's values against `float_model`'s weights (BatchNorm folded the way the
    Core ML converter folds it), in units of that tensor's symmetric int8 step per output channel."""
    from .coreml import fold_batchnorm, load_into, read_weights

    reference = fold_batchnorm(float_model)
    loaded = load_into(fold_batchnorm(float_model), read_weights(mlpackage), mlpackage.name, shape)
    ours, theirs = reference.state_dict(), loaded.state_dict()
    rows = []
    for name, w in ours.items():
        if not w.is_floating_point() or w.dim() < 1 or not name.endswith(("weight", "bias")):
            continue
        w, c = w.double(), theirs[name].double()
        flat = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
        step = (flat.abs().amax(1, keepdim=True) / 127).clamp_min(1e-12)
        diff = ((c.reshape(flat.shape) - flat).abs() / step)
        noise = float(((c - w) ** 2).sum())
        rows.append({"weight": name, "shape": list(w.shape), "max_steps": float(diff.max()),
                     "mean_steps": float(diff.mean()), "equal_share": float((c == w).double().mean()),
                     "sqnr_db": sqnr_db(float((w ** 2).sum()), noise)})
    return rows
