"""The app's latency statistics and int8 (de)quantization, compiled and run on the
host JVM (Stats.java and Quant.java use only java.lang/java.util) and compared with
numpy. Rounding must be half-to-even, as in PyTorch and LiteRT."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[2] / "android_demo/app/src/main/java/com/example/mobilebench"

DRIVER = """
package com.example.mobilebench;

public class MathDriver {
    public static void main(String[] args) {
        double[] ms = new double[args.length - 0];
        for (int i = 0; i < args.length; i++) ms[i] = Double.parseDouble(args[i]);
        Stats s = Stats.of(ms);
        System.out.println("{\\"mean\\": " + s.mean + ", \\"std\\": " + s.std + ", \\"min\\": " + s.min
            + ", \\"max\\": " + s.max + ", \\"p50\\": " + s.p50 + ", \\"p90\\": " + s.p90 + ", \\"p99\\": " + s.p99
            + ", \\"trim\\": " + s.trimmedMean + "}");
        float[] x = {0.25f, 0.75f, -0.25f, -0.75f, 100f, -100f, 0.0f, 0.3f};
        byte[] q = Quant.quantizeInt8(x, 0.5f, -3);
        StringBuilder b = new StringBuilder("[");
        for (int i = 0; i < q.length; i++) b.append(i == 0 ? "" : ", ").append(q[i]);
        System.out.println(b.append("]"));
        float[] d = Quant.dequantize(new byte[] {-128, -3, 0, 127}, 0.5f, -3, false);
        float[] u = Quant.dequantize(new byte[] {(byte) 255, 0}, 0.25f, 128, true);
        System.out.println("[" + d[0] + ", " + d[1] + ", " + d[2] + ", " + d[3] + ", " + u[0] + ", " + u[1] + "]");
    }
}
"""


@pytest.fixture(scope="module")
def driver(jdk, tmp_path_factory):
    work = tmp_path_factory.mktemp("javamath")
    (work / "MathDriver.java").write_text(DRIVER)
    r = subprocess.run([jdk["javac"], "-source", "8", "-target", "8", "-Xlint:-options", "-d", str(work / "classes"),
                        str(SRC / "Stats.java"), str(SRC / "Quant.java"), str(work / "MathDriver.java")],
                       capture_output=True, text=True, cwd=work)
    assert r.returncode == 0, r.stderr

    def run(samples):
        r = subprocess.run([jdk["java"], "-cp", str(work / "classes"), "com.example.mobilebench.MathDriver",
                            *map(str, samples)], capture_output=True, text=True, check=True)
        return [json.loads(line) for line in r.stdout.splitlines()]
    return run


def test_stats_match_numpy(driver):
    rng = np.random.default_rng(0)
    samples = np.round(rng.gamma(4.0, 0.25, size=57), 4)
    stats, _, _ = driver(samples)
    s = np.sort(samples)
    k = int(len(s) * 0.10)
    assert stats["mean"] == pytest.approx(s.mean())
    assert stats["std"] == pytest.approx(s.std(ddof=1))
    assert stats["min"] == s[0] and stats["max"] == s[-1]
    for p in (50, 90, 99):
        assert stats[f"p{p}"] == pytest.approx(np.percentile(s, p))
    assert stats["trim"] == pytest.approx(s[k:len(s) - k].mean())


def test_single_sample(driver):
    stats, _, _ = driver([1.5])
    assert stats == {"mean": 1.5, "std": 0.0, "min": 1.5, "max": 1.5, "p50": 1.5, "p90": 1.5, "p99": 1.5,
                     "trim": 1.5}


def test_quantization_rounds_half_to_even_and_clamps(driver):
    _, q, deq = driver([1.0])
    x = np.array([0.25, 0.75, -0.25, -0.75, 100, -100, 0.0, 0.3], dtype=np.float32)
    expected = np.clip(np.rint(x / np.float32(0.5)) + -3, -128, 127).astype(int).tolist()
    assert q == expected == [-3, -1, -3, -5, 127, -128, -3, -2]
    assert deq == [-62.5, 0.0, 1.5, 65.0, 31.75, -32.0]
