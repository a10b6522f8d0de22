"""ExecuTorch: lower the quantized graph to XNNPACK kernels and write a .pte (and an fp32 baseline)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.export import Dim

from core import io as atomic
from core.graph_layout import flat_softmax, fold_constant_lookups
from core.rewrites import graph_rewrites
from core.schemes import Scheme, Support

from .base import (Artifact, ConversionError, Converter, ExportSource, float_input_spec, float_layers,
                   float_output_spec, mixed, ops_text)

# Nodes that only plumb the delegate's inputs and outputs; anything else outside XNNPACK is a fallback.
PLUMBING = {"getitem", "executorch_call_delegate"}
COMPUTE = ("aten_convolution_default", "aten_linear_default", "aten_addmm_default", "aten_mm_default")
DYNAMIC_MIN_EXAMPLE = 16  # XNNPACK's conv shape guard needs an example batch >= 16 (see the README)


class ExecuTorchConverter(Converter):
    name = "executorch"
    display_name = "ExecuTorch (XNNPACK)"
    format = "pte"
    packages = ("executorch",)
    settings = ("allow_fallback", "dynamic_batch")
    runtime_modules = ("executorch.runtime", "executorch.extension.pybindings.portable_lib")
    thread_control = ("executorch.extension.pybindings.portable_lib._unsafe_reset_threadpool(n) before loading "
                      "(experimental pybinding; resizes the one process-wide threadpool that XNNPACK uses); "
                      "_threadpool_get_thread_count() reads it back")
    takes_threads = True

    def support(self, scheme: Scheme) -> Support:
        bits, gran, acts = scheme.weight_bits, scheme.granularity, scheme.activations
        if scheme.symmetry != "symmetric":
            return Support(self.name, False, reason="XNNPACK's int8 kernels take symmetric weights only (zero point 0)")
        if bits == 8 and acts == "static" and gran != "per_block":
            return Support(self.name, True, "PT2E graph (XNNPACKQuantizer), lowered to XNNPACK int8 kernels")
        if bits == 8 and acts == "dynamic" and gran != "per_block":
            return Support(self.name, True, "PT2E graph with dynamic int8 activations (XNNPACKQuantizer is_dynamic): "
                                            "linear layers, and convolutions not followed by ReLU, run dynamically "
                                            "quantized; the rest stays fp32 inside XNNPACK")
        if bits == 4 and acts == "dynamic" and gran in ("per_block", "per_channel"):
            return Support(self.name, True, "torchao Int8DynamicActivationIntxWeightConfig (int4 weights, dynamic "
                                            "int8 activations) for linear layers, lowered to XNNPACK; convolutions "
                                            "stay fp32")
        if acts == "none":
            return Support(self.name, False, reason="no weight-only path: XNNPACK runs int8/int4 weights with "
                                                    "int8 activations (static or dynamic); use --activations dynamic")
        if bits == 4:
            return Support(self.name, False, reason="XNNPACK takes 4-bit weights only with dynamic int8 activations "
                                                    "(linear layers); use --activations dynamic")
        return Support(self.name, False, reason="XNNPACK has no per-block 8-bit weights; use per_channel or per_tensor")

    def batch_support(self, artifact: dict, batch: int) -> str | None:
        why = super().batch_support(artifact, batch)
        return why + f"; re-export with --dynamic-batch {batch}" if why and not artifact["input"].get("dynamic_batch") else why

    def set_threads(self, n: int) -> dict:
        from executorch.extension.pybindings import portable_lib

        # Experimental pybinding; ExecuTorch says to call it before loading a program.
        portable_lib._unsafe_reset_threadpool(n)
        return {"executorch_threadpool": portable_lib._threadpool_get_thread_count()}

    def threads_note(self, reported: list[dict]) -> str | None:
        seen = sorted({f"asked {t['threads']}, threadpool reports {t['executorch_threadpool']}"
                       for t in reported if "executorch_threadpool" in t})
        return f"ExecuTorch threadpool read back: {'; '.join(seen)}." if seen else None

    def outside_ops(self, artifact: dict) -> dict[str, int]:
        return artifact.get("checks", {}).get("non_delegated_ops") or {}

    def kept_float_note(self, artifact: dict, layers: tuple[str, ...]) -> str:
        checks = artifact.get("checks") or {}  # the .pte counts its ops, not which layer each came from
        compute, int8 = checks.get("compute_ops", 0), checks.get("int8_compute_ops", 0)
        return f"{compute - int8} of {compute} conv/linear ops run as fp32 XNNPACK ops (the rest int8)"

    def placement(self, artifact: dict) -> tuple[str, str]:
        c = artifact.get("checks", {})
        outside = c.get("non_delegated_ops") or {}
        return (f"XNNPACK: {c.get('delegated_ops', 0)} ops in {len(c.get('delegates', []))} delegate backend(s); "
                f"int8 conv/linear {c.get('int8_compute_ops', 0)}/{c.get('compute_ops', 0)}",
                ops_text(outside) if outside else "none")

    def export_baseline(self, source: ExportSource, out: Path, options) -> list[Artifact]:
        return [self._export(source.fp32_model.eval(), f"{source.model_name}_xnnpack_fp32.pte", "fp32", "fp32",
                             None, source, out, options)]

    def export_scheme(self, source: ExportSource, out: Path, options) -> list[Artifact]:
        scheme = source.scheme
        how = self.require_support(scheme)
        quant = mixed(scheme.tag, float_layers(options, scheme))
        artifact = self._export(source.program, f"{source.model_name}_xnnpack_{quant}.pte", quant,
                                "quantized", scheme, source, out, options)
        artifact.checks["how"] = how
        return [artifact]

    def _export(self, module, file: str, quant: str, reference: str, scheme, source: ExportSource, out: Path,
                options) -> Artifact:
        start = time.perf_counter()
        program, table = lower(module, source.input_shape, options.dynamic_batch)
        checks = delegation_checks(program, table, quant)
        print(f"[executorch] {file}: delegation\n{format_table(table)}")
        if checks["non_delegated_ops"] and not options.allow_fallback:
            raise ConversionError(fallback_message(file, checks))
        if scheme is not None:
            quantized_check(file, scheme, checks, float_layers(options, scheme))
        buffer = program.to_executorch().buffer
        atomic.write_bytes(out / file, buffer)
        if scheme is not None:
            checks["stored_weights"] = summarize_stored(weight_quantization(out / file))
            stored_check(file, scheme, checks["stored_weights"])
        batch = options.dynamic_batch or 1
        return Artifact(
            file=file, backend=self.name, quant=quant, format="pte", reference=reference,
            input={**float_input_spec(source, batch), "dynamic_batch": bool(options.dynamic_batch)},
            output=float_output_spec(source, batch), checks=checks, export_seconds=time.perf_counter() - start,
            scheme=scheme.describe() if scheme else None)

    def runner(self, path: Path, artifact: dict, source: ExportSource, threads: int = 1):
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(str(path)).load_method("forward")
        dynamic = artifact["input"].get("dynamic_batch", False)

        def run(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if dynamic:
                return method.execute([x])[0].numpy()
            return np.concatenate([method.execute([x[i:i + 1]])[0].numpy() for i in range(len(x))])

        return run, "executorch.runtime"


def lower(module: torch.nn.Module, shape: tuple[int, int, int], dynamic_batch: int = 0):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    if dynamic_batch:
        example = torch.zeros(max(DYNAMIC_MIN_EXAMPLE, min(dynamic_batch, 32)), *shape)
        dims = ({0: Dim("batch", min=1, max=dynamic_batch)},)
    else:
        example, dims = torch.zeros(1, *shape), None
    graph = torch.export.export(module, (example,), dynamic_shapes=dims).module()
    graph_rewrites(graph)  # the same exact rewrites the quantized graph got (mean keepdim, split -> slices)
    fold_constant_lookups(graph)  # weights are frozen here: a table read by constant indices is stored once
    if flat_softmax(graph):  # XNNPACK computed a 4-d softmax over the last dim over another dim: 2-d instead
        graph.recompile()
    exported = torch.export.export(graph, (example,), dynamic_shapes=dims)
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(program.exported_program().graph_module)
    table = info.get_operator_delegation_dataframe()
    rows = [{"op": r.op_type, "delegated": int(r.occurrences_in_delegated_graphs),
             "not_delegated": int(r.occurrences_in_non_delegated_graphs)}
            for r in table.itertuples() if r.op_type != "Total"]
    return program, rows


def delegation_checks(program, table: list[dict], quant: str) -> dict:
    """What XNNPACK took, and how many conv/linear ops inside it read quantized weights and activations."""
    graph_module = program.exported_program().graph_module
    delegates = [m for _, m in graph_module.named_children() if hasattr(m, "backend_id")]
    fallbacks = {r["op"]: r["not_delegated"] for r in table if r["not_delegated"] and r["op"] not in PLUMBING}
    compute = weights = activations = 0
    for delegate in delegates:
        for node in delegate.original_module.graph.nodes:
            if node.op != "call_function" or not any(c in _name(node) for c in COMPUTE):
                continue
            compute += 1
            producers = [_name(a) if isinstance(a, torch.fx.Node) else "" for a in node.args[:2]]
            weights += "dequantize" in producers[1]
            activations += "dequantize" in producers[0]
    return {
        "delegates": sorted({d.backend_id for d in delegates}),
        "delegated_ops": sum(r["delegated"] for r in table),
        "non_delegated_ops": fallbacks,
        "compute_ops": compute,
        "quantized_weight_ops": weights,
        "quantized_activation_ops": activations,
        "int8_compute_ops": min(weights, activations) if quant != "fp32" else 0,
        "fully_delegated": not fallbacks and bool(delegates),
        "outside_layers": outside_layers(graph_module),
        "quantization": quant,
        "delegation": [r for r in table if r["op"] not in PLUMBING],
    }


def outside_layers(graph_module: torch.fx.GraphModule) -> dict[str, list[str]]:
    """Per op left outside the delegates: the layers (module path and class) it comes from, in graph order."""
    found: dict[str, list[str]] = {}
    for node in graph_module.graph.nodes:
        op = getattr(node.target, "__name__", str(node.target)).replace(".", "_")
        if node.op != "call_function" or op in PLUMBING:
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path, kind = stack[-1] if stack else ("", "")
        kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
        layer = f"`{path}` ({kind.rpartition('.')[2]})" if path else "the model's own forward()"
        layers = found.setdefault(op, [])
        if layer not in layers:
            layers.append(layer)
    return found


def fallback_message(file: str, checks: dict, shown: int = 2) -> str:
    """Why the program is refused: each op XNNPACK (ExecuTorch) did not take, with the layers it comes from."""
    parts = []
    for op, count in checks["non_delegated_ops"].items():
        layers = checks.get("outside_layers", {}).get(op, [])
        more = f" and {len(layers) - shown} more" if len(layers) > shown else ""
        parts.append(f"{op} ×{count}" + (f" in {', '.join(layers[:shown])}{more}" if layers else ""))
    return (f"{file}: ExecuTorch's XNNPACK delegate does not take {'; '.join(parts)}: these would run on slow "
            "portable kernels; rewrite or replace those layers, or pass --allow-fallback to accept them")


def summarize_stored(rows: list[dict]) -> dict:
    """Stored weights of a .pte by (datatype, quantization), e.g. {"xnn_datatype_qcint8 PerChannelQuant": 4}."""
    counts: dict[str, int] = {}
    for r in rows:
        if r["datatype"].endswith("int32"):
            continue  # biases follow their weights
        key = f"{r['datatype']} {r['quantization']}"
        if r["quantization"] == "PerChannelGroupQuant" and r.get("dims") and r["scales"] == r["dims"][0]:
            key += " (one block per row)"  # a block as long as the row: per-channel, stored as XNNPACK's blockwise
        counts[key] = counts.get(key, 0) + 1
    return counts


def stored_check(file: str, scheme, stored: dict) -> None:
    """What the file stores must be the scheme's granularity and width (read back from the .pte itself)."""
    expected = {"per_channel": "PerChannelQuant", "per_tensor": "PerTensorQuant",
                "per_block": "PerChannelGroupQuant"}[scheme.granularity]
    accepted = (expected,)
    if scheme.weight_bits == 4:  # torchao lowers per-channel int4 as blocks that span each whole row
        expected = "PerChannelGroupQuant" if scheme.granularity == "per_block" else "PerChannelQuant"
        accepted = (expected,) if scheme.granularity == "per_block" else (expected, "PerChannelGroupQuant (one block per row)")
    wrong = {k: n for k, n in stored.items() if not k.endswith(accepted)}
    if not stored or wrong:
        raise ConversionError(f"{file}: the file stores weights as {stored or 'nothing quantized'}, "
                              f"not {expected} for {scheme.summary()}")


