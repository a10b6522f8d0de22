"""Core ML: an fp16 mlprogram for iOS 18, then k-means palettized weights (LUTs)."""

from __future__ import annotations

import copy
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from core import io as atomic

from .base import Artifact, ConversionError, Converter, ExportSource, float_output_spec

NBITS = (1, 2, 3, 4, 6, 8)
GRANULARITIES = ("per_tensor", "per_grouped_channel")


class CoreMLConverter(Converter):
    name = "coreml"
    packages = ("coremltools",)
    settings = ("nbits", "granularity", "group_size", "weight_threshold")

    def export(self, source: ExportSource, out: Path, options) -> list[Artifact]:
        import coremltools as ct
        from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

        problems = self.validate(options)
        if problems:
            raise ConversionError("; ".join(problems))
        start = time.perf_counter()
        net = fold_batchnorm(source.qat_float_model)
        fp16 = ct.convert(
            torch.export.export(ImageClassifier(net, source.mean, source.std), (torch.zeros(1, *source.input_shape),))
            .run_decompositions({}),
            inputs=[ct.ImageType(name="image", shape=(1, *source.input_shape), scale=1 / 255.0,
                                 color_layout=ct.colorlayout.GRAYSCALE if source.input_shape[0] == 1 else ct.colorlayout.RGB)],
            classifier_config=ct.ClassifierConfig(source.labels),
            convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT16)
        describe(fp16, source, "fp16")
        fp16_file = f"{source.model_name}_coreml_fp16.mlpackage"
        atomic.atomic_write(out / fp16_file, lambda tmp: fp16.save(str(tmp)))
        fp16_seconds = time.perf_counter() - start

        start = time.perf_counter()
        config = OpPalettizerConfig(mode="kmeans", nbits=options.nbits, granularity=options.granularity,
                                    group_size=options.group_size if options.granularity == "per_grouped_channel" else 0,
                                    weight_threshold=options.weight_threshold)
        palettized = palettize_weights(fp16, OptimizationConfig(global_config=config))
        quant = f"pal{options.nbits}"
        describe(palettized, source, quant)
        pal_file = f"{source.model_name}_coreml_{quant}.mlpackage"
        atomic.atomic_write(out / pal_file, lambda tmp: palettized.save(str(tmp)))
        checks = {**lut_checks(out / pal_file, options.nbits), "placement": op_histogram(out / pal_file)}
        checks["bytes_fp16"], checks["bytes_palettized"] = atomic.size_bytes(out / fp16_file), atomic.size_bytes(out / pal_file)
        if not checks["palettized"]:
            raise ConversionError(f"{pal_file}: no constexpr_lut_to_dense op holds a weight; every weight is below "
                                  f"--weight-threshold {options.weight_threshold}")
        if checks["wrong_nbits"]:
            raise ConversionError(f"{pal_file}: LUTs of the wrong width: {checks['wrong_nbits']}, asked for {options.nbits} bits")
        if checks["bytes_palettized"] >= checks["bytes_fp16"]:
            raise ConversionError(f"{pal_file}: palettized file ({checks['bytes_palettized']} B) is not smaller than "
                                  f"the fp16 one ({checks['bytes_fp16']} B)")
        print(f"[coreml] {pal_file}: {len(checks['palettized'])} weights palettized to {options.nbits} bits; "
              f"stayed dense fp16 (< {options.weight_threshold} elements): {checks['dense'] or 'none'}")
        c, h, w = source.input_shape
        image_input = {"shape": [1, c, h, w], "layout": "image", "dtype": "uint8",
                       "color": "grayscale" if c == 1 else "rgb", "mean": source.mean, "std": source.std,
                       "scale": None, "zero_point": None, "normalization": "folded into the model"}
        output = {**float_output_spec(source), "kind": "classifier (classLabel, classLabel_probs)"}
        return [
            Artifact(fp16_file, self.name, "fp16", "mlpackage", "qat_float", image_input, output,
                     {"dense_fp16": True, "placement": op_histogram(out / fp16_file)}, fp16_seconds),
            Artifact(pal_file, self.name, quant, "mlpackage", "qat_float", image_input, output,
                     {**checks, "nbits": options.nbits, "granularity": options.granularity,
                      "group_size": options.group_size, "weight_threshold": options.weight_threshold},
                     time.perf_counter() - start),
        ]

    def validate(self, options) -> list[str]:
        problems = []
        if options.nbits not in NBITS:
            problems.append(f"--nbits {options.nbits} is not supported by Core ML palettization; use one of {NBITS}")
        if options.granularity not in GRANULARITIES:
            problems.append(f"--granularity {options.granularity!r}: use one of {GRANULARITIES}")
        if options.granularity == "per_grouped_channel" and options.group_size < 1:
            problems.append(f"--group-size must be >= 1, got {options.group_size}")
        return problems

    def runner(self, path: Path, artifact: dict, source: ExportSource, threads: int = 1):
        if platform.system() == "Darwin":
            return _predict_runner(path, source), "MLModel.predict (macOS; logits = log-probabilities)"
        return _readback_runner(path, source), "decompress_weights read-back (Linux)"


