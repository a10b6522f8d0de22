"""`bundle` writes the host runtime's outputs on the bundled images (golden_outputs.json) for every bundled file,
from the real runtimes, through the apps' preprocessing."""
from __future__ import annotations

import json

import numpy as np


def test_bundle_writes_golden_outputs_for_every_bundled_file(copy_of, tmp_path):
    pipeline = copy_of()
    dest = pipeline.bundle("android", tmp_path / "assets")
    golden = json.loads((dest / "golden_outputs.json").read_text())
    models = json.loads((dest / "models.json").read_text())["models"]
    sample = json.loads((dest / "test_sample.json").read_text())
    assert [m["file"] for m in golden["models"]] == [m["file"] for m in models]
    assert golden["count"] == sample["count"] and golden["run_id"] == pipeline.manifest["run_id"]
    logits = {m["file"]: np.array(m["logits"], dtype=np.float32) for m in golden["models"]}
    for m in golden["models"]:
        assert logits[m["file"]].shape == (sample["count"], golden["classes"])
        assert m["top1"] == logits[m["file"]].argmax(1).tolist()
        assert m["method"] in ("executorch.runtime", "ai-edge-litert Interpreter")
        if m["quant"] == "int8":
            assert m["output_step"] and m["tolerance"] >= m["output_step"]
    # the ConvNet's int8 .pte and .tflite compute bit-identical logits (stack.md): both entries come from the runtimes
    assert np.array_equal(logits["convnet_xnnpack_int8.pte"], logits["convnet_tflite_int8.tflite"])
    labels = np.array(sample["labels"])
    recorded = pipeline.manifest["artifacts"]["convnet_tflite_fp32.tflite"]["verification"]["accuracy"]
    assert abs((logits["convnet_tflite_fp32.tflite"].argmax(1) == labels).mean() - recorded) < 0.2


def test_the_ios_bundle_names_how_core_ml_was_run(copy_of, tmp_path):
    pipeline = copy_of()
    dest = pipeline.bundle("ios", tmp_path / "resources")
    golden = {m["file"]: m for m in json.loads((dest / "golden_outputs.json").read_text())["models"]}
    coreml = [m for f, m in golden.items() if f.endswith(".mlpackage")]
    assert coreml and all(m["runtime"] == "coreml" and m["method"] for m in coreml)