def quantized_check(file: str, scheme, checks: dict, kept_float: tuple[str, ...] = ()) -> None:
    """The lowered program must compute the way the scheme says, or the export fails with the count.

    With `kept_float` (mixed precision) some conv/linear ops run as fp32 XNNPACK ops, but not all of them.
    """
    compute, weights, acts = checks["compute_ops"], checks["quantized_weight_ops"], checks["quantized_activation_ops"]
    if kept_float:
        checks["float_layers"] = list(kept_float)
        if not 0 < min(weights, acts) < compute:
            raise ConversionError(f"{file}: {min(weights, acts)} of {compute} conv/linear ops inside XNNPACK take "
                                  f"quantized weights and activations; with {list(kept_float)} kept float, some "
                                  "but not all of them should")
        return
    if scheme.activations == "static" and min(weights, acts) < compute:
        raise ConversionError(f"{file}: only {min(weights, acts)} of {compute} conv/linear ops inside XNNPACK take "
                              "quantized weights and activations")
    if weights == 0:
        raise ConversionError(f"{file}: no conv/linear op inside XNNPACK takes quantized weights; "
                              f"{scheme.summary()} did not reach the delegate")


def _name(node: torch.fx.Node) -> str:
    return str(node.target).replace(".", "_")


def format_table(rows: list[dict]) -> str:
    width = max(len(r["op"]) for r in rows)
    lines = [f"  {'op':<{width}}  delegated  not delegated"]
    for r in rows:
        mark = "x" if r["not_delegated"] and r["op"] not in PLUMBING else "✓"
        lines.append(f"  {r['op']:<{width}}  {r['delegated']:>9}  {r['not_delegated']:>13}  [{mark}]")
    return "\n".join(lines)


