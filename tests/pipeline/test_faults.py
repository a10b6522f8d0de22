"""Faults and bad input through the command line: a clear message and the documented exit status, nothing
good lost, and no broken model passing verification (issue: faults and bad input)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import io as atomic
from core import qat, quantize
from core.workspace import CHECKPOINT
from pipeline import cli
from pipeline.stages import Pipeline

REPO = Path(__file__).resolve().parents[2]
TINY = ["--dataset", "mnist-5k", "--limit-train", "256", "--limit-test", "100", "--epochs", "1", "--batch-size", "32"]


def main(capsys, *args):
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(out: Path) -> dict:
    """sha256 of every file under OUT (the .lock and the command logs excepted): equal trees mean nothing was touched."""
    return {str(p.relative_to(out)): atomic.sha256(p) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != atomic.LOCK_FILE and p.relative_to(out).parts[0] != "logs"}


# ---- 1. a broken int8 model must never pass -------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--qat-epochs", "0"], "QAT would run 0 steps"),
    (["--freeze-observers-at", "0"], "before they see any batch"),
    (["--limit-train", "20"], "before they see any batch"),  # 20 images, batch 32: one step, frozen at step 0
    (["--qat-max-steps", "1"], "before they see any batch"),
])
def test_settings_whose_observers_see_no_batch_are_refused_before_training(tmp_path, capsys, args, message):
    code, _, err = main(capsys, "train", *TINY, "--out", str(tmp_path), *args)
    assert code == 2 and message in err
    assert not (tmp_path / CHECKPOINT).exists()


def test_a_five_image_dataset_is_refused_before_training(tmp_path, capsys):
    for split, count in (("train", 5), ("test", 2)):
        for i in range(count):
            d = tmp_path / "data" / split / ("a" if i % 2 else "b")
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(d / f"{i}.png")
    code, _, err = main(capsys, "train", "--dataset", f"imagefolder:{tmp_path / 'data'}", "--out", str(tmp_path / "o"))
    assert code == 2 and "before they see any batch" in err and "5 training images" in err


@pytest.mark.cpu_sensitive
def test_a_chance_level_int8_model_fails_verification_and_is_not_bundled(copy_of, tmp_path, capsys):
    """The state `--qat-epochs 0` used to reach: ranges that never saw data, converted anyway."""
    pipeline = copy_of(backends="tflite")
    model = pipeline.fp32_model()
    schedule = qat.QATSchedule(0, 0, 1e-4, 32, 0, 0.6, 0.8)
    broken_result = quantize.quant_aware(model, pipeline.scheme(), pipeline.data, pipeline.shape, schedule)
    paths = quantize.save(broken_result, pipeline.shape, quantize.folder(pipeline.out, "int8"))
    stage = pipeline.manifest["stages"]["quantize"]["int8"]
    stage["sha256"] = {name: atomic.sha256(p) for name, p in paths.items()}
    broken = pipeline.evaluate(broken_result.program)
    pipeline.manifest["accuracy"]["int8"].update(quantized=broken, qat=broken, chosen="qat")
    pipeline.manifest["backends"].pop("tflite:int8")
    assert broken < 0.3 < pipeline.manifest["accuracy"]["fp32"]
    assert pipeline.export() is False
    v = pipeline.manifest["artifacts"]["convnet_tflite_int8.tflite"]["verification"]
    assert v["agreement"] > 0.9  # it matches its equally broken reference ...
    assert not v["passed"] and any("quantization costs more than --max-quant-drop" in f for f in v["failures"])
    assert "below fp32" in capsys.readouterr().out
    dest = pipeline.bundle("android", tmp_path / "assets")
    assert "convnet_tflite_int8.tflite" not in [p.name for p in dest.iterdir()]


# ---- 2. one writer per OUT ----------------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_first(tmp_path, capsys):
    with atomic.OutLock(tmp_path, "mobile-pipeline run"):
        code, _, err = main(capsys, "train", *TINY, "--out", str(tmp_path))
    assert code == 2 and f"in use by pid {os.getpid()}" in err and "mobile-pipeline run" in err
    assert not (tmp_path / "manifest.json").exists()


# ---- 3. reuse only what is intact ---------------------------------------------------------------
def test_an_overwritten_checkpoint_is_not_reused(copy_of, capsys):
    pipeline = copy_of()
    ckpt = pipeline.out / CHECKPOINT
    state = torch.load(ckpt, weights_only=False)
    state["model"]["fc2.bias"] += 1.0  # another run's weights under the same name
    torch.save(state, ckpt)
    before = tree(pipeline.out)
    code, _, err = main(capsys, "train", "--out", str(pipeline.out), *_settings(pipeline))
    assert code == 2 and "changed since `train` wrote it" in err and "--force" in err
    assert tree(pipeline.out) == before


def test_a_truncated_pte_is_exported_again(copy_of, capsys):
    pipeline = copy_of(backends="executorch")
    pte = pipeline.out / "convnet_xnnpack_int8.pte"
    good = pte.read_bytes()
    pte.write_bytes(good[: len(good) // 2])
    assert pipeline.export()
    out = capsys.readouterr().out
    assert "changed since export; exporting again" in out
    assert pipeline.manifest["artifacts"][pte.name]["verification"]["passed"]
    assert atomic.intact(pte, pipeline.manifest["artifacts"][pte.name]["sha256"])


def test_an_mlpackage_missing_its_weights_is_exported_again(copy_of, capsys):
    pipeline = copy_of(backends="coreml")
    package = pipeline.out / "convnet_coreml_pal4.mlpackage"
    next(package.rglob("weight.bin")).unlink()
    assert pipeline.verify(["coreml"]) is False  # verify says what to do ...
    assert "re-run `export`, which rebuilds it" in capsys.readouterr().out
    assert pipeline.export()  # ... and export does it
    assert next(package.rglob("weight.bin")).exists()


def test_an_interrupted_retrain_is_not_mistaken_for_a_finished_one(copy_of, monkeypatch, capsys):
    pipeline = copy_of(seed=1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the new run dies during its first epoch

    monkeypatch.setattr("core.train.train_fp32", killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train()
    monkeypatch.undo()
    assert pipeline.manifest["stages"]["train"]["status"] == "running"
    again = Pipeline(pipeline.cfg.__class__(**{**pipeline.cfg.to_dict(), "seed": 0}))  # the original settings
    again.train()
    assert "train: reusing" not in capsys.readouterr().out
    assert again.manifest["stages"]["train"]["status"] == "done"


# ---- 6. interruption --------------------------------------------------------------------------
def test_sigint_prints_one_line_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # As from a terminal: a shell's background job (CI started with `&`) hands its children SIGINT ignored,
    # and Python then keeps it ignored, so the child gets the default disposition back before it starts.
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "train", "--dataset", "mnist-5k", "--epochs", "50",
                             "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait until training has started
        manifest = tmp_path / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text())["stages"].get("train", {}).get("status") == "running":
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted: train stopped" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


# ---- 7. every bad input: a clear message and exit 2, up front -----------------------------------
@pytest.mark.parametrize("config, message", [
    ("epochs: three\n", "setting epochs (--epochs) must be a whole number, got 'three'"),
    ("dataset: 42\n", "setting dataset (--dataset) must be text, got 42"),
])
def test_config_values_of_the_wrong_type(tmp_path, capsys, config, message):
    (tmp_path / "run.yaml").write_text(config)
    code, _, err = main(capsys, "train", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "o"))
    assert code == 2 and message in err


@pytest.mark.parametrize("text, message", [
    ("[]", "holds a JSON list"),
    ("{}", "no 'stages' section"),
    ('{"stages": [], "accuracy": {}, "artifacts": {}, "backends": {}}', "'stages' is a list"),
    ('{"stages": {}, "accuracy": {"fp32": "high"}, "artifacts": {}, "backends": {}}', "accuracy 'fp32' is 'high'"),
    ("{not json", "not valid JSON"),
])
def test_a_damaged_manifest_is_an_error_and_force_sets_it_aside(tmp_path, capsys, text, message):
    (tmp_path / "manifest.json").write_text(text)
    code, _, err = main(capsys, "verify", *TINY, "--out", str(tmp_path))
    assert code == 2 and "is damaged" in err and message in err and "--force" in err
    assert (tmp_path / "manifest.json").read_text() == text
    from core import manifest as mf

    assert mf.load(tmp_path, force=True) == mf.empty()
    assert [p.read_text() for p in tmp_path.glob("manifest.json.damaged-*")] == [text]


@pytest.mark.parametrize("args, message", [
    (["--image-size", "-1"], "--image-size must be >= 8"),
    (["--max-acc-drop", "-1"], "--max-acc-drop must be >= 0"),
    (["--max-quant-drop", "-0.5"], "--max-quant-drop must be >= 0"),
    (["--dynamic-batch", "8"], "--dynamic-batch must be 0 (static batch 1) or between 16"),
    (["--limit-train", "-3"], "--limit-train must be >= 0"),
    (["--limit-test", "-1"], "--limit-test must be >= 0"),
])
def test_bad_numbers_are_refused(tmp_path, capsys, args, message):
    code, _, err = main(capsys, "train", *TINY, "--out", str(tmp_path), *args)
    assert code == 2 and message in err


@pytest.mark.parametrize("args, message", [
    (["--nbits", "5"], "--nbits 5 is not supported"),
    (["--granularity", "foo"], "--granularity 'foo'"),
    (["--group-size", "0"], "--group-size must be >= 1"),
])
def test_core_ml_options_are_refused_before_any_data_is_read(tmp_path, capsys, monkeypatch, args, message):
    def no_data(*a, **k):
        raise AssertionError("data was loaded before the options were checked")

    monkeypatch.setattr("core.data.load", no_data)
    code, _, err = main(capsys, "export", *TINY, "--out", str(tmp_path), *args)
    assert code == 2 and message in err


# ---- 8. stale files ---------------------------------------------------------------------------
def test_retraining_moves_the_old_models_files_aside_and_rewrites_the_report(copy_of):
    pipeline = copy_of(seed=1)
    old_run = pipeline.manifest["run_id"]
    old_files = sorted(pipeline.manifest["artifacts"]) + ["quantized"]
    old_ckpt = (pipeline.out / CHECKPOINT).read_bytes()
    pipeline.train()
    stale = pipeline.out / "stale" / old_run
    for name in old_files:
        assert not (pipeline.out / name).exists() and (stale / name).exists(), name
    assert (stale / "fp32.pt").read_bytes() == old_ckpt  # the earlier checkpoint is kept, not overwritten
    report = (pipeline.out / "report.md").read_text()
    assert pipeline.manifest["run_id"] in report and "convnet_xnnpack_int8.pte" not in report
    assert pipeline.manifest["artifacts"] == {}


def _settings(pipeline) -> list[str]:
    cfg = pipeline.cfg
    return ["--dataset", cfg.dataset, "--limit-train", str(cfg.limit_train), "--limit-test", str(cfg.limit_test),
            "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size), "--qat-max-steps", str(cfg.qat_max_steps),
            "--calib-batches", str(cfg.calib_batches)]
