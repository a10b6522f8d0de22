import numpy as np
import pytest

from converters.verify import run_artifact

pytestmark = pytest.mark.cpu_sensitive  # re-run under forced CPU capabilities (make test-cpus)


def test_int8_tflite_is_fully_int8(exported):
    artifact = exported.manifest["artifacts"]["convnet_tflite_int8.tflite"]
    checks = artifact["checks"]
    assert checks["fully_int8"] and checks["float_tensors"] == []
    assert set(checks["tensor_types"]) <= {"int8", "int32"}
    assert artifact["input"]["dtype"] == "int8" and artifact["output"]["dtype"] == "int8"
    assert artifact["input"]["scale"] > 0 and -128 <= artifact["input"]["zero_point"] <= 127
    fp32 = exported.manifest["artifacts"]["convnet_tflite_fp32.tflite"]["checks"]
    assert "float32" in fp32["tensor_types"] and not fp32["fully_int8"]


def test_tflite_matches_pte_on_every_test_input(exported):
    source = exported.export_source()
    arts = exported.manifest["artifacts"]
    tfl, _ = run_artifact(exported.out / "convnet_tflite_int8.tflite", arts["convnet_tflite_int8.tflite"], source, exported.data)
    pte, _ = run_artifact(exported.out / "convnet_xnnpack_int8.pte", arts["convnet_xnnpack_int8.pte"], source, exported.data)
    assert len(tfl) == 300
    assert (tfl.argmax(1) == pte.argmax(1)).all()
    cross = exported.manifest["verification"]["cross_backend"]
    assert cross["convnet_tflite_int8.tflite vs convnet_xnnpack_int8.pte"]["agreement"] == 1.0
    assert np.isfinite(tfl).all()
