"""The export stage: reuse, a failing backend, missing inputs, and the demo-app bundle."""

import json
import shutil

import pytest

from converters.coreml import CoreMLConverter
from core import qat, quantize
from core.io import sha256

pytestmark = pytest.mark.cpu_sensitive  # re-run under forced CPU capabilities (make test-cpus)


def test_all_six_artifacts_verified(exported):
    assert exported.export_ok
    artifacts = exported.manifest["artifacts"]
    assert sorted(artifacts) == sorted([
        "convnet_xnnpack_int8.pte", "convnet_xnnpack_fp32.pte", "convnet_tflite_int8.tflite",
        "convnet_tflite_fp32.tflite", "convnet_coreml_fp16.mlpackage", "convnet_coreml_int8.mlpackage",
        "convnet_coreml_pal4.mlpackage"])
    for file, a in artifacts.items():
        assert a["verification"]["passed"], file
        assert len(a["sha256"]) == 64 and a["bytes"] > 0
        assert a["input"]["mean"] == exported.data.mean
    assert (exported.out / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    report = (exported.out / "report.md").read_text()
    assert "convnet_xnnpack_int8.pte" in report and "Cross-backend agreement" in report


def test_second_export_reuses_everything(copy_of, capsys):
    pipeline = copy_of()
    before = {p.name: p.stat().st_mtime_ns for p in pipeline.out.glob("*.pte")}
    pipeline.train()
    pipeline.qat()
    assert pipeline.export()
    out = capsys.readouterr().out
    assert "train: reusing" in out and "qat: reusing int8" in out
    assert "export: executorch:fp32: reusing" in out and "export: executorch:int8: reusing" in out
    assert {p.name: p.stat().st_mtime_ns for p in pipeline.out.glob("*.pte")} == before
    # nothing changed, so nothing is run again: every file keeps the result it passed with
    assert out.count("passed earlier on these bytes") == len(pipeline.manifest["artifacts"])


def test_export_reverifies_what_changed_and_verify_reruns_everything(copy_of, capsys):
    pipeline = copy_of(min_agreement=0.97)  # other thresholds: every earlier result no longer applies
    assert pipeline.export()
    out = capsys.readouterr().out
    assert "passed earlier" not in out and out.count("[✓] verify:") == len(pipeline.manifest["artifacts"])
    pte = "convnet_xnnpack_int8.pte"
    pipeline.manifest["artifacts"][pte]["verification"]["basis"]["sha256"] = "0" * 64  # as if another file
    assert pipeline.export()
    out = capsys.readouterr().out
    assert f"[✓] verify: {pte}: accuracy" in out and f"{pte}: passed earlier" not in out
    assert out.count("passed earlier") == len(pipeline.manifest["artifacts"]) - 1
    assert pipeline.verify()
    assert "passed earlier" not in capsys.readouterr().out


def test_changed_setting_reexports_only_its_backend(copy_of, capsys):
    pipeline = copy_of(nbits=6, backends="coreml,executorch")
    assert pipeline.export()
    out = capsys.readouterr().out
    assert "executorch:int8: reusing" in out and "convnet_coreml_pal6.mlpackage" in out
    assert "convnet_coreml_pal6.mlpackage" in pipeline.manifest["artifacts"]
    assert "convnet_coreml_pal4.mlpackage" not in pipeline.manifest["artifacts"]


def test_failing_backend_is_reported_and_the_others_finish(copy_of, monkeypatch):
    pipeline = copy_of(force=True)
    pal4 = pipeline.out / "convnet_coreml_pal4.mlpackage"
    before = sorted(p.name for p in pal4.rglob("*"))

    def broken(self, source, out, options):
        raise RuntimeError("simulated converter crash")

    monkeypatch.setattr(CoreMLConverter, "export_baseline", broken)
    monkeypatch.setattr(CoreMLConverter, "export_scheme", broken)
    run_id = pipeline.manifest["run_id"]
    assert pipeline.export() is False
    backends = pipeline.manifest["backends"]
    for part in ("coreml:fp32", "coreml:int8"):
        assert backends[part]["status"] == "failed" and "simulated converter crash" in backends[part]["reason"]
    assert all(backends[f"{name}:{part}"]["status"] == "ok" for name in ("executorch", "tflite") for part in ("fp32", "int8"))
    # the earlier artifact is no longer listed, and is kept whole under stale/, not lost
    assert "convnet_coreml_pal4.mlpackage" not in pipeline.manifest["artifacts"] and not pal4.exists()
    kept = pipeline.out / "stale" / run_id / "convnet_coreml_pal4.mlpackage"
    assert sorted(p.name for p in kept.rglob("*")) == before
    assert "simulated converter crash" in (pipeline.out / "report.md").read_text()


def test_a_failing_w8a8_file_does_not_stop_the_palettized_one(copy_of, monkeypatch, capsys):
    """Core ML W8A8 fails: the palettized file is still made, verified and listed; no file in OUT is left outside
    the manifest (the earlier W8A8 file goes to stale/); the run ends with one summary line."""
    from converters import ConversionError
    from pipeline.commands import summarized

    pipeline = copy_of(force=True, backends="coreml")
    run_id = pipeline.manifest["run_id"]

    def w8a8_fails(self, source, out, options, how):
        raise ConversionError("convnet_coreml_int8.mlpackage: simulated: the file does not hold the int8 graph's numbers")

    monkeypatch.setattr(CoreMLConverter, "_scheme_file", w8a8_fails)
    assert summarized(pipeline, pipeline.export()) is False
    artifacts = pipeline.manifest["artifacts"]
    assert "convnet_coreml_pal4.mlpackage" in artifacts and "convnet_coreml_int8.mlpackage" not in artifacts
    assert "verification" in artifacts["convnet_coreml_pal4.mlpackage"]
    assert (pipeline.out / "stale" / run_id / "convnet_coreml_int8.mlpackage").is_dir()
    in_out = {p.name for p in pipeline.out.iterdir() if p.suffix in (".mlpackage", ".pte", ".tflite")}
    assert in_out == set(artifacts)
    backend = pipeline.manifest["backends"]["coreml:int8"]
    assert backend["status"] == "failed" and "simulated" in backend["reason"]
    lines = capsys.readouterr().out.splitlines()
    assert "[x] export: coreml:int8 FAILED: convnet_coreml_int8.mlpackage: simulated: the file does not hold the int8 " \
           "graph's numbers" in lines
    assert any(line.startswith("[✓] export: convnet_coreml_pal4.mlpackage") for line in lines)
    assert lines[-1].startswith("summary: ") and "of 2 file(s) verified" in lines[-1]
    assert lines[-1].endswith("export failed: coreml:int8 (see the [x] export lines above)")


def test_missing_or_corrupt_qat_result_is_an_error_and_keeps_artifacts(copy_of):
    pipeline = copy_of()
    pte = (pipeline.out / "convnet_xnnpack_int8.pte").read_bytes()
    program = quantize.folder(pipeline.out, "int8") / quantize.PROGRAM
    program.write_bytes(b"corrupt")
    with pytest.raises(qat.QuantError, match="program.pt2 .* missing or changed since `qat` wrote them; rerun `qat`"):
        pipeline.export()
    program.unlink()
    with pytest.raises(qat.QuantError, match="missing or changed"):
        pipeline.export()
    assert (pipeline.out / "convnet_xnnpack_int8.pte").read_bytes() == pte


def test_verify_fails_loudly_on_a_tampered_artifact(copy_of, conv2_off_by_many_steps, capsys):
    pipeline = copy_of()
    good = pipeline.out / "convnet_tflite_fp32.tflite"
    # the wrong model under the fp32 name: one far enough off that no CPU's rounding can make it agree
    shutil.copyfile(conv2_off_by_many_steps, good)
    entry = pipeline.manifest["artifacts"]["convnet_tflite_fp32.tflite"]
    assert pipeline.verify(["tflite"]) is False  # caught first by its sha256
    assert "convnet_tflite_fp32.tflite is changed since export (its sha256 differs)" in capsys.readouterr().out
    entry["sha256"] = sha256(good)  # as if an export had written the wrong model: the numbers must catch it
    assert pipeline.verify(["tflite"]) is False
    assert "FAILED: convnet_tflite_fp32.tflite" in capsys.readouterr().out


def test_bundle_for_android(exported, tmp_path):
    dest = exported.bundle("android", tmp_path / "assets")
    names = sorted(p.name for p in dest.iterdir())
    assert names == sorted(["convnet_xnnpack_int8.pte", "convnet_xnnpack_fp32.pte", "convnet_tflite_int8.tflite",
                            "convnet_tflite_fp32.tflite", "golden_outputs.json", "labels.txt", "models.json", "test_sample.json",
                            "test_sample.u8"])
    sample = json.loads((dest / "test_sample.json").read_text())
    assert sample["count"] == 20 and sample["shape"] == [1, 28, 28]
    assert (dest / "test_sample.u8").stat().st_size == 20 * 28 * 28
    assert sample["labels"] == exported.data.test_labels[:20].tolist()
    spec = {m["file"]: m for m in json.loads((dest / "models.json").read_text())["models"]}
    assert spec["convnet_tflite_int8.tflite"]["input"]["dtype"] == "int8"


def test_bundle_for_ios(exported, tmp_path):
    dest = exported.bundle("ios", tmp_path / "Resources")
    assert (dest / "convnet_coreml_pal4.mlpackage").is_dir() and (dest / "convnet_xnnpack_int8.pte").is_file()
    assert not list(dest.glob("*.tflite"))
