"""bench and report on a tiny model: they run, write schema-valid JSON, a report and plots, and rebuild from JSON."""

import copy
import json
import platform
import shutil
from pathlib import Path

import jsonschema
import pytest

from benchmarks import host, measure, plots
from pipeline.cli import main

DATA = Path(__file__).resolve().parent / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def results_of(out: Path) -> dict:
    return json.loads((out / "bench" / "results.json").read_text())


@pytest.fixture()
def report_copy(benched, tmp_path) -> Path:
    """A fresh OUT holding only bench/results.json: whatever rebuild writes must come from it."""
    out = tmp_path / "out"
    (out / "bench").mkdir(parents=True)
    shutil.copy(benched / "bench" / "results.json", out / "bench" / "results.json")
    return out


@pytest.fixture()
def nothing_runs(monkeypatch):
    """Make any attempt to measure fail loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError("rebuild_reports must not run a model")

    monkeypatch.setattr(host, "run_child", refuse)
    monkeypatch.setattr(host, "training_throughput", refuse)
    monkeypatch.setattr(host.Workspace, "__init__", refuse)


# ---- bench ------------------------------------------------------------------------------------
def test_results_match_the_schema_and_the_manifest(benched):
    results = results_of(benched)
    jsonschema.validate(results, json.loads(host.SCHEMA.read_text()))
    assert results["schema_version"] == 1
    assert results["host"]["cpu_model"] and results["host"]["logical_cores"] >= 1
    assert results["versions"]["torch"] and results["versions"]["executorch"]
    manifest = json.loads((benched / "manifest.json").read_text())
    names = [r["name"] for r in results["rows"]]
    assert names[:2] == ["pytorch_fp32", "pytorch_int8"]
    assert set(names[2:]) == set(manifest["artifacts"])
    assert results["model"]["macs"] == manifest["model"]["macs"] > 0


def test_every_runnable_model_was_measured_against_fp32(benched):
    results = results_of(benched)
    threads = results["settings"]["threads"]
    rows = {r["name"]: r for r in results["rows"]}
    for lat in rows["pytorch_fp32"]["latency"]:
        assert lat["vs_fp32"]["p50"] == pytest.approx(1.0)
    for name, row in rows.items():
        assert row["error"] is None, f"{name}: {row['error']}"
        assert row["size_bytes"] > 0 and 0 <= row["accuracy"] <= 1
        if row["backend"] == "coreml" and platform.system() != "Darwin":
            assert row["latency"] == [] and "macOS" in row["latency_note"] and row["memory"] is None
            continue
        assert [lat["threads"] for lat in row["latency"]] == threads
        for lat in row["latency"]:
            assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["max_ms"]
            assert lat["vs_fp32"]["p50"] > 0 and lat["gmac_per_s"] > 0
        assert row["load_ms"] > 0 and row["memory"]["peak_mb"] >= row["memory"]["baseline_mb"] > 0


def test_batch_throughput_only_where_the_export_takes_a_batch(benched):
    rows = {r["name"]: r for r in results_of(benched)["rows"]}
    assert rows["pytorch_fp32"]["throughput"]["batch"] == 32
    assert rows["pytorch_fp32"]["throughput"]["vs_fp32"] == pytest.approx(1.0)
    static = [r for r in rows.values() if r["backend"] in ("executorch", "tflite")]
    assert static, "the tiny export should hold .pte and .tflite files"
    for row in static:  # the tiny export is static batch 1
        assert row["throughput"] is None and "static batch-1" in row["throughput_note"]


def test_training_throughput_and_stage_times(benched):
    results = results_of(benched)
    for stage in ("fp32", "qat"):
        entry = results["training"][stage]
        assert entry["error"] is None
        assert entry["bare_images_per_s"] > 0 and entry["pipeline_loop_images_per_s"] > 0
        assert entry["pipeline_images_per_s"] > 0  # recorded by the pipeline stage
        assert entry["pipeline_vs_bare"] == pytest.approx(entry["pipeline_loop_images_per_s"] / entry["bare_images_per_s"])
    stages = {s["stage"] for s in results["stages"]}
    assert {"train", "quantize: int8", "export: executorch:int8", "export: tflite:int8"} <= stages


def test_report_and_plots_are_written(benched):
    report = (benched / "bench" / "report.md").read_text()
    for row in results_of(benched)["rows"]:
        assert f"`{row['name']}`" in report
    assert "| model | runtime | quant | size (MB) |" in report
    for png in (plots.ACCURACY_PLOT, plots.LATENCY_PLOT):
        assert (benched / "bench" / png).read_bytes().startswith(PNG_MAGIC)
    assert not (benched / "bench" / plots.DEVICE_PLOT).exists()  # no device results in this OUT


# ---- report -----------------------------------------------------------------------------------
def test_rebuild_regenerates_everything_from_json_only(report_copy, nothing_runs, config_for):
    bench_dir = report_copy / "bench"
    assert host.rebuild_reports(config_for(report_copy)) is True
    for name in ("report.md", plots.ACCURACY_PLOT, plots.LATENCY_PLOT):
        assert (bench_dir / name).exists(), name
    assert "## Device results" in (bench_dir / "report.md").read_text()


def test_device_results_are_merged(report_copy, nothing_runs, config_for):
    device_dir = report_copy / "device" / "android"
    device_dir.mkdir(parents=True)
    shutil.copy(DATA / "device_android.json", device_dir / "testphone.json")
    (device_dir / "broken.json").write_text('{"schema_version": 1, "platform": "android"}')
    host.rebuild_reports(config_for(report_copy))
    report = (report_copy / "bench" / "report.md").read_text()
    assert "Testphone 1 (Fake SoC X, 4 threads)" in report
    assert "| 0.290 |" in report  # the device p50 of convnet_tflite_int8.tflite
    assert "made-up load failure" in report
    assert "skipped `device/android/broken.json`" in report
    assert (report_copy / "bench" / plots.DEVICE_PLOT).read_bytes().startswith(PNG_MAGIC)


def test_a_phone_that_disagrees_by_preprocessing_is_flagged_as_such(report_copy, nothing_runs, config_for, capsys):
    from tests.benchmarks.test_device_agreement import _doc

    device_dir = report_copy / "device" / "android"
    device_dir.mkdir(parents=True)
    doc = _doc({"convnet_tflite_fp32.tflite": (0.93, 3.1), "convnet_tflite_int8.tflite": (0.92, 3.3)})
    (device_dir / "benchmark_results.json").write_text(json.dumps(doc))
    host.rebuild_reports(config_for(report_copy))
    report = (report_copy / "bench" / "report.md").read_text()
    assert "## Device ↔ host agreement" in report and report.count("**FLAGGED**") == 2
    assert report.count("Likely cause: preprocessing") == 2
    assert "asked cpu (XNNPACK delegate), ran cpu" in report
    console = capsys.readouterr().out
    assert console.count("likely preprocessing") == 2 and "convnet_tflite_int8.tflite: top-1 agreement 92.00%" in console


def test_cli_report_and_its_errors(report_copy, tmp_path, config_for):
    assert main(["report", "--out", str(report_copy)]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--out", str(empty)]) == 2
    with pytest.raises(host.BenchError, match="run `bench` first"):
        host.rebuild_reports(config_for(empty))


def test_bench_without_artifacts_says_to_export(tmp_path, config_for):
    with pytest.raises(host.BenchError, match="run `export` first"):
        host.bench(config_for(tmp_path))


@pytest.mark.parametrize("break_it, where", [
    (lambda r: r.update(schema_version=2), "schema_version"),
    (lambda r: r["host"].pop("cpu_model"), "host"),
    (lambda r: r["rows"][0]["latency"][0].pop("p90_ms"), "rows/0/latency/0"),
    (lambda r: r["rows"][-1].update(latency=[], latency_note=None), "rows/"),
])
def test_schema_rejects_broken_results(benched, break_it, where):
    results = copy.deepcopy(results_of(benched))
    break_it(results)
    with pytest.raises(host.BenchError, match=where):
        host.validate(results)


def test_corrupt_results_json_is_a_clear_error(report_copy, config_for):
    (report_copy / "bench" / "results.json").write_text("{not json")
    with pytest.raises(host.BenchError, match="not valid JSON"):
        host.rebuild_reports(config_for(report_copy))


# ---- pieces ------------------------------------------------------------------------------------
def test_percentiles_and_timing_summary():
    values = sorted(float(v) for v in range(1, 11))
    assert measure.percentile(values, 50) == pytest.approx(5.5)
    assert measure.percentile(values, 90) == pytest.approx(9.1)
    calls = []
    summary = measure.time_batch1(lambda x: calls.append(x), list(range(4)), warmup=3, iterations=7)
    assert len(calls) == 10 and summary["iterations"] == 7
    assert summary["min_ms"] <= summary["p50_ms"] <= summary["p90_ms"] <= summary["max_ms"]


def test_batch_support_follows_the_manifest():
    pte = {"backend": "executorch"}
    dynamic = {"input": {"shape": [64, 1, 28, 28], "dynamic_batch": True}}
    small = {"input": {"shape": [8, 1, 28, 28], "dynamic_batch": True}}
    static = {"input": {"shape": [1, 1, 28, 28], "dynamic_batch": False}}
    assert host.batch_support(pte, dynamic) == (True, None)
    assert host.batch_support(pte, small)[0] is False and "up to 8" in host.batch_support(pte, small)[1]
    assert "--dynamic-batch" in host.batch_support(pte, static)[1]
    assert host.batch_support({"backend": "pytorch"}, None) == (True, None)