def weight_quantization(path: Path) -> list[dict]:
    """How the .pte itself stores each constant quantized tensor of its XNNPACK delegates (read from the file).

    The program is deserialized with ExecuTorch's own reader; each XNNPACK payload's flatbuffer is
    decoded with ExecuTorch's bundled flatc and XNNPACK's schema. Returns, per constant quantized
    tensor: its datatype, shape and quantization (PerTensorQuant, PerChannelQuant, ...) with the
    number of scales.
    """
    import json
    import re
    from importlib import resources

    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _flatc_decompile
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(Path(path).read_bytes()).program
    schema = resources.files("executorch.backends.xnnpack.serialization") / "schema.fbs"
    rows = []
    with atomic.scratch_dir(path) as tmp:  # under OUT: a killed run's leftovers are cleaned by the next one
        tmp = str(tmp)
        (Path(tmp) / "schema.fbs").write_bytes(schema.read_bytes())
        for i, blob in enumerate(program.backend_delegate_data):
            data = blob.data
            header = XNNHeader.from_bytes(data[:XNNHeader.EXPECTED_LENGTH])
            graph = data[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size]
            (Path(tmp) / f"d{i}.bin").write_bytes(graph)
            _flatc_decompile(tmp, str(Path(tmp) / "schema.fbs"), str(Path(tmp) / f"d{i}.bin"))
            text = (Path(tmp) / f"d{i}.json").read_text()  # flatc writes bare inf/nan, which JSON spells Infinity/NaN
            decoded = json.loads(re.sub(r"(?<=[:\[,\s])(-?)inf\b", r"\1Infinity", text).replace(": nan", ": NaN"))
            for value in decoded.get("xvalues", []):
                if value.get("xvalue_union_type") != "XNNQuantizedTensorValue":
                    continue
                q = value["xvalue_union"]
                tensor = q["tensor_value"]
                if not tensor.get("constant_buffer_idx"):
                    continue  # an activation, not a stored weight
                params = q.get("quant_params", {})
                scale = params.get("scale")
                scales = params.get("num_scales") or (len(scale) if isinstance(scale, list) else 1 if scale is not None else 0)
                rows.append({"delegate": i, "datatype": tensor["datatype"], "dims": tensor.get("dims"),
                             "quantization": q.get("quant_params_type"), "scales": scales,
                             "zero_point": params.get("zero_point")})
    return rows
