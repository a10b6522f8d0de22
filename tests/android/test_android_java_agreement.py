"""The app's device-host agreement (Agreement.java), compiled and run on the host JVM against the vectors in
data/agreement_vectors.json, which the Swift twin's Python mirror (tests/ios) is held to as well."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.android.test_android_java_math import SRC

VECTORS = Path(__file__).resolve().parent / "data" / "agreement_vectors.json"


def _java_float(v) -> str:
    return "Float.NaN" if v == "NaN" else f"{float(v)!r}f"


def _java_matrix(rows) -> str:
    return "new float[][] {" + ", ".join("{" + ", ".join(map(_java_float, r)) + "}" for r in rows) + "}"


def _driver(cases) -> str:
    calls = []
    for case in cases:
        calls.append(f"        report({_java_matrix(case['device'])}, {_java_matrix(case['host'])});")
    return """
package com.example.mobilebench;

public class AgreementDriver {
    static void report(float[][] device, float[][] host) {
        Agreement a = new Agreement();
        for (int i = 0; i < device.length; i++) a.add(i, device[i], host[i]);
        StringBuilder b = new StringBuilder("[");
        int[] d = a.disagreeingImages();
        for (int i = 0; i < d.length; i++) b.append(i == 0 ? "" : ", ").append(d[i]);
        double m = a.maxAbsLogitDiff();
        System.out.println("{\\"images\\": " + a.images() + ", \\"top1_agreement\\": " + a.top1Agreement()
            + ", \\"max_abs_logit_diff\\": " + (Double.isInfinite(m) ? "\\"Infinity\\"" : String.valueOf(m))
            + ", \\"worst_image\\": " + a.worstImage() + ", \\"disagreeing_images\\": " + b.append("]") + "}");
    }

    public static void main(String[] args) {
        try {
            new Agreement().add(0, new float[3], new float[2]);
            System.out.println("{\\"length_check\\": false}");
        } catch (IllegalArgumentException e) {
            System.out.println("{\\"length_check\\": \\"" + e.getMessage() + "\\"}");
        }
""" + "\n".join(calls) + """
    }
}
"""


@pytest.fixture(scope="module")
def java_results(jdk, tmp_path_factory):
    cases = json.loads(VECTORS.read_text())["cases"]
    work = tmp_path_factory.mktemp("javaagreement")
    (work / "AgreementDriver.java").write_text(_driver(cases))
    r = subprocess.run([jdk["javac"], "-source", "8", "-target", "8", "-Xlint:-options", "-d", str(work / "classes"),
                        str(SRC / "Agreement.java"), str(work / "AgreementDriver.java")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([jdk["java"], "-cp", str(work / "classes"), "com.example.mobilebench.AgreementDriver"],
                       capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    return lines[0], list(zip(cases, lines[1:]))


def test_java_agreement_matches_the_vectors(java_results):
    _, results = java_results
    for case, got in results:
        assert got["images"] == len(case["device"]), case["name"]
        assert got["top1_agreement"] == pytest.approx(case["top1_agreement"]), case["name"]
        assert got["max_abs_logit_diff"] == case["max_abs_logit_diff"] or \
            got["max_abs_logit_diff"] == pytest.approx(case["max_abs_logit_diff"]), case["name"]
        assert got["worst_image"] == case["worst_image"], case["name"]
        assert got["disagreeing_images"] == case["disagreeing_images"], case["name"]


def test_java_agreement_matches_numpy_on_finite_vectors(java_results):
    _, results = java_results
    for case, got in results:
        device, host = np.array(case["device"], dtype=np.float32), np.array(case["host"], dtype=np.float32)
        if not np.isfinite(device).all():
            continue
        assert got["top1_agreement"] == pytest.approx(float((device.argmax(1) == host.argmax(1)).mean()))
        assert got["max_abs_logit_diff"] == pytest.approx(float(np.abs(device - host).max()))
        assert math.isfinite(got["max_abs_logit_diff"])


def test_java_agreement_refuses_mismatched_lengths(java_results):
    check, _ = java_results
    assert check["length_check"] == "image 0: the device gave 3 logits, the host 2"
