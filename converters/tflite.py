"""TFLite: litert-torch converts the same QAT graph to a fully int8 .tflite."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from core import io as atomic

from .base import Artifact, ConversionError, Converter, ExportSource, float_input_spec, float_output_spec

FLOAT_TYPES = {"float32", "float16"}


class TFLiteConverter(Converter):
    name = "tflite"
    packages = ("litert_torch", "ai_edge_litert")
    settings = ("nhwc", "allow_fallback")

    def export(self, source: ExportSource, out: Path, options) -> list[Artifact]:
        import litert_torch

        layout = "NHWC" if options.nhwc else "NCHW"
        artifacts = []
        for quant, module, reference in (("int8", source.qat_unfolded, "qat"), ("fp32", source.fp32_model.eval(), "fp32")):
            start = time.perf_counter()
            file = f"{source.model_name}_tflite_{quant}.tflite"
            module.training = False
            if options.nhwc:
                module = litert_torch.to_channel_last_io(module, args=[0])
                example = torch.zeros(1, *source.input_shape).permute(0, 2, 3, 1).contiguous()
            else:
                example = torch.zeros(1, *source.input_shape)
            quant_config = _int8_config() if quant == "int8" else None
            edge = litert_torch.convert(module, (example,), quant_config=quant_config)
            atomic.atomic_write(out / file, lambda tmp: edge.export(str(tmp)))
            checks, io_spec = inspect(out / file)
            if quant == "int8" and not checks["fully_int8"]:
                detail = (f"float ops {checks['float_ops']}, {len(checks['float_tensors'])} float tensors "
                          f"(e.g. {checks['float_tensors'][:4]}), input {io_spec['input']['dtype']}, "
                          f"output {io_spec['output']['dtype']}")
                if not options.allow_fallback:
                    (out / file).unlink()
                    raise ConversionError(f"{file}: not fully int8: {detail}; pass --allow-fallback to accept "
                                          "float ops in the .tflite")
                print(f"[tflite] {file}: accepted with float ops (--allow-fallback): {detail}")
            print(f"[tflite] {file}: tensors by type {checks['tensor_types']}, ops {checks['ops']}")
            input_spec = {**float_input_spec(source, 1, layout), **io_spec["input"]}
            artifacts.append(Artifact(file=file, backend=self.name, quant=quant, format="tflite",
                                      reference=reference, input=input_spec,
                                      output={**float_output_spec(source), **io_spec["output"]},
                                      checks=checks, export_seconds=time.perf_counter() - start))
        return artifacts

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
