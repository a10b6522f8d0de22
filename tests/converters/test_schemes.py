"""Each scheme a runtime supports exports and verifies; what the files store is read back from the files."""

import shutil

import pytest

from converters import executorch, tflite
from converters.coreml_checks import op_histogram
from core.schemes import Scheme
from pipeline.stages import Pipeline

pytestmark = pytest.mark.cpu_sensitive  # re-run under forced CPU capabilities (make test-cpus)

# (settings, backends that support the scheme): PTQ keeps it quick; the default scheme is in the session fixture.
SCHEMES = [
    (dict(weight_granularity="per_tensor"), "executorch,tflite,coreml"),
    (dict(activations="dynamic"), "executorch,tflite"),
    (dict(activations="none"), "tflite,coreml"),
    (dict(weight_bits=4, weight_granularity="per_block", activations="dynamic"), "executorch,tflite"),
    (dict(weight_bits=4, activations="dynamic"), "executorch,tflite"),
    (dict(weight_bits=4, activations="none"), "tflite,coreml"),
    (dict(weight_bits=4, weight_granularity="per_block", activations="none"), "coreml"),
    (dict(weight_symmetry="asymmetric", activations="none"), "coreml"),
    (dict(weight_bits=4, weight_granularity="per_block", weight_symmetry="asymmetric", activations="none"), "coreml"),
    (dict(weight_granularity="per_block", activations="dynamic"), "none"),  # no runtime: simulated (torchao)
    (dict(weight_symmetry="asymmetric", activations="dynamic"), "none"),  # no runtime: simulated (torchao)
    (dict(weight_bits=4), "none"),  # no runtime: simulated (PT2E, int4 levels in int8)
]


def tag(settings: dict) -> str:
    names = {"weight_bits": "weight_bits", "weight_granularity": "granularity", "weight_symmetry": "symmetry",
             "activations": "activations"}
    return Scheme(**{names[k]: v for k, v in settings.items()}, mode="ptq").tag


@pytest.fixture(scope="module")
def schemed(exported, tmp_path_factory, make_config):
    """A copy of the session OUT with every scheme above quantized (PTQ) and exported; {tag: export ok}."""
    out = tmp_path_factory.mktemp("schemes") / "out"
    shutil.copytree(exported.out, out)
    results = {}
    for settings, backends in SCHEMES:
        pipeline = Pipeline(make_config(out, quant_mode="ptq", backends=backends, **settings))
        pipeline.qat()
        results[pipeline.scheme().tag] = pipeline.export() if backends != "none" else None
    return Pipeline(make_config(out)), results


@pytest.mark.parametrize("settings, backends", SCHEMES, ids=[tag(s) for s, _ in SCHEMES])
def test_each_supported_scheme_exports_and_verifies(schemed, settings, backends):
    pipeline, results = schemed
    t = tag(settings)
    manifest = pipeline.manifest
    assert manifest["stages"]["quantize"][t]["status"] == "done"
    assert manifest["accuracy"][t]["chosen"] == "ptq" and manifest["accuracy"][t]["ptq"] > 0.5
    files = {f: a for f, a in manifest["artifacts"].items() if (a.get("scheme") or {}).get("tag") == t}
    if backends == "none":
        assert not files and results[t] is None  # simulated only, and said so by the accuracy table
        return
    assert results[t], f"{t}: export or verification failed"
    assert {a["backend"] for a in files.values()} == set(backends.split(","))
    for file, a in files.items():
        assert t in file and a["verification"]["passed"], file
        assert a["scheme"]["summary"] and a["scheme"]["mode"] == "ptq"
        assert "fp32" in a["verification"]["quant_drop_pp"] and "ptq" in a["verification"]["quant_drop_pp"]


def test_per_tensor_weights_are_stored_per_tensor_in_the_files(schemed):
    pipeline, _ = schemed
    pte = executorch.weight_quantization(pipeline.out / "convnet_xnnpack_w8pta8-ptq.pte")
    weights = [r for r in pte if not r["datatype"].endswith("int32")]
    assert len(weights) == 4 and all(r["quantization"] == "PerTensorQuant" and r["scales"] == 1 for r in weights)
    default = executorch.weight_quantization(pipeline.out / "convnet_xnnpack_int8.pte")
    # one scale per output channel (XNNPACK stores conv1, with one input channel, as a depthwise [1, kh, kw, out])
    assert all(r["quantization"] == "PerChannelQuant" and r["scales"] > 1 and r["scales"] in (r["dims"][0], r["dims"][-1])
               for r in default)
    tfl = tflite.weight_quantization(pipeline.out / "convnet_tflite_w8pta8-ptq.tflite")
    assert len(tfl) == 4 and all(r["dtype"] == "int8" and r["scales"] == 1 and r["zero_points"] == [0] for r in tfl)
    per_channel = tflite.weight_quantization(pipeline.out / "convnet_tflite_int8.tflite")
    assert [r["scales"] for r in per_channel] == [32, 64, 128, 10]


def test_four_bit_blocks_are_stored_as_blocks(schemed):
    pipeline, _ = schemed
    pte = executorch.weight_quantization(pipeline.out / "convnet_xnnpack_w4b32dyn-ptq.pte")
    assert {r["datatype"] for r in pte} == {"xnn_datatype_qbint4"}
    assert [r["scales"] for r in pte] == [128 * 9216 // 32, 10 * 128 // 32]  # one scale per block of 32
    per_channel = executorch.weight_quantization(pipeline.out / "convnet_xnnpack_w4pcdyn-ptq.pte")
    assert [(r["datatype"], r["scales"]) for r in per_channel] == [("xnn_datatype_qbint4", 128), ("xnn_datatype_qbint4", 10)]
    assert executorch.summarize_stored(per_channel) == {"xnn_datatype_qbint4 PerChannelGroupQuant (one block per row)": 2}


def test_weight_only_files_store_integer_weights_and_compute_in_float(schemed):
    pipeline, _ = schemed
    tfl = tflite.weight_quantization(pipeline.out / "convnet_tflite_w8pcwo-ptq.tflite")
    assert all(r["dtype"] == "int8" and r["dequantized"] for r in tfl)
    placement = op_histogram(pipeline.out / "convnet_coreml_w8pcwo-ptq.mlpackage")
    assert placement["linear_quantized_weights"] == 4 and placement["activation_quantize_ops"] == 0


def test_the_report_names_every_scheme(schemed):
    pipeline, _ = schemed
    report = (pipeline.out / "report.md").read_text()
    for settings, _ in SCHEMES:
        assert f"`{tag(settings)}`" in report
    assert "int8 weights, asymmetric, per output channel; int8 activations, dynamic ranges" in report
