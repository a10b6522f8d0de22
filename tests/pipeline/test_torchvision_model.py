"""A torchvision network through the whole pipeline at 32 px: train, QAT, export to all three runtimes, verify.

MobileNetV3-small is the one that needs the most: hardswish and hardsigmoid rewrites, squeeze-excitation,
relu6 on its fixed grid, BatchNorm with momentum 0.01. A few epochs on 2,048 digits: the numbers are checked
for what they mean (files agree with their references), not for how well the network learned.
"""

import json

import pytest

from pipeline.stages import Pipeline

pytestmark = pytest.mark.slow  # a real network through train, QAT and all three runtimes: about 5 minutes on 2 cores

BACKENDS = {"executorch", "tflite", "coreml"}


def test_mobilenet_v3_small_exports_to_all_three_runtimes_and_verifies(tmp_path, make_config):
    # A network trained this briefly has small logit margins: top-1 answers flip on rounding alone, so the
    # thresholds are loose (and Core ML palettizes to 8 bits); the layer-by-layer checks below do not depend on it.
    # QAT of a few steps falls below PTQ on MobileNetV3 (the known PT2E problem): auto exports PTQ then.
    cfg = make_config(tmp_path / "out", model="torchvision:mobilenet_v3_small", image_size=32, limit_train=2048,
                      limit_test=100, epochs=3, qat_max_steps=4, calib_batches=2, nbits=8, parity_images=16,
                      max_quant_drop=10.0, max_acc_drop=3.0, min_agreement=0.9)
    pipeline = Pipeline(cfg)
    pipeline.train()
    pipeline.qat()
    ok = pipeline.export()
    manifest = json.loads((pipeline.out / "manifest.json").read_text())
    failures = {f: a["verification"].get("failures") for f, a in manifest["artifacts"].items()
                if not a["verification"].get("passed")}
    assert ok and not failures, failures
    assert {a["backend"] for a in manifest["artifacts"].values()} == BACKENDS
    assert all(b["status"] == "ok" for b in manifest["backends"].values())
    assert manifest["model"]["input_shape"] == [3, 32, 32]  # grey digits repeated to RGB for a 3-channel network
    rewrites = {r["from"] for r in manifest["model"]["rewrites"]}
    assert {"Hardswish", "Hardsigmoid"} <= rewrites and manifest["model"]["rewrite_float_diff"] < 1e-4
    accuracy = manifest["accuracy"]["int8"]
    assert accuracy["chosen"] == ("qat" if accuracy["qat"] >= accuracy["ptq"] else "ptq")
    # the int8 .pte and .tflite: every layer identical, and each op within a step of PyTorch on its own inputs
    parity = manifest["parity"]
    assert parity["check"]["passed"] and all(v["passed"] for v in parity["local_check"].values())
    pte = next(a for a in manifest["artifacts"].values() if a["backend"] == "executorch" and a["quant"] == "int8")
    assert pte["checks"]["fully_delegated"] and pte["checks"]["int8_compute_ops"] == pte["checks"]["compute_ops"]
    report = (pipeline.out / "report.md").read_text()
    assert "## Op placement" in report and "Hardswish → HardSwish" in report and "## Layer-by-layer parity" in report
