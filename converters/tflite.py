"""TFLite: litert-torch converts the same quantized PT2E graph to a fully int8 .tflite.

Dynamic and weight-only schemes go through ai-edge-quantizer (LiteRT's own quantizer) on the
float .tflite of the scheme's float weights. An fp32 .tflite of the fp32 model is the baseline.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch

from core import io as atomic
from core.schemes import Scheme, Support

from .base import (Artifact, ConversionError, Converter, ExportSource, float_input_spec, float_layers,
                   float_output_spec, mixed, ops_text)

FLOAT_TYPES = {"float32", "float16"}
DYNAMIC_AGREEMENT_FLOOR = 0.90
BLOCK_SIZES = (32, 64, 128, 256)  # ai-edge-quantizer's blockwise granularities


class TFLiteConverter(Converter):
    name = "tflite"
    display_name = "TFLite (LiteRT)"
    format = "tflite"
    packages = ("litert_torch", "ai_edge_litert")
    settings = ("nhwc", "allow_fallback")
    runtime_modules = ("ai_edge_litert.interpreter",)
    thread_control = "ai_edge_litert Interpreter(model_path, num_threads=n) (XNNPACK delegate, on by default)"
    takes_threads = True
    app_name = "litert"  # the apps' name for it (golden outputs, device results)

    def support(self, scheme: Scheme) -> Support:
        bits, gran, acts = scheme.weight_bits, scheme.granularity, scheme.activations
        if scheme.symmetry != "symmetric":
            return Support(self.name, False, reason="LiteRT's kernels take symmetric weights only (zero point 0)")
        if gran == "per_block" and acts == "none":
            return Support(self.name, False, reason="ai-edge-quantizer's weight-only recipes take per-channel or "
                                                    "per-tensor weights; blocks only with dynamic activations")
        if gran == "per_block" and bits == 8:
            return Support(self.name, False, reason="ai-edge-quantizer's policy takes blockwise weights at 4 bits "
                                                    "only (dynamic); use per_channel for 8 bits")
        if gran == "per_block" and scheme.block_size not in BLOCK_SIZES:
            return Support(self.name, False, reason=f"ai-edge-quantizer blocks are {BLOCK_SIZES}, "
                                                    f"not {scheme.block_size}")
        if bits == 8 and acts == "static" and gran != "per_block":
            return Support(self.name, True, "litert-torch converts the same PT2E graph: fully int8")
        if acts == "dynamic":
            return Support(self.name, True, f"ai-edge-quantizer dynamic int{bits} recipe for the linear layers "
                                            "(FULLY_CONNECTED, as XNNPACK's dynamic path), on the float .tflite of "
                                            "the same float weights; activations quantized at run time")
        if acts == "none":
            return Support(self.name, True, f"ai-edge-quantizer weight-only int{bits} recipe on the float .tflite: "
                                            "every conv/linear weight stored as integers, dequantized before float "
                                            "compute")
        return Support(self.name, False, reason="static int8 activations need 8-bit per-channel or per-tensor "
                                                "weights here")

    def set_threads(self, n: int) -> dict:
        return {"tflite_num_threads": n}  # passed to Interpreter(num_threads=n); it has no getter

    def outside_ops(self, artifact: dict) -> dict[str, int] | str:
        if (artifact.get("scheme") or {}).get("activations") in ("dynamic", "none"):
            return "float compute by design (dynamic / weight-only)"
        return (artifact.get("checks", {}).get("float_ops") or {}) if artifact["quant"] != "fp32" else {}

    def float_in_file(self, artifact: dict, layers: tuple[str, ...]) -> dict[str, bool]:
        """Did each layer stay float in the .tflite? Its float conv/linear ops name their module."""
        names = (artifact.get("checks") or {}).get("float_compute_ops", [])
        return {layer: any(re.search(rf"(^|[_/;.]){re.escape(layer)}($|[;/])", n) for n in names) for layer in layers}

    def kept_float_note(self, artifact: dict, layers: tuple[str, ...]) -> str:
        found = self.float_in_file(artifact, layers)
        return "float conv/linear ops: " + ", ".join(f"`{k}` {'float' if v else '**not float**'}" for k, v in found.items())

    def mixed_findings(self, row: dict, full: dict | None, layers: tuple[str, ...]) -> dict:
        return {"tflite_float_layers": self.float_in_file(row, layers)}  # its converter may quantize some anyway

    def placement(self, artifact: dict) -> tuple[str, str]:
        c = artifact.get("checks", {})
        floats = c.get("float_ops") or {}
        where = f"{ops_text(c.get('ops', {}))}; XNNPACK delegate partitions: {c.get('xnnpack_partitions', '–')}"
        return where, (f"float ops: {ops_text(floats)}" if floats else "none") if artifact["quant"] != "fp32" else "fp32 model"

    def export_baseline(self, source: ExportSource, out: Path, options) -> list[Artifact]:
        file = f"{source.model_name}_tflite_fp32.tflite"
        return [self._finish(file, "fp32", "fp32", None, source, out, options,
                             lambda tmp: self._convert(source.fp32_model.eval(), source, options, tmp))]

    def export_scheme(self, source: ExportSource, out: Path, options) -> list[Artifact]:
        scheme = source.scheme
        how = self.require_support(scheme)
        quant = mixed(scheme.tag, float_layers(options, scheme))
        file = f"{source.model_name}_tflite_{quant}.tflite"
        if scheme.activations == "static":  # the same PT2E graph, converted by litert-torch
            def write(tmp: Path) -> None:
                self._convert(source.unfolded, source, options, tmp, _int8_config())
        else:  # dynamic or weight-only: ai-edge-quantizer on the float .tflite of the scheme's float weights
            def write(tmp: Path) -> None:
                float_file = tmp.with_name("float.tflite")
                self._convert(source.float_model.eval(), source, options, float_file)
                ai_edge_quantize(float_file, scheme, tmp)
        artifact = self._finish(file, quant, "quantized", scheme, source, out, options, write)
        artifact.checks["how"] = how
        if scheme.activations == "dynamic":
            # LiteRT's hybrid kernels quantize activations their own way at run time (per row, and to the
            # weights' width for int4), not as the PyTorch reference does: top-1 agreement with it is a
            # looser measure here, and the quantization-cost check against fp32 and PTQ carries the weight.
            artifact.checks["agreement_floor"] = {
                "min_agreement": DYNAMIC_AGREEMENT_FLOOR,
                "why": "LiteRT's dynamic-range kernels quantize activations at run time differently from the "
                       "PyTorch reference (torchao/PT2E dynamic quantization)"}
        return [artifact]

    @staticmethod
    def _convert(module, source: ExportSource, options, path: Path, quant_config=None) -> None:
        import litert_torch

        module.training = False
        if options.nhwc:
            module = litert_torch.to_channel_last_io(module, args=[0])
            example = torch.zeros(1, *source.input_shape).permute(0, 2, 3, 1).contiguous()
        else:
            example = torch.zeros(1, *source.input_shape)
        litert_torch.convert(module, (example,), quant_config=quant_config).export(str(path))

    def _finish(self, file: str, quant: str, reference: str, scheme, source: ExportSource, out: Path, options,
                write) -> Artifact:
        """Write the file, read it back with the interpreter, and refuse what does not match the scheme."""
        start = time.perf_counter()
        kept = float_layers(options, scheme)

        def write_checked(tmp: Path) -> None:  # a file that fails its checks never replaces a good one
            write(tmp)
            problems = mixed_problems(weight_quantization(tmp), kept) if kept else scheme_problems(*inspect(tmp), scheme, options)
            if problems:
                raise ConversionError(f"{file}: {'; '.join(problems)}")

        atomic.atomic_write(out / file, write_checked)
        checks, io_spec = inspect(out / file)
        checks["stored_weights"] = weight_quantization(out / file)
        if kept:
            checks["float_layers"], checks["float_compute_ops"] = list(kept), float_compute(checks["stored_weights"])
        elif scheme is not None and not checks["fully_int8"] and scheme.activations == "static":
            print(f"[tflite] {file}: accepted with float ops (--allow-fallback): {checks['float_ops']}")
        print(f"[tflite] {file}: tensors by type {checks['tensor_types']}, ops {checks['ops']}")
        layout = "NHWC" if options.nhwc else "NCHW"
        input_spec = {**float_input_spec(source, 1, layout), **io_spec["input"]}
        return Artifact(file=file, backend=self.name, quant=quant, format="tflite", reference=reference,
                        input=input_spec, output={**float_output_spec(source), **io_spec["output"]}, checks=checks,
                        export_seconds=time.perf_counter() - start, scheme=scheme.describe() if scheme else None)

    def runner(self, path: Path, artifact: dict, source: ExportSource, threads: int = 1):
        interpreter = _interpreter(path, threads)
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        in_scale, in_zero = inp["quantization"]
        out_scale, out_zero = out["quantization"]
        nhwc = artifact["input"]["layout"] == "NHWC"

        def run(batch: np.ndarray) -> np.ndarray:
            logits = []
            for x in batch.astype(np.float32):
                x = x[None].transpose(0, 2, 3, 1) if nhwc else x[None]
                if inp["dtype"] == np.int8:
                    x = np.clip(np.round(x / in_scale) + in_zero, -128, 127).astype(np.int8)
                interpreter.set_tensor(inp["index"], x)
                interpreter.invoke()
                y = interpreter.get_tensor(out["index"])
                if out["dtype"] == np.int8:
                    y = (y.astype(np.float32) - out_zero) * out_scale
                logits.append(y.astype(np.float32))
            return np.concatenate(logits)

        return run, "ai-edge-litert Interpreter"


WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def weight_quantization(path: Path) -> list[dict]:
    """How the .tflite stores each conv/linear weight, read by the interpreter from the file: dtype and scales."""
    interpreter = _interpreter(path, delegates=False)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    dequantized_from = {o["outputs"][0]: o["inputs"][0] for o in ops if o["op_name"] == "DEQUANTIZE"}
    rows = []
    for op in ops:
        if op["op_name"] not in WEIGHTED_OPS or len(op["inputs"]) < 2:
            continue
        index = op["inputs"][1]
        weight = tensors[dequantized_from.get(index, index)]  # weight-only: the stored tensor feeds a DEQUANTIZE
        params = weight.get("quantization_parameters", {})
        scales = params.get("scales")
        rows.append({"op": op["op_name"], "tensor": weight["name"], "dequantized": index in dequantized_from, "dtype": np.dtype(weight["dtype"]).name,
                     "shape": [int(d) for d in weight["shape"]], "scales": 0 if scales is None else len(scales),
                     "zero_points": sorted({int(z) for z in params.get("zero_points", [])})})
    return rows


def scheme_problems(checks: dict, io_spec: dict, scheme, options) -> list[str]:
    """Does the .tflite hold what the scheme says? Static: fully int8 (unless --allow-fallback).
    Dynamic and weight-only: integer weights, float input and output."""
    if scheme is None:
        return []
    if scheme.activations == "static":
        if checks["fully_int8"] or options.allow_fallback:
            return []
        return [f"not fully int8: float ops {checks['float_ops']}, {len(checks['float_tensors'])} float tensors "
                f"(e.g. {checks['float_tensors'][:4]}), input {io_spec['input']['dtype']}, output "
                f"{io_spec['output']['dtype']}; pass --allow-fallback to accept float ops in the .tflite"]
    if not checks["tensor_types"].get("int8"):
        return [f"no integer weights: tensors by type {checks['tensor_types']}"]
    return []


def float_compute(stored: list[dict]) -> list[str]:
    """The conv/linear ops that compute in float: their weight tensors' names (which carry the module path)."""
    return [r["tensor"] for r in stored if r["dtype"] in FLOAT_TYPES and not r["dequantized"]]


