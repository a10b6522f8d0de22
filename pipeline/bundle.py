"""The `bundle` stage: the verified, intact artifacts of OUT copied into a demo app, with what the app needs."""

from __future__ import annotations

import shutil
from pathlib import Path

from core import io as atomic
from core import manifest as mf
from core.console import say

from .state import OutState, StageError

APP_DIRS = {"android": Path("android_demo/app/src/main/assets"), "ios": Path("ios_demo/Resources")}
APP_FORMATS = {"android": ("pte", "tflite"), "ios": ("mlpackage", "pte")}


def run(pipeline: OutState, platform: str, dest: Path | None = None) -> Path:
    """Copy the verified, intact artifacts, labels, a test sample and their input specs into a demo app."""
    pipeline.require_sound_model()
    dest = Path(dest or APP_DIRS[platform])
    formats = APP_FORMATS[platform]
    chosen = {f: a for f, a in pipeline.manifest["artifacts"].items()
              if a["format"] in formats and a.get("verification", {}).get("passed")
              and atomic.intact(pipeline.out / f, a.get("sha256"))}
    if not chosen:
        raise StageError(f"no verified, intact {'/'.join(formats)} artifacts in {pipeline.out}; run `export` first")
    from converters import golden

    n = min(pipeline.cfg.sample_size, len(pipeline.data.test_labels))  # golden outputs first: a failure writes nothing
    outputs = golden.compute({f: (pipeline.out / f, a) for f, a in chosen.items()}, pipeline.data.test_images[:n].numpy(),
                             lambda a: pipeline.source_for(mf.scheme_tag(a)))
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for stale in dest.iterdir():
            if stale.suffix.lstrip(".") in formats and stale.name not in chosen:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    except OSError as exc:
        raise atomic.describe_os_error(dest, exc) from exc
    for file in chosen:
        src = pipeline.out / file
        atomic.atomic_write(dest / file, lambda tmp, s=src: shutil.copytree(s, tmp) if s.is_dir() else shutil.copyfile(s, tmp),
                            size_hint=atomic.size_bytes(src))
    data = pipeline.data
    atomic.write_bytes(dest / "test_sample.u8", data.test_images[:n].contiguous().numpy().tobytes())
    atomic.write_json(dest / "test_sample.json", {
        "count": n, "shape": list(data.test_images.shape[1:]), "dtype": "uint8", "pixels": "test_sample.u8",
        "labels": data.test_labels[:n].tolist()})
    atomic.write_text(dest / "labels.txt", "\n".join(data.labels) + "\n")
    atomic.write_json(dest / "models.json", {"schema_version": 1, "run_id": pipeline.manifest.get("run_id"), "models": [
        {"file": f, "backend": a["backend"], "quant": a["quant"], "input": a["input"], "output": a["output"]}
        for f, a in chosen.items()]})
    golden.write(dest, outputs, pipeline.manifest.get("run_id"))
    say(f"bundle: {len(chosen)} models, labels, {n} test images and the host's outputs on them -> {dest}")
    return dest
