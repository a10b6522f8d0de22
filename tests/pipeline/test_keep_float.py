"""--keep-float in the shipped export: the named layers stay float in the .pte, the .tflite and Core ML's files."""

import json

import pytest

from study import StudyError


def test_kept_layer_stays_float_in_every_runtime_and_every_file_verifies(copy_of, exported):
    pipeline = copy_of(keep_float="conv1", parity_images=20)
    assert pipeline.quant_key() != exported.quant_key()
    pipeline.qat()
    entry = pipeline.manifest["stages"]["quantize"]["int8"]
    assert entry["keep_float"]["layers"] == ["conv1"] and entry["key"] == pipeline.quant_key()
    assert pipeline.export()
    arts = pipeline.manifest["artifacts"]
    mixed = {f: a for f, a in arts.items() if a["quant"].endswith("_mixed")}
    assert {a["backend"] for a in mixed.values()} == {"executorch", "tflite", "coreml"}
    assert all(a["verification"]["passed"] for a in mixed.values())
    assert not [f for f, a in arts.items() if a["quant"] in ("int8", "pal4")]  # the full-int8 files were retired
    pte = next(a for a in mixed.values() if a["format"] == "pte")["checks"]
    assert pte["compute_ops"] - pte["int8_compute_ops"] == 1
    tflite = next(a for a in mixed.values() if a["format"] == "tflite")["checks"]
    assert [op for op in tflite["float_compute_ops"] if "conv1" in op] and not [
        op for op in tflite["float_compute_ops"] if "conv2" in op or "fc" in op]
    w8a8 = next(a for a in mixed.values() if a["quant"] == "int8_mixed" and a["format"] == "mlpackage")["checks"]
    assert w8a8["float_layers"] == ["conv1"] and w8a8["quantized_weights"] == 3
    assert pipeline.manifest["verification"]["parity_passed"] is True  # the mixed .pte/.tflite pair was compared
    report = (pipeline.out / "report.md").read_text()
    assert "## Layers kept float: `int8` (--keep-float conv1)" in report
    assert "1 of 4 conv/linear ops run as fp32 XNNPACK ops" in report and "`conv1` float" in report


def test_unknown_layer_is_refused_before_anything_changes(copy_of):
    pipeline = copy_of(keep_float="conv1,nosuch")
    before = (pipeline.out / "manifest.json").read_text()
    with pytest.raises(StudyError, match=r"\['nosuch'\] are not conv/linear layers of convnet; its layers are conv1, conv2, fc1, fc2"):
        pipeline.qat()
    assert json.loads((pipeline.out / "manifest.json").read_text()) == json.loads(before)