class ImageClassifier(nn.Module):
    """Raw pixels in [0, 1] -> normalize -> network -> softmax (Core ML's classifier adds no softmax)."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net((x - self.mean) / self.std), dim=1)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each Conv2d+BatchNorm2d pair of a Sequential into one conv, so Core ML's weights map back by name."""
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq)
        for i, (conv, bn) in enumerate(zip(children, children[1:])):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
    return model


def describe(mlmodel, source: ExportSource, quant: str) -> None:
    meta = source.metadata
    mlmodel.short_description = (f"{source.model_name} image classifier ({meta.get('dataset', '?')}), "
                                 f"QAT-trained weights, {quant}")
    mlmodel.author = "mobile deployment pipeline"
    mlmodel.license = meta.get("license", "Same as the training data and your model")
    mlmodel.version = meta.get("version", "1")
    mlmodel.input_description["image"] = "Image, resized to the model's input size"
    mlmodel.user_defined_metadata.update({
        "dataset": str(meta.get("dataset")), "test_accuracy_qat_float": str(meta.get("qat_float_accuracy")),
        "run_id": str(meta.get("run_id")), "quantization": quant,
        "mean": ",".join(map(str, source.mean)), "std": ",".join(map(str, source.std)),
    })


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


def lut_checks(path: Path, nbits: int) -> dict:
    """Read the saved program: which weights are LUT-palettized, with which index width, and which stayed dense."""
    import coremltools as ct
    from coremltools.proto import MIL_pb2

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    main = spec.mlProgram.functions["main"]
    palettized, wrong, dense = {}, {}, []
    for op in main.block_specializations[main.opset].operations:
        name = op.outputs[0].name if op.outputs else ""
        if op.type == "constexpr_lut_to_dense":
            indices = op.inputs["indices"].arguments[0].value.type.tensorType
            lut = op.inputs["lut"].arguments[0].value.type.tensorType
            index_type = MIL_pb2.DataType.Name(indices.dataType)
            entries = [d.constant.size for d in lut.dimensions][-2]
            palettized[name] = {"indices": index_type, "lut_entries": entries}
            if index_type != f"UINT{nbits}" or entries != 2 ** nbits:
                wrong[name] = palettized[name]
        elif op.type == "const" and name.endswith("weight_to_fp16"):
            dense.append(name)
    return {"palettized": palettized, "wrong_nbits": wrong, "dense": dense}


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Every weight of an mlpackage, decompressed to dense arrays, keyed by Core ML's const name."""
    import coremltools as ct
    from coremltools.optimize.coreml import decompress_weights, get_weights_metadata

    dense = decompress_weights(ct.models.MLModel(str(path), skip_model_load=True))
    return {name: np.asarray(meta.val) for name, meta in get_weights_metadata(dense, weight_threshold=0).items()}


def load_into(net: nn.Module, weights: dict[str, np.ndarray]) -> nn.Module:
    """Load Core ML weights into the PyTorch network they were converted from (names follow the state_dict)."""
    by_key = {}
    for name, value in weights.items():
        key = name.removesuffix("_palettized").removesuffix("_to_fp16")
        if key.startswith("p_net_"):
            by_key[key[len("p_net_"):]] = value
    state = net.state_dict()
    missing = [k for k in state if k.replace(".", "_") not in by_key and state[k].is_floating_point()]
    if missing:
        raise ConversionError(f"Core ML read-back: no weight found for {missing}")
    net.load_state_dict({k: torch.from_numpy(by_key[k.replace('.', '_')].astype(np.float32)).reshape(v.shape)
                         if v.is_floating_point() else v for k, v in state.items()})
    return net


def _readback_runner(path: Path, source: ExportSource):
    net = load_into(fold_batchnorm(source.qat_float_model), read_weights(path)).eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.asarray(batch, np.float32))).numpy()

    return run


def _predict_runner(path: Path, source: ExportSource):  # pragma: no cover - macOS only
    import coremltools as ct
    from PIL import Image

    model = ct.models.MLModel(str(path))
    mean = np.asarray(source.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(source.std, np.float32).reshape(-1, 1, 1)

    def run(batch: np.ndarray) -> np.ndarray:
        rows = []
        for x in np.asarray(batch, np.float32):
            pixels = np.clip(np.round((x * std + mean) * 255), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
            probs = model.predict({"image": image})["classLabel_probs"]
            rows.append(np.log(np.maximum([probs[label] for label in source.labels], 1e-12)))
        return np.asarray(rows, np.float32)

    return run
