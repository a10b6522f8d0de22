"""Golden outputs for the demo apps (converters/golden.py): the apps' preprocessing, the tolerance, and the
document `bundle` writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from converters import golden


def test_app_inputs_match_the_apps_float32_formula_and_the_pipelines_normalize():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 2, 4, 5), dtype=np.uint8)
    mean, std = [0.1307, 0.5], [0.3081, 0.25]
    x = golden.app_inputs(pixels, mean, std)
    assert x.dtype == np.float32 and x.shape == pixels.shape
    # Java: (pixel / 255f - m) / sd, every operand a float
    m, s = np.float32(mean[1]), np.float32(std[1])
    by_hand = (np.float32(pixels[2, 1, 3, 4]) / np.float32(255) - m) / s
    assert x[2, 1, 3, 4] == by_hand
    ours = (torch.from_numpy(pixels).float() / 255.0 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    assert np.array_equal(x, ours.numpy())


def test_app_inputs_refuse_what_the_apps_could_not_feed():
    with pytest.raises(golden.GoldenError, match="uint8 images"):
        golden.app_inputs(np.zeros((2, 1, 4, 4), dtype=np.float32), [0.0], [1.0])
    with pytest.raises(golden.GoldenError, match="2 normalization values for 3 channel"):
        golden.app_inputs(np.zeros((1, 3, 4, 4), dtype=np.uint8), [0.1, 0.2], [1.0])


def test_tolerance_is_one_output_step_for_int8_and_a_small_share_for_float():
    logits = np.array([[4.0, -2.0]], dtype=np.float32)
    assert golden.tolerance({"output": {"dtype": "int8", "scale": 0.0625}}, logits) == pytest.approx(0.0625)
    assert golden.tolerance({"quant": "fp32", "output": {"dtype": "float32", "scale": None}}, logits) == pytest.approx(4e-3)
    assert golden.output_step({"quant": "fp32", "output": {"dtype": "float32"}}, logits) == (None, None)


def test_a_quantized_file_with_float_output_is_held_to_the_grid_its_logits_lie_on():
    rng = np.random.default_rng(1)
    on_grid = (rng.integers(-128, 128, size=(20, 10)) + 17).astype(np.float32) * np.float32(0.0885)
    artifact = {"quant": "int8", "output": {"dtype": "float32", "scale": None}}
    step, source = golden.output_step(artifact, on_grid)
    assert step == pytest.approx(0.0885, rel=1e-5) and "spacing of the golden logits" in source
    assert golden.tolerance(artifact, on_grid) == pytest.approx(0.0885, rel=1e-5)
    off_grid = rng.normal(size=(20, 10)).astype(np.float32)
    assert golden.output_step(artifact, off_grid) == (None, None)


class _Fake:
    """A converter whose runner returns a fixed function of its input, and says how it ran."""

    name, app_name = "fake", "fakert"

    def runner(self, path, artifact, source):
        assert source == ("source", artifact["quant"])
        return (lambda batch: batch.reshape(len(batch), -1)[:, :3] * 2), "fake runtime"


def test_compute_and_write_the_document(monkeypatch, tmp_path):
    monkeypatch.setitem(golden.REGISTRY, "tflite", _Fake())
    pixels = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2) * 20
    artifact = {"backend": "tflite", "quant": "int8", "input": {"mean": [0.5], "std": [0.5]},
                "output": {"dtype": "int8", "scale": 0.125}}
    doc = golden.compute({"m_int8.tflite": (tmp_path / "m_int8.tflite", artifact)}, pixels,
                         lambda a: ("source", a["quant"]))
    expected = golden.app_inputs(pixels, [0.5], [0.5]).reshape(2, -1)[:, :3] * 2
    (entry,) = doc["models"]
    assert doc["count"] == 2 and doc["classes"] == 3
    assert entry["runtime"] == "fakert" and entry["method"] == "fake runtime" and entry["output_step"] == 0.125
    assert np.array_equal(np.array(entry["logits"], dtype=np.float32), expected)
    assert entry["top1"] == expected.argmax(1).tolist()
    path = golden.write(tmp_path, doc, run_id="r1")
    assert json.loads(path.read_text())["run_id"] == "r1"
    assert [p.name for p in tmp_path.iterdir()] == [golden.GOLDEN]


def test_the_apps_name_each_runtime_as_its_converter_says():
    assert golden.runtime_name(golden.REGISTRY["tflite"]) == "litert"  # the apps run .tflite files in LiteRT
    assert [golden.runtime_name(golden.REGISTRY[n]) for n in ("executorch", "coreml")] == ["executorch", "coreml"]


def test_a_runtime_that_fails_is_named(monkeypatch, tmp_path):
    class Broken:
        def runner(self, path, artifact, source):
            raise RuntimeError("cannot open")

    monkeypatch.setitem(golden.REGISTRY, "executorch", Broken())
    artifact = {"backend": "executorch", "quant": "fp32", "input": {}, "output": {}}
    with pytest.raises(golden.GoldenError, match=r"m\.pte did not run in its host runtime \(RuntimeError: cannot open\)"):
        golden.compute({"m.pte": (tmp_path / "m.pte", artifact)}, np.zeros((1, 1, 2, 2), np.uint8), lambda a: None)
