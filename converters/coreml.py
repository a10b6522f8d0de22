"""Core ML: an fp16 baseline, the scheme (W8A8 from the PT2E graph, or linear weight-only), and k-means LUTs.

Every .mlpackage is an iOS 18 mlprogram with an image input (normalization folded in) and class
labels. Core ML runs only on macOS; on Linux the files' weights are read back and checked.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from core import io as atomic
from core.graph_layout import remove_noop_slices
from core.rewrites import native_activations
from core.schemes import Scheme, Support

from .base import (Artifact, ConversionError, Converter, ExportSource, PartialExport, float_layers, float_output_spec,
                   mixed, ops_text)
from .coreml_graph import drop_dead_buffer_updates, explained, refuse_state
from .coreml_palette import auto_budget, group_problems, ungrouped
from .coreml_checks import lut_checks, op_histogram, w8a8_checks, wrong_groups
from .coreml_fold import fold_batchnorm
from .coreml_weights import load_into, read_weights  # noqa: F401  (read_weights: parity's too)

NBITS = (1, 2, 3, 4, 6, 8)
FLOAT_HINT = "replace that layer with ops Core ML converts, or leave Core ML out (--backends executorch,tflite)"
W8A8_HINT = ("the fp16 and palettized Core ML files do not need this conversion; replace that layer with ops Core ML "
             "converts, or leave Core ML out (--backends executorch,tflite)")
CHECK_HINT = ("the file was converted but could not be read back to check it, so it was not kept; report this "
              "with the log (a coremltools limitation or a pipeline bug)")
GRANULARITIES = ("per_tensor", "per_grouped_channel")


def palette_tag(nbits: int | str) -> str:
    """`pal<n>`, or `palauto` for widths chosen per layer (--nbits auto:PP)."""
    return f"pal{nbits}" if isinstance(nbits, int) else "palauto"


def palettized_file(model_name: str, scheme, nbits: int | str, kept_float: tuple[str, ...] = ()) -> str:
    """`<model>_coreml_pal<n>` for the default scheme's weights, `<model>_coreml_<tag>_pal<n>` for any other
    (a PTQ-only or other-calibration run of the default weights has other float weights: another file);
    `_mixed` is appended when layers stay float (--keep-float); `palauto` under --nbits auto:PP."""
    tag = mixed(palette_tag(nbits), kept_float)
    return f"{model_name}_coreml_{'' if scheme.tag == 'int8' else scheme.tag + '_'}{tag}.mlpackage"


class CoreMLConverter(Converter):
    name = "coreml"
    display_name = "Core ML"
    format = "mlpackage"
    packages = ("coremltools",)
    settings = ("nbits", "granularity", "group_size", "weight_threshold")
    systems = ("Darwin",)
    runtime_modules = ("coremltools",)
    thread_control = "not controllable: Core ML schedules its own work (macOS only)"

    def support(self, scheme: Scheme) -> Support:
        sym, bits, gran, acts = scheme.symmetry == "symmetric", scheme.weight_bits, scheme.granularity, scheme.activations
        if acts == "dynamic":
            return Support(self.name, False, reason="Core ML has no dynamic activation quantization")
        if acts == "none":
            mode = "linear_symmetric" if sym else "linear"
            return Support(self.name, True, f"coremltools linear_quantize_weights (mode {mode}, int{bits}, "
                                            f"{gran}): every conv/linear weight stored as int{bits} + scale, "
                                            "compute in fp16")
        if bits == 8 and sym and gran != "per_block":
            return Support(self.name, True, "ct.convert of the same folded PT2E graph: int8 weights "
                                            "(constexpr_blockwise_shift_scale) and quantize/dequantize activations")
        return Support(self.name, False, reason="Core ML takes static int8 activations only from a symmetric 8-bit "
                                                "per-channel or per-tensor PT2E graph; for other weights use "
                                                "--activations none (weight-only)")

    def runs_here(self) -> str | None:
        if platform.system() != "Darwin":
            return (f"Core ML runs only on macOS; on {platform.system()} only size and accuracy "
                    "(accuracy from the weights read back into PyTorch)")
        return None

    def batch_support(self, artifact: dict, batch: int) -> str | None:
        return f"the .mlpackage takes batch 1 (image input of shape {artifact['input']['shape']})"

    def placement(self, artifact: dict) -> tuple[str, str]:
        c = artifact.get("checks", {})
        p, dense = c.get("placement", {}), c.get("dense") or []
        where = (f"{ops_text({k: v for k, v in p.get('ops', {}).items() if not k.startswith('const')})}; "
                 f"compute outputs by type {p.get('compute_outputs_by_dtype', {})}; LUT weights {p.get('lut_weights', 0)}")
        left = f"weights left dense fp16: {', '.join(dense)}" if dense else ("all weights fp16" if artifact["quant"] == "fp16" else "none")
        return where, left

    checks_stored_weights = True  # verify reads the file's own weights (on Linux) or runs the file itself

    def how_it_runs(self, artifact: dict) -> str:  # as `runner` decides
        if platform.system() == "Darwin":
            return "runtime"
        static = (artifact.get("scheme") or {}).get("activations") == "static"
        return "simulated" if artifact["reference"] == "quantized" and static else "readback"

    def same_settings(self, artifact: dict, options) -> bool:
        if not artifact["quant"].startswith("pal"):
            return True
        checks = artifact.get("checks", {})
        return all(checks.get(name) == getattr(options, name) for name in ("nbits", "granularity", "group_size", "weight_threshold"))

    def outside_ops(self, artifact: dict) -> dict[str, int]:
        return {w: 1 for w in artifact.get("checks", {}).get("dense") or []}  # weights left dense fp16

    def float_in_file(self, artifact: dict, layers: tuple[str, ...]) -> dict[str, bool] | None:
        checks = artifact.get("checks") or {}
        if "dense" in checks:  # palettized: the kept layers' weights stay dense fp16
            return {k: weight_const(k) in checks["dense"] for k in layers}
        if "float_layers" in checks:  # W8A8: the kept layers' weights are stored fp16, not int8
            return {k: k in checks["float_layers"] for k in layers}
        return None

    def kept_float_note(self, artifact: dict, layers: tuple[str, ...]) -> str:
        what = "dense fp16 weights: " if "dense" in (artifact.get("checks") or {}) else "fp16 weights (not int8): "
        note = super().kept_float_note(artifact, layers)
        return note if note == "–" else what + note

    def mixed_findings(self, row: dict, full: dict | None, layers: tuple[str, ...]) -> dict:
        if not (row["quant"].startswith("pal") and full):
            return {}
        dense = set((full.get("checks") or {}).get("dense", []))  # below --weight-threshold: dense without --keep-float
        return {"coreml_dense_anyway": [n for n in layers if weight_const(n) in dense]}

    def file_kinds(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return ("Core ML fp16", ("fp16", "fp32")), ("Core ML W8A8", ("int8",)), ("Core ML palettized", ("pal*",))

    def export_baseline(self, source: ExportSource, out: Path, options) -> list[Artifact]:
        """An fp16 mlprogram of the fp32 model: the float baseline every other .mlpackage is compared with."""
        start = time.perf_counter()
        file = f"{source.model_name}_coreml_fp16.mlpackage"
        with explained(file, "Core ML conversion", FLOAT_HINT):
            fp16 = convert_float(source.fp32_model, source, file)
            describe(fp16, source, "fp16", "fp32 weights")
        checks = {"dense_fp16": True}
        with explained(file, "checking the saved file", CHECK_HINT):
            atomic.atomic_write(out / file, lambda tmp: (fp16.save(str(tmp)), checks.update(placement=op_histogram(tmp))))
        return [Artifact(file, self.name, "fp16", "mlpackage", "fp32", image_input(source), classifier_output(source),
                         checks, time.perf_counter() - start)]

    def export_scheme(self, source: ExportSource, out: Path, options) -> list[Artifact]:
        """The scheme itself (W8A8 from the PT2E graph, or linear weight-only), then k-means palettized weights.

        Each file is made, checked, and only then renamed into OUT; one failing does not stop the other
        (PartialExport carries the one made and why the other is not)."""
        problems = self.validate(options)
        if problems:
            raise ConversionError("; ".join(problems))
        how = self.require_support(source.scheme)
        made, failed = [], []
        for make in (self._scheme_file, self._palettize):
            try:
                made.append(make(source, out, options, how))
            except ConversionError as exc:
                failed.append(exc)
        if failed and (made or len(failed) > 1):
            raise PartialExport(made, failed)
        if failed:
            raise failed[0]
        return made

    def _scheme_file(self, source: ExportSource, out: Path, options, how: str) -> Artifact:
        scheme = source.scheme
        start = time.perf_counter()
        kept = float_layers(options, scheme)
        quant = mixed(scheme.tag, kept)  # mixed: the PT2E graph holds the float layers
        file = f"{source.model_name}_coreml_{quant}.mlpackage"
        static = scheme.activations == "static"
        checks = {"how": how}
        with explained(file, "Core ML conversion of the int8 graph" if static else "Core ML conversion",
                       W8A8_HINT if static else FLOAT_HINT, program=source.program if static else None):
            if static:
                dropped: list[dict] = []
                mlmodel = convert_w8a8(source, file, dropped)
                checks["dropped_buffer_updates"] = [row["buffer"] for row in dropped]
            else:
                # Every conv/linear weight, as LiteRT's weight-only recipe and the PyTorch reference quantize them.
                mlmodel = linear_quantize(convert_float(source.float_model, source, file), scheme, weight_threshold=0)
            describe(mlmodel, source, quant, source.metadata.get("weights_from", "trained weights"))

        def write(tmp: Path) -> None:  # checked before it is renamed into OUT: a failing file never lands there
            mlmodel.save(str(tmp))
            checks["placement"] = op_histogram(tmp)
            if static:
                checks.update(w8a8_checks(tmp, source.program))
                if kept:  # mixed precision: which kept layers' weights the file holds dense in fp16
                    stored = read_weights(tmp)
                    checks["float_layers"] = [n for n in kept if weight_const(n) in stored]
            elif not checks["placement"]["linear_quantized_weights"]:
                raise ConversionError(f"{file}: no weight was linearly quantized (none fits blocks of {scheme.block_size})")

        with explained(file, "checking the saved file", CHECK_HINT):
            atomic.atomic_write(out / file, write)
        return Artifact(file, self.name, quant, "mlpackage", "quantized", image_input(source), classifier_output(source),
                        checks, time.perf_counter() - start, scheme=scheme.describe())

    def _palettize(self, source: ExportSource, out: Path, options, how: str = "") -> Artifact:
        from coremltools.optimize.coreml import OptimizationConfig, palettize_weights

        start = time.perf_counter()
        scheme = source.scheme
        # Mixed precision (the study's --keep-float): per-op configs keep the named layers' weights dense fp16.
        layers = float_layers(options, scheme)
        kept = {weight_const(layer): None for layer in layers}
        quant = mixed(palette_tag(options.nbits), layers)
        file = palettized_file(source.model_name, scheme, options.nbits, layers)
        # --nbits auto:PP: each layer at the width the export stage chose for it (layer_nbits), nothing else palettized
        widths = dict(options.layer_nbits)
        if auto_budget(options.nbits) is not None and not widths:
            raise ConversionError(f"{file}: --nbits {options.nbits} needs the width of each layer, which the export "
                                  "stage chooses; none was given")
        expected = {weight_const(layer): bits for layer, bits in widths.items()} or options.nbits
        with explained(file, "Core ML conversion and palettization", FLOAT_HINT):
            fp16 = convert_float(source.float_model, source, file)
            if widths:
                config = OptimizationConfig(op_name_configs={**{c: palettizer_config(options, b) for c, b in expected.items()},
                                                             **kept})
            else:
                config = OptimizationConfig(global_config=palettizer_config(options, options.nbits),
                                            op_name_configs=kept or None)
            palettized = palettize_weights(fp16, config)
            describe(palettized, source, quant, source.metadata.get("weights_from", "trained weights"))
        # layers whose output channels --group-size does not divide: coremltools leaves them dense fp16
        checks = {"dense_group_size": ungrouped(source.float_model, options, layers)}

        def write(tmp: Path) -> None:  # checked before it is renamed into OUT
            palettized.save(str(tmp))
            checks.update({**lut_checks(tmp, expected), "placement": op_histogram(tmp)})
            checks["bytes_palettized"] = atomic.size_bytes(tmp)
            checks["bytes_fp32_weights"] = sum(p.numel() * 4 for p in source.float_model.parameters())
            checks["bytes_fp16_weights"] = checks["bytes_fp32_weights"] // 2
            if not checks["palettized"]:
                raise ConversionError(f"{file}: no constexpr_lut_to_dense op holds a weight; every weight is below "
                                      f"--weight-threshold {options.weight_threshold}")
            not_dense = [c for c in kept if c not in checks["dense"]]
            if not_dense:
                raise ConversionError(f"{file}: {not_dense} should have stayed dense fp16 (--keep-float), but are "
                                      "not dense fp16 weights of this program")
            mismatched = wrong_groups(checks, options)
            if mismatched:
                raise ConversionError(f"{file}: LUTs per weight not as --granularity {options.granularity} "
                                      f"--group-size {options.group_size} asks: {mismatched}")
            if checks["wrong_nbits"] or checks["not_palettized"]:
                asked = f"{options.nbits} bits" if not widths else f"per layer {widths}"
                raise ConversionError(f"{file}: LUTs of the wrong width: {checks['wrong_nbits']}; not palettized: "
                                      f"{checks['not_palettized']}; asked for {asked}")

        with explained(file, "checking the saved file", CHECK_HINT):
            atomic.atomic_write(out / file, write)
        bits = f"{options.nbits} bits" if not widths else "per-layer widths " + ", ".join(f"{k} {v}" for k, v in widths.items())
        print(f"[coreml] {file}: {len(checks['palettized'])} weights palettized to {bits}; "
              f"stayed dense fp16 (< {options.weight_threshold} elements): {checks['dense'] or 'none'}")
        if checks["dense_group_size"]:
            print(f"[coreml] {file}: --group-size {options.group_size} does not divide the output channels of "
                  f"{checks['dense_group_size']}: they stayed dense fp16")
        summary = (f"{options.nbits}-bit" if not widths else f"per-layer ({'/'.join(map(str, sorted(set(widths.values()), reverse=True)))}-bit)")
        return Artifact(file, self.name, quant, "mlpackage", "float", image_input(source), classifier_output(source),
                        {**checks, "nbits": options.nbits, "granularity": options.granularity,
                         "group_size": options.group_size, "weight_threshold": options.weight_threshold,
                         **({"layer_nbits": widths} if widths else {})},
                        time.perf_counter() - start,
                        scheme={"kind": "palettization", "nbits": options.nbits, "granularity": options.granularity,
                                "group_size": options.group_size, "weights_of": scheme.tag,
                                **({"layer_nbits": widths} if widths else {}),
                                "summary": f"{summary} k-means LUT weights ({options.granularity}"
                                           f"{f', groups of {options.group_size} channels' if options.granularity == 'per_grouped_channel' else ''}), "
                                           "fp16 activations"})

    def validate(self, options) -> list[str]:
        problems = []
        try:
            auto = auto_budget(options.nbits)
        except ValueError as exc:
            problems.append(str(exc))
        else:
            if auto is None and options.nbits not in NBITS:
                problems.append(f"--nbits {options.nbits} is not supported by Core ML palettization; use one of {NBITS} "
                                "or auto:PP")
        if options.granularity not in GRANULARITIES:
            other = (" (--granularity is Core ML palettization's; the int8 weights' is --weight-granularity)"
                     if options.granularity in ("per_channel", "per_block") else "")
            problems.append(f"--granularity {options.granularity!r}: use one of {GRANULARITIES}{other}")
        if options.granularity == "per_grouped_channel" and options.group_size < 1:
            problems.append(f"--group-size must be >= 1, got {options.group_size}")
        return problems

    def source_problems(self, source: ExportSource, options) -> list[str]:
        """A --group-size that does not divide a palettized layer's output channels (coremltools would skip it)."""
        return group_problems(source.float_model, options, tuple(options.float_layers))

    def runner(self, path: Path, artifact: dict, source: ExportSource, threads: int = 1):
        if platform.system() == "Darwin":
            return _predict_runner(path, source), "MLModel.predict (macOS; logits = log-probabilities)"
        if artifact["reference"] == "quantized" and (artifact.get("scheme") or {}).get("activations") == "static":
            return _w8a8_runner(path, source), ("W8A8 on Linux: the file's int8 weights and activation scales are "
                                                "checked equal to the int8 graph's, which then runs in PyTorch")
        net = source.fp32_model if artifact["reference"] == "fp32" else source.float_model
        return (_readback_runner(path, net, source.input_shape),
                "decompress_weights read-back into the PyTorch network (Linux)")