def mixed_problems(stored: list[dict], kept: tuple[str, ...]) -> list[str]:
    """A mixed-precision file (layers kept float) must hold float conv/linear ops, but not only float ones."""
    floats = float_compute(stored)
    if not floats:
        return [f"no conv/linear op is float, though {list(kept)} were kept float"]
    if len(floats) == len(stored):
        return [f"every conv/linear op is float; nothing was quantized (asked to keep {list(kept)} float)"]
    return []


def ai_edge_quantize(float_file: Path, scheme, target: Path) -> None:
    """Quantize a float .tflite with ai-edge-quantizer: dynamic-range or weight-only, at the scheme's bits and grain."""
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    granularity = {"per_channel": qtyping.QuantGranularity.CHANNELWISE,
                   "per_tensor": qtyping.QuantGranularity.TENSORWISE}.get(scheme.granularity)
    if granularity is None:
        granularity = qtyping.QuantGranularity(f"BLOCKWISE_{scheme.block_size}")
    manager = recipe_manager.RecipeManager()
    if scheme.activations == "dynamic":  # linear layers, as XNNPACK's dynamic path quantizes them
        manager.add_dynamic_config(regex=".*", operation_name=qtyping.TFLOperationName.FULLY_CONNECTED,
                                   num_bits=scheme.weight_bits, granularity=granularity)
    else:  # every conv/linear weight, as the PyTorch reference and Core ML's weight-only quantization
        manager.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                       num_bits=scheme.weight_bits, granularity=granularity)
    result = quantizer.Quantizer(str(float_file), manager.get_quantization_recipe()).quantize()
    target.write_bytes(result.quantized_model)


