"""Faults and bad input, second round: a broken model stops the pipeline, and a command that refuses, or has
nothing to do, leaves OUT byte-identical (issue 27)."""

from pathlib import Path

import pytest

from core import io as atomic
from core.workspace import CHECKPOINT
from pipeline import cli

TINY = ["--dataset", "mnist-5k", "--limit-train", "256", "--limit-test", "100", "--epochs", "1", "--batch-size", "32"]


def main(capsys, *args):
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(out: Path) -> dict:
    """sha256 of every file under OUT, by path; the command logs and the lock's note excepted (every command writes
    those). Equal snapshots before and after a command mean it changed nothing in OUT."""
    out = Path(out)
    if not out.exists():
        return {}
    return {str(p.relative_to(out)): atomic.sha256(p) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != atomic.LOCK_FILE and p.relative_to(out).parts[0] != "logs"}


def assert_unchanged(out: Path, before: dict) -> None:
    after = snapshot(out)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a refused command changed {changed}"


# ---- 1. a broken fp32 model stops the pipeline before anything is quantized, exported or bundled -------
def test_a_diverged_model_is_refused_by_train_and_every_later_stage(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = main(capsys, "train", *TINY, "--lr", "10", "--out", str(out))
    assert code == 2
    assert "is broken" in err and "the training loss exploded" in err and "ower --lr (it is 10)" in err
    assert "not significantly better than chance" in err and "of 100 correct" in err and "binomial test p =" in err
    before = snapshot(out)
    for command in (["qat"], ["export"], ["bundle", "android", "--dest", str(tmp_path / "assets")]):
        code, _, err = main(capsys, *command, *TINY, "--lr", "10", "--out", str(out))
        assert code == 2 and "is broken" in err, (command, err)
        assert_unchanged(out, before)
    assert not (out / "quantized").exists() and not (tmp_path / "assets").exists()


def test_too_few_test_images_to_beat_chance_is_refused(tmp_path, capsys):
    code, _, err = main(capsys, "train", *TINY, "--limit-test", "1", "--out", str(tmp_path))
    assert code == 2 and "not significantly better than chance" in err and "Raise --limit-test" in err


def test_zero_epochs_without_weights_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = main(capsys, "train", *TINY, "--epochs", "0", "--out", str(out))
    assert code == 2 and "--epochs 0 without --weights or --pretrained" in err
    assert not out.exists()


def test_a_trained_tiny_model_passes_the_chance_test(exported):
    stage = exported.manifest["stages"]["train"]
    assert stage["better_than_chance"]["passed"] and stage["better_than_chance"]["p_value"] < 1e-6
    assert stage["diverged"] is None
    exported.require_sound_model()


# ---- 2. a command that refuses, or has nothing to do, changes nothing ---------------------------------
def _settings(pipeline) -> list[str]:
    cfg = pipeline.cfg
    return ["--dataset", cfg.dataset, "--limit-train", str(cfg.limit_train), "--limit-test", str(cfg.limit_test),
            "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size), "--qat-max-steps", str(cfg.qat_max_steps),
            "--calib-batches", str(cfg.calib_batches), "--out", str(pipeline.out)]


def test_resume_from_a_corrupt_checkpoint_moves_nothing(copy_of, capsys):
    pipeline = copy_of()
    (pipeline.out / CHECKPOINT).write_bytes(b"not a checkpoint")
    before = snapshot(pipeline.out)
    code, out, err = main(capsys, "train", "--resume", "--epochs", "2", *_settings(pipeline)[:4], *_settings(pipeline)[6:])
    assert code == 2 and "corrupt" in err and str(pipeline.out / CHECKPOINT) in err
    assert "moved" not in out
    assert_unchanged(pipeline.out, before)


def test_resume_of_a_finished_run_is_a_no_op(copy_of, capsys):
    pipeline = copy_of()
    before = snapshot(pipeline.out)
    code, out, _ = main(capsys, "train", "--resume", *_settings(pipeline))
    assert code == 0 and "train: reusing" in out and "moved" not in out
    assert_unchanged(pipeline.out, before)


def test_retraining_with_the_same_settings_does_not_say_they_changed(copy_of, capsys):
    pipeline = copy_of()
    code, out, _ = main(capsys, "train", "--force", *_settings(pipeline))
    assert code == 0 and "made from the earlier training run" in out
    assert "no longer match the settings" not in out


# ---- 3. an empty --out ----------------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["", "   "])
def test_an_empty_out_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    code, _, err = main(capsys, "train", *TINY, "--out", out)
    assert code == 2 and "--out is empty" in err and "OUT=" in err
    assert list(tmp_path.iterdir()) == []


# ---- 4. a model file that exits the program when imported -----------------------------------------------
FACTORY = ("import torch.nn as nn\n\n\ndef build(num_classes, in_channels):\n"
           "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")


@pytest.mark.parametrize("prelude, message", [
    ("import sys\nsys.exit(0)\n", "called sys.exit() (exit code 0)"),
    ("import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument('--depth', type=int)\n"
     "parser.parse_args()\n", "parsed the command line with argparse"),
])
@pytest.mark.parametrize("command", ["train", "qat", "export"])
def test_a_model_file_that_exits_at_import_is_named(tmp_path, monkeypatch, capsys, prelude, message, command):
    path = tmp_path / "nets.py"
    path.write_text(prelude + FACTORY)
    out = tmp_path / "out"
    args = [command, *TINY, "--model", f"{path}:build", "--out", str(out)]
    monkeypatch.setattr("sys.argv", ["mobile-pipeline", *args])
    code, _, err = main(capsys, *args)
    assert code == 2 and str(path) in err and message in err and "__main__" in err
    assert snapshot(out) == {}


def test_a_factory_that_exits_is_named(tmp_path):
    from core import models

    path = tmp_path / "nets.py"
    path.write_text(FACTORY.replace("    return", "    raise SystemExit(3)\n    return"))
    with pytest.raises(models.ModelError, match=r"the model factory called sys.exit\(\) \(exit code 3\)"):
        models.build(f"{path}:build", 10, in_channels=1)


# ---- 6. a checkpoint that would run code is refused, never loaded -------------------------------------
class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("command", [["qat", "--force"], ["train", "--resume"], ["export"]])
def test_a_checkpoint_that_would_run_code_is_refused(copy_of, tmp_path, capsys, command):
    import json

    import torch

    pipeline = copy_of()
    ckpt, marker = pipeline.out / CHECKPOINT, tmp_path / "code-ran"
    state = torch.load(ckpt, weights_only=True)
    state["meta"]["payload"] = _RunsCode(marker)
    torch.save(state, ckpt)
    manifest = json.loads((pipeline.out / "manifest.json").read_text())  # as whoever crafted it would
    manifest["stages"]["train"]["sha256"] = atomic.sha256(ckpt)
    (pipeline.out / "manifest.json").write_text(json.dumps(manifest))
    for artifact in [p for p in pipeline.out.glob("*.tflite")]:
        artifact.unlink()  # export must rebuild, so it needs the checkpoint
    before = snapshot(pipeline.out)
    code, _, err = main(capsys, *command, *_settings(pipeline), "--backends", "tflite")
    assert code == 2 and f"checkpoint {ckpt} needs pickled code to load" in err and "posix.system" in err
    assert "train --force" in err
    assert not marker.exists()
    if command[0] != "export":  # export records the files it found missing before it rebuilds
        assert_unchanged(pipeline.out, before)


def test_a_checkpoint_of_plain_values_only_is_written(tmp_path):
    from core.train import CheckpointError, save_checkpoint

    with pytest.raises(CheckpointError, match="need code to load"):
        save_checkpoint(tmp_path / "fp32.pt", {"model": {}, "meta": {"payload": _RunsCode(tmp_path / "m")}})
    assert not (tmp_path / "fp32.pt").exists()


# ---- 7. a bad file in a streamed image folder -------------------------------------------------------------
def _folder(root: Path, per_class: int = 12) -> Path:
    import numpy as np
    from PIL import Image

    for split, n in (("train", per_class), ("test", per_class // 2)):
        for label, level in (("dark", 40), ("bright", 200)):
            d = root / split / label
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.full((16, 16), level + i, np.uint8)).save(d / f"img{i:03d}.png")
    return root


def _truncated_png(path: Path) -> None:
    good = (path.parent / "img000.png").read_bytes()
    path.write_bytes(good[: len(good) // 2])


@pytest.mark.parametrize("split, name, write", [
    ("test", "x.jpg", lambda p: p.write_text("not an image")),
    ("test", "cut.png", _truncated_png),
    ("train", "cut.png", _truncated_png),
])
def test_a_bad_file_in_a_streamed_folder_is_named_before_training(tmp_path, capsys, split, name, write):
    root = _folder(tmp_path / "data")
    bad = root / split / "dark" / name
    write(bad)
    out = tmp_path / "out"
    code, _, err = main(capsys, "train", "--dataset", f"imagefolder:{root}", "--loader", "stream", "--workers", "2",
                        "--stats-images", "4", "--epochs", "1", "--batch-size", "4", "--out", str(out))
    assert code == 2 and f"cannot read image {bad}" in err, err
    assert "Traceback" not in err and "worker" not in err and len(err.strip().splitlines()) == 1
    assert not (out / CHECKPOINT).exists()


def test_macos_appledouble_files_are_skipped_with_a_note(tmp_path, capsys):
    from core import data, loaders

    root = _folder(tmp_path / "data")
    for split in ("train", "test"):
        (root / split / "dark" / "._img000.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X")
    streamed = loaders.open_imagefolder(root, 1, 16, workers=2, stats_images=0)
    memory = data.load(f"imagefolder:{root}", "unused", 1, 16)
    assert len(streamed.train_labels) == len(memory.train_labels) == 24
    assert streamed.check_readable("test") == len(memory.test_labels) == 12
    assert "skipped 1 macOS AppleDouble file(s)" in capsys.readouterr().out


# ---- 8. an input size whose activations cannot fit in memory -------------------------------------------
def test_an_absurd_image_size_is_refused_before_anything_is_built(tmp_path, monkeypatch, capsys):
    def no_data(*a, **k):
        raise AssertionError("data was loaded before the image size was checked")

    monkeypatch.setattr("core.data.load", no_data)
    path = tmp_path / "nets.py"
    path.write_text(FACTORY)
    out = tmp_path / "out"
    code, _, err = main(capsys, "train", *TINY, "--model", f"{path}:build", "--image-size", "100000", "--out", str(out))
    assert code == 2 and "--image-size 100000 cannot work here" in err and "GiB" in err
    assert snapshot(out) == {}


def test_the_input_memory_check_is_a_lower_bound_of_the_batch():
    from core.config import ConfigError
    from core.device import check_input_memory

    check_input_memory((3, 224, 224), 64, available=64 * 3 * 224 * 224 * 4)  # just fits
    with pytest.raises(ConfigError, match="--image-size 224 cannot work here"):
        check_input_memory((3, 224, 224), 64, available=64 * 3 * 224 * 224 * 4 - 1)


# ---- 9. a stage of absurd length says so after its first steps ---------------------------------------
def stopped_after_estimate():
    """A StageClock that estimates after 3 steps and then stops the run, as a user reading the estimate would."""
    from core.console import StageClock

    class Stopped(StageClock):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "min_steps": 3})

        def step(self):
            super().step()
            if self.done:
                raise KeyboardInterrupt

    return Stopped


def test_a_billion_epochs_get_an_estimate_and_a_warning(tmp_path, monkeypatch, capsys):
    from core import train

    monkeypatch.setattr(train, "StageClock", stopped_after_estimate())
    code, out, _ = main(capsys, "train", *TINY, "--epochs", "1000000000", "--out", str(tmp_path))
    assert code == 130
    assert "train: 3 steps took" in out and "all 8,000,000,000 steps should take about" in out and "years" in out
    assert "warning: train would run for about" in out and "check --epochs (1,000,000,000 of 8 steps each)" in out


def test_a_million_qat_epochs_get_an_estimate_and_a_warning(copy_of, monkeypatch, capsys):
    from core import qat

    monkeypatch.setattr(qat, "StageClock", stopped_after_estimate())
    pipeline = copy_of(qat_epochs=1_000_000.0, qat_max_steps=0)
    with pytest.raises(KeyboardInterrupt):
        pipeline.qat()
    out = capsys.readouterr().out
    assert "qat: 3 steps took" in out and "all 32,000,000 steps should take about" in out
    assert "warning: qat would run for about" in out and "check --qat-epochs / --qat-max-steps" in out


# ---- 5. every temporary file under OUT ------------------------------------------------------------------
def test_export_inspection_scratch_files_stay_under_out(copy_of, tmp_path, monkeypatch):
    """The .pte inspection (flatc) and the ETDump profile write scratch files: under OUT, named .tmp.*, so a run
    killed there leaves nothing outside OUT and the next run's recovery removes what it left."""
    import contextlib

    import torch

    from converters.executorch import weight_quantization
    from converters.parity_capture import xnnpack_float_kernels

    pipeline = copy_of()
    pte = pipeline.out / "convnet_xnnpack_int8.pte"
    seen = []
    real = atomic.scratch_dir

    @contextlib.contextmanager
    def spy(beside):
        with real(beside) as folder:
            seen.append(folder)
            yield folder

    monkeypatch.setattr(atomic, "scratch_dir", spy)
    assert weight_quantization(pte)
    xnnpack_float_kernels(pte, torch.zeros(1, *pipeline.shape))
    assert len(seen) == 2 and all(f.parent == pipeline.out and f.name.startswith(atomic.TMP_PREFIX) for f in seen)
    assert not [p for p in pipeline.out.iterdir() if p.name.startswith(atomic.TMP_PREFIX)]
    assert atomic.recover(pipeline.out) == []
