"""HostAgreement.swift cannot run here (no Swift toolchain): it is parsed, its decisive statements are pinned, and a
line-by-line Python mirror of it is held to the vectors Agreement.java runs on the JVM
(tests/android/data/agreement_vectors.json), so the two apps compute the same numbers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SWIFT = REPO / "ios_demo" / "ConvNetBench" / "HostAgreement.swift"
VECTORS = REPO / "tests" / "android" / "data" / "agreement_vectors.json"

# The statements of HostAgreement.add and argmax that the mirror below reproduces, in this order.
PINNED = [
    "guard problem == nil else { return }",
    "images += 1",
    "if predicted == HostAgreement.argmax(host) {",
    "agreeing += 1",
    "} else if disagreeingImages.count < HostAgreement.maxListed {",
    "guard let device = device else {",
    "logitsCompared = false",
    "guard device.count == host.count else {",
    "problem = \"image \\(image): the device gave \\(device.count) logits, the host \\(host.count)\"",
    "var difference = abs(Double(device[index]) - Double(host[index]))",
    "if difference.isNaN {",
    "difference = .infinity",
    "if difference > maxAbsLogitDiff || worstImage < 0 {",
    "for index in values.indices where values[index] > values[best] {",
]


def swift_argmax(values) -> int:
    best = 0
    for index in range(len(values)):
        if values[index] > values[best]:  # NaN compares false, as in Swift
            best = index
    return best


def mirror(device_rows, host_rows, predicted=None) -> dict:
    """HostAgreement: images, agreeing, maxAbsLogitDiff, worstImage, disagreeingImages, logitsCompared."""
    s = {"images": 0, "agreeing": 0, "max": 0.0, "worst": -1, "disagreeing": [], "logits_compared": True,
         "problem": None}
    for image, (device, host) in enumerate(zip(device_rows, host_rows)):
        if s["problem"] is not None:
            continue
        host = [float(np.float32(v)) for v in host]
        device = None if device is None else [float(np.float32(v)) for v in device]
        guess = predicted[image] if predicted is not None else swift_argmax(device)
        s["images"] += 1
        if guess == swift_argmax(host):
            s["agreeing"] += 1
        elif len(s["disagreeing"]) < 10:
            s["disagreeing"].append(image)
        if device is None:
            s["logits_compared"] = False
            continue
        if len(device) != len(host):
            s["problem"] = f"image {image}: the device gave {len(device)} logits, the host {len(host)}"
            continue
        for d, h in zip(device, host):
            difference = abs(d - h)
            if math.isnan(difference):
                difference = math.inf
            if difference > s["max"] or s["worst"] < 0:
                s["max"], s["worst"] = difference, image
    return s


def _floats(rows):
    return [[float("nan") if v == "NaN" else v for v in row] for row in rows]


def test_the_swift_file_parses_and_holds_the_mirrored_statements_in_order(check_swift):
    assert check_swift.syntax_problems(SWIFT) == []
    text = SWIFT.read_text()
    positions = [text.find(line) for line in PINNED]
    assert -1 not in positions, [line for line, at in zip(PINNED, positions) if at == -1]
    assert positions == sorted(positions)  # the order of the Swift source: add, then argmax


@pytest.mark.parametrize("case", json.loads(VECTORS.read_text())["cases"], ids=lambda c: c["name"])
def test_the_mirror_matches_the_shared_vectors(case):
    s = mirror(_floats(case["device"]), case["host"])
    expected_max = math.inf if case["max_abs_logit_diff"] == "Infinity" else case["max_abs_logit_diff"]
    assert s["agreeing"] / s["images"] == pytest.approx(case["top1_agreement"])
    assert s["max"] == pytest.approx(expected_max)
    assert s["worst"] == case["worst_image"] and s["disagreeing"] == case["disagreeing_images"]


def test_a_classifier_without_logits_is_judged_on_its_class_only():
    host = [[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]
    s = mirror([None, None], host, predicted=[1, 2])
    assert s["agreeing"] == 1 and s["disagreeing"] == [1] and not s["logits_compared"] and s["worst"] == -1


def test_mismatched_lengths_stop_the_comparison_with_the_reason():
    s = mirror([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], [[0.0, 1.0], [0.0, 1.0]])
    assert s["problem"] == "image 0: the device gave 3 logits, the host 2" and s["images"] == 1
