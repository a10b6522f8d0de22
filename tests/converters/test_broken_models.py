"""Seeded broken files fail verify whatever the CPU: a layer off by many steps, and a chance-level model.

These verdicts must hold under every forced ATen CPU capability (`make test-cpus`): the faults are far beyond
any interval's width, so no rounding or k-means difference between CPUs can move them into noise.
"""

import pytest

from converters.verify import Thresholds, run_artifact, verify
from core.evaluate import predict

pytestmark = pytest.mark.cpu_sensitive


def _verify_file(exported, path, thresholds):
    artifact = exported.manifest["artifacts"]["convnet_tflite_int8.tflite"]
    source = exported.export_source()
    logits, _ = run_artifact(path, artifact, source, exported.data)
    labels = exported.data.test_labels.numpy()
    reference = predict(source.program, exported.data)
    baselines = {"fp32": exported.recorded_answers("fp32"), "ptq": exported.recorded_answers("int8:ptq")}
    return verify(artifact, logits, reference, labels, thresholds, baselines)


def test_a_layer_off_by_many_steps_fails_every_check_it_touches(exported, conv2_off_by_many_steps):
    result = _verify_file(exported, conv2_off_by_many_steps, Thresholds.from_config(exported.cfg))
    assert not result["passed"] and result["outcome"] == "failed"
    failed = {v["name"] for v in result["verdicts"] if v["outcome"] == "fail"}
    assert {"agreement with quantized", "accuracy drop vs quantized", "quantization cost vs fp32"} <= failed
    # far beyond noise: even the generous rounding floor and a 99.9% interval do not save it
    loose = Thresholds(min_agreement=0.98, confidence=0.999)
    assert not _verify_file(exported, conv2_off_by_many_steps, loose)["passed"]


def test_the_good_file_passes_where_the_broken_one_fails(exported):
    """The control: the fixture's own .tflite, through the same function, is not failed."""
    good = exported.out / "convnet_tflite_int8.tflite"
    assert _verify_file(exported, good, Thresholds.from_config(exported.cfg))["passed"]