class ImageClassifier(nn.Module):
    """Raw pixels in [0, 1] -> normalize -> network -> softmax (Core ML's classifier adds no softmax)."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net((x - self.mean) / self.std), dim=1)


def image_input(source: ExportSource) -> dict:
    c, h, w = source.input_shape
    return {"shape": [1, c, h, w], "layout": "image", "dtype": "uint8", "color": "grayscale" if c == 1 else "rgb",
            "mean": source.mean, "std": source.std, "scale": None, "zero_point": None,
            "normalization": "folded into the model"}


def classifier_output(source: ExportSource) -> dict:
    return {**float_output_spec(source), "kind": "classifier (classLabel, classLabel_probs)"}


def _convert(module: nn.Module, source: ExportSource, file: str = "the Core ML file", **kwargs):
    import coremltools as ct

    example = (torch.zeros(1, *source.input_shape),)
    exported = torch.export.export(ImageClassifier(module, source.mean, source.std), example).run_decompositions({})
    if remove_noop_slices(exported.graph_module):  # GhostNet's `out[:, :C]` of a C-channel tensor became an alias,
        exported.graph_module.recompile()  # which Core ML's converter does not take ("Unsupported fx node alias")
    refuse_state(exported, file)
    return ct.convert(
        exported,
        inputs=[ct.ImageType(name="image", shape=(1, *source.input_shape), scale=1 / 255.0,
                             color_layout=ct.colorlayout.GRAYSCALE if source.input_shape[0] == 1 else ct.colorlayout.RGB)],
        classifier_config=ct.ClassifierConfig(source.labels), convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18, **kwargs)


def convert_float(model: nn.Module, source: ExportSource, file: str = "the Core ML file"):
    """An fp16 mlprogram of a float network (BatchNorm folded first, so the file holds the folded network's own
    weights, which the Linux read-back matches by shape and value).

    The int8 converters' hardsigmoid/hardswish rewrites are undone: Core ML has both ops, and the
    rewritten `conv + 3` would have its constant folded into a renamed conv bias (core.rewrites).
    """
    import coremltools as ct

    return _convert(fold_batchnorm(native_activations(model)), source, file, compute_precision=ct.precision.FLOAT16)


def convert_w8a8(source: ExportSource, file: str = "the Core ML file", dropped: list | None = None):
    """ct.convert of the folded PT2E graph: int8 weights and quantize/dequantize activations (the same graph as the
    .pte, less the buffer updates no output reads, listed into `dropped`: see converters.coreml_graph)."""
    program, rows = drop_dead_buffer_updates(source.program)
    if dropped is not None:
        dropped.extend(rows)
    return _convert(program, source, file)


def palettizer_config(options, nbits: int):
    """k-means LUTs of `nbits`, with the export's --granularity, --group-size and --weight-threshold."""
    from coremltools.optimize.coreml import OpPalettizerConfig

    grouped = options.granularity == "per_grouped_channel"
    return OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity=options.granularity,
                              group_size=options.group_size if grouped else 0, weight_threshold=options.weight_threshold)