def _int8_config():
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    # Only switches the converter to static int8: the QAT graph already carries every scale.
    return QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))


def _interpreter(path: Path, threads: int = 1, delegates: bool = True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


def inspect(path: Path) -> tuple[dict, dict]:
    """Tensor types, ops (float ones flagged) and I/O quantization of a .tflite, read by the interpreter itself.

    The op list comes from an interpreter without delegates (the model's own ops); the default
    interpreter then tells how many partitions LiteRT's XNNPACK delegate took over.
    """
    interpreter = _interpreter(path, delegates=False)
    partitions = sum(op["op_name"] == "DELEGATE" for op in _interpreter(path)._get_ops_details())
    types: dict[str, int] = {}
    floats = []
    for t in interpreter.get_tensor_details():
        dtype = np.dtype(t["dtype"]).name
        types[dtype] = types.get(dtype, 0) + 1
        if dtype in FLOAT_TYPES:
            floats.append(t["name"])
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    ops: dict[str, int] = {}
    float_ops: dict[str, int] = {}
    for op in interpreter._get_ops_details():
        ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
        tensors = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        # A DEQUANTIZE at the edge of an int8 graph is a conversion, not float compute.
        if op["op_name"] not in ("DEQUANTIZE", "QUANTIZE") and any(dtypes.get(i) in FLOAT_TYPES for i in tensors):
            float_ops[op["op_name"]] = float_ops.get(op["op_name"], 0) + 1

    def io(detail: dict) -> dict:
        scale, zero = detail["quantization"]
        quantized = np.dtype(detail["dtype"]) == np.int8
        return {"dtype": np.dtype(detail["dtype"]).name, "scale": float(scale) if quantized else None,
                "zero_point": int(zero) if quantized else None}

    io_spec = {"input": io(interpreter.get_input_details()[0]), "output": io(interpreter.get_output_details()[0])}
    checks = {"tensor_types": types, "float_tensors": floats, "ops": ops, "float_ops": float_ops,
              "xnnpack_partitions": partitions,
              "fully_int8": not floats and io_spec["input"]["dtype"] == "int8" and io_spec["output"]["dtype"] == "int8"}
    return checks, io_spec
