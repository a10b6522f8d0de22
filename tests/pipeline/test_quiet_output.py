"""What a newcomer sees: `make export-android` prints one line per step, the rest goes to OUT/logs/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import console

ROOT = Path(__file__).resolve().parents[2]
TINY_ARGS = "--limit-train 256 --limit-test 100 --qat-max-steps 5 --calib-batches 2 --sample-size 10"


@pytest.mark.slow  # the real `make export-android` job: train, QAT, export and bundle in subprocesses
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_export_android_is_quiet_and_announces_the_fallback_once(tmp_path):
    """The main job, offline (no MNIST in DATA_DIR and no network: the mnist-5k fallback), on tiny settings."""
    out, assets = tmp_path / "out", tmp_path / "assets"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The bundle goes to a scratch folder, not into the app in this checkout.
    args = f"{TINY_ARGS} --data-dir {tmp_path / 'data'}"
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "export-android", "DATASET=mnist", "EPOCHS=1",
         f"OUT={out}", f"ARGS={args}", f"BUNDLE_ARGS=--dest {assets}"],
        capture_output=True, text=True, timeout=900, env=env)
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0, "\n".join(lines[-40:])
    assert len(lines) <= 120, f"{len(lines)} lines:\n" + "\n".join(lines)
    text = "\n".join(lines)
    # MNIST cannot be had here (no network): decided once, in `train`, and said once in the whole job
    assert text.count("FALLING BACK to mnist-5k") == 1
    for noise in ("_pytree", "Use JAX lowering", "absl", "oneDNN", "cpuinfo", "Running MIL", "Traceback"):
        assert noise not in text, f"third-party noise on the console: {noise}"
    assert "[✓] verify: convnet_xnnpack_int8.pte" in text and "[✓] verify: convnet_tflite_int8.tflite" in text
    assert (assets / "convnet_xnnpack_int8.pte").exists()
    logs = sorted((out / "logs").glob("*.log"))
    assert [p.name.split("-", 2)[-1] for p in logs] == ["train.log", "qat.log", "export.log", "bundle.log"]
    # the full output is kept: the delegation table only goes to the log
    assert "delegation" in (out / "logs" / logs[2].name).read_text()


def test_capture_keeps_say_on_the_terminal_and_the_rest_in_the_log(tmp_path, capfd):
    log = tmp_path / "logs" / "x.log"
    with console.capture(log):
        console.say("a step that matters")
        print("a detail")
        print("a warning", file=sys.stderr)
        os.system("echo from a child process")
    out, err = capfd.readouterr()
    assert out == "a step that matters\n" and err == ""
    text = log.read_text()
    for line in ("a step that matters", "a detail", "a warning", "from a child process"):
        assert line in text


def test_verbose_shows_everything_and_still_logs_it(tmp_path, capfd):
    log = tmp_path / "x.log"
    with console.capture(log, verbose=True):
        console.say("step")
        os.system("echo child")
    out, _ = capfd.readouterr()
    assert "step" in out and "child" in out
    assert "step" in log.read_text() and "child" in log.read_text()