def linear_quantize(mlmodel, scheme, weight_threshold: int):
    """coremltools linear weight quantization at the scheme's bits, symmetry and granularity."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    config = OpLinearQuantizerConfig(
        mode="linear_symmetric" if scheme.symmetry == "symmetric" else "linear", dtype=f"int{scheme.weight_bits}",
        granularity=scheme.granularity, block_size=scheme.block_size if scheme.granularity == "per_block" else None,
        weight_threshold=weight_threshold)
    return linear_quantize_weights(mlmodel, OptimizationConfig(global_config=config))


def weight_const(layer: str) -> str:
    """The Core ML const holding a layer's fp16 weight, as ct.convert names it from the exported program."""
    return f"p_net_{layer.replace('.', '_')}_weight_to_fp16"


def describe(mlmodel, source: ExportSource, quant: str, weights: str) -> None:
    meta = source.metadata
    mlmodel.short_description = (f"{source.model_name} image classifier ({meta.get('dataset', '?')}), "
                                 f"{weights}, {quant}")
    mlmodel.author = "mobile deployment pipeline"
    mlmodel.license = meta.get("license", "Same as the training data and your model")
    mlmodel.version = meta.get("version", "1")
    mlmodel.input_description["image"] = "Image, resized to the model's input size"
    mlmodel.user_defined_metadata.update({
        "dataset": str(meta.get("dataset")), "test_accuracy_pytorch": str(meta.get("accuracy")),
        "run_id": str(meta.get("run_id")), "quantization": quant,
        "mean": ",".join(map(str, source.mean)), "std": ",".join(map(str, source.std)),
    })


def _readback_runner(path: Path, model: nn.Module, shape: tuple[int, ...] | None = None):
    net = load_into(fold_batchnorm(model), read_weights(path), path.name, shape).eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.asarray(batch, np.float32))).numpy()

    return run


def _w8a8_runner(path: Path, source: ExportSource):
    """W8A8 on Linux: Core ML cannot run here, so check the file against the int8 graph, then run that graph."""
    w8a8_checks(path, source.program)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return source.program(torch.from_numpy(np.asarray(batch, np.float32))).numpy()

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
