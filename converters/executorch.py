"""ExecuTorch: lower the QAT graph to XNNPACK int8 kernels and write a .pte."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.export import Dim

from core import io as atomic
from core.rewrites import graph_rewrites

from .base import Artifact, ConversionError, Converter, ExportSource, float_input_spec, float_output_spec

# Nodes that only plumb the delegate's inputs and outputs; anything else outside XNNPACK is a fallback.
PLUMBING = {"getitem", "executorch_call_delegate"}
COMPUTE = ("aten_convolution_default", "aten_linear_default", "aten_addmm_default", "aten_mm_default")
DYNAMIC_MIN_EXAMPLE = 16  # XNNPACK's conv shape guard needs an example batch >= 16 (see the README)


class ExecuTorchConverter(Converter):
    name = "executorch"
    packages = ("executorch",)
    settings = ("allow_fallback", "dynamic_batch")

    def export(self, source: ExportSource, out: Path, options) -> list[Artifact]:
        artifacts = []
        for quant, module, reference in (("int8", source.qat_folded, "qat"), ("fp32", source.fp32_model.eval(), "fp32")):
            start = time.perf_counter()
            file = f"{source.model_name}_xnnpack_{quant}.pte"
            batch = options.dynamic_batch or 1
            program, table = lower(module, source.input_shape, options.dynamic_batch)
            checks = delegation_checks(program, table, quant)
            print(f"[executorch] {file}: delegation\n{format_table(table)}")
            if checks["non_delegated_ops"] and not options.allow_fallback:
                raise ConversionError(
                    f"{file}: ops left outside XNNPACK would run on slow portable kernels: "
                    f"{checks['non_delegated_ops']}; pass --allow-fallback to accept them")
            if quant == "int8" and checks["int8_compute_ops"] < checks["compute_ops"]:
                raise ConversionError(f"{file}: only {checks['int8_compute_ops']} of {checks['compute_ops']} "
                                      "conv/linear ops take int8 weights and activations")
            buffer = program.to_executorch().buffer
            atomic.write_bytes(out / file, buffer)
            spec_batch = batch if options.dynamic_batch else 1
            artifacts.append(Artifact(
                file=file, backend=self.name, quant=quant, format="pte", reference=reference,
                input={**float_input_spec(source, spec_batch), "dynamic_batch": bool(options.dynamic_batch)},
                output=float_output_spec(source, spec_batch), checks=checks,
                export_seconds=time.perf_counter() - start))
        return artifacts

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
    exported = torch.export.export(graph, (example,), dynamic_shapes=dims)
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(program.exported_program().graph_module)
    table = info.get_operator_delegation_dataframe()
    rows = [{"op": r.op_type, "delegated": int(r.occurrences_in_delegated_graphs),
             "not_delegated": int(r.occurrences_in_non_delegated_graphs)}
            for r in table.itertuples() if r.op_type != "Total"]
    return program, rows


def delegation_checks(program, table: list[dict], quant: str) -> dict:
    graph_module = program.exported_program().graph_module
    delegates = [m for _, m in graph_module.named_children() if hasattr(m, "backend_id")]
    fallbacks = {r["op"]: r["not_delegated"] for r in table if r["not_delegated"] and r["op"] not in PLUMBING}
    compute = int8 = 0
    for delegate in delegates:
        for node in delegate.original_module.graph.nodes:
            if node.op != "call_function" or not any(c in _name(node) for c in COMPUTE):
                continue
            compute += 1
            producers = [_name(a) if isinstance(a, torch.fx.Node) else "" for a in node.args[:2]]
            if "dequantize_per_tensor" in producers[0] and "dequantize_per_channel" in producers[1]:
                int8 += 1
    return {
        "delegates": sorted({d.backend_id for d in delegates}),
        "delegated_ops": sum(r["delegated"] for r in table),
        "non_delegated_ops": fallbacks,
        "compute_ops": compute,
        "int8_compute_ops": int8,
        "fully_delegated": not fallbacks and bool(delegates),
        "quantization": quant,
        "delegation": [r for r in table if r["op"] not in PLUMBING],
    }


def _name(node: torch.fx.Node) -> str:
    return str(node.target).replace(".", "_")


def format_table(rows: list[dict]) -> str:
    width = max(len(r["op"]) for r in rows)
    lines = [f"  {'op':<{width}}  delegated  not delegated"]
    for r in rows:
        mark = "x" if r["not_delegated"] and r["op"] not in PLUMBING else "✓"
        lines.append(f"  {r['op']:<{width}}  {r['delegated']:>9}  {r['not_delegated']:>13}  [{mark}]")
    return "\n".join(lines)
