"""benchmark.py on canned `xcodebuild test` output (no Xcode needed)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOG = Path(__file__).resolve().parent / "data" / "xcodebuild_device_test.log"
SCRIPT = REPO / "ios_demo" / "benchmark.py"
WRITER = REPO / "ios_demo" / "ConvNetBench" / "ResultsWriter.swift"
DEVICE = "platform=iOS,id=00008110-001A2B3C4D5E6F70"


def test_results_json_comes_back_from_the_log(benchmark, sample_results):
    assert benchmark.extract_results_json(LOG.read_text()) == sample_results


def test_round_trip_and_last_block_wins(benchmark):
    first = benchmark.encode_for_log(b'{"run": 1}')
    second = benchmark.encode_for_log(json.dumps({"run": 2, "pad": "x" * 3000}).encode())
    assert len(second) > 5  # several chunks
    text = "\n".join(["noise"] + first + ["more noise"] + second)
    assert benchmark.extract_results_json(text)["run"] == 2


def test_log_without_results_gives_none(benchmark):
    assert benchmark.extract_results_json("** TEST SUCCEEDED **\n") is None


def test_lost_or_cut_chunk_is_an_error_not_a_wrong_answer(benchmark):
    chunk_re = re.compile(r"CONVNETBENCH_JSON_CHUNK 2/\d+ ")
    log = LOG.read_text().splitlines()
    without_two = "\n".join(line for line in log if not chunk_re.search(line))
    with pytest.raises(benchmark.BenchmarkError, match="missing chunk"):
        benchmark.extract_results_json(without_two)
    cut = "\n".join(line[:-40] if chunk_re.search(line) else line for line in log)
    with pytest.raises(benchmark.BenchmarkError):
        benchmark.extract_results_json(cut)


def test_xctest_metrics_are_parsed(benchmark):
    metrics = benchmark.parse_xctest_metrics(LOG.read_text())
    assert len(metrics) == 6
    clock = metrics[0]
    assert clock["test"] == "ConvNetBenchTests.MeasureTests.testMeasureCoreMLInference"
    assert (clock["metric"], clock["unit"]) == ("Clock Monotonic Time", "s")
    assert clock["average"] == pytest.approx(0.036)
    assert clock["relative_std_percent"] == pytest.approx(4.108)
    assert clock["values"][:2] == [0.037911, 0.035102]
    assert {m["metric"] for m in metrics} == {"Clock Monotonic Time", "Memory Physical", "Memory Peak Physical"}


def test_summary_and_destination(benchmark):
    assert benchmark.parse_test_summary(LOG.read_text()) == {"executed": 10, "failures": 0, "verdict": "succeeded"}
    assert benchmark.is_simulator_destination("platform=iOS Simulator,name=iPhone 16")
    assert not benchmark.is_simulator_destination(DEVICE)
    cmd = benchmark.xcodebuild_command(Path("P.xcodeproj"), DEVICE, Path("r.xcresult"), "TEAM1")
    assert cmd[:2] == ["xcodebuild", "test"] and "-destination" in cmd and "DEVELOPMENT_TEAM=TEAM1" in cmd


def test_swift_and_python_agree_on_the_markers(benchmark):
    swift = WRITER.read_text()
    for name, value in (("beginMarker", benchmark.MARK_BEGIN), ("chunkMarker", benchmark.MARK_CHUNK),
                        ("endMarker", benchmark.MARK_END)):
        assert f'static let {name} = "{value}"' in swift
    assert f"static let chunkLength = {benchmark.CHUNK_LENGTH}" in swift


def test_from_log_writes_results_and_report(benchmark, tmp_path, capsys):
    assert benchmark.main(["--from-log", str(LOG), "--destination", DEVICE, "--out", str(tmp_path)]) == 0
    out = tmp_path / "device" / "ios"
    doc = json.loads((out / "benchmark_results.json").read_text())
    assert benchmark.schema_errors(doc) == []
    assert len(doc["xctest_metrics"]) == 6
    report = (out / "report.md").read_text()
    assert "convnet_xnnpack_int8.pte" in report and "error: convnet_xnnpack_fp32.pte" in report
    assert "| cpu_ne |" in report
    assert "convnet_coreml_pal4.mlpackage" in capsys.readouterr().out


def test_simulator_run_labelled_as_device_is_rejected(benchmark, tmp_path):
    rc = benchmark.main(["--from-log", str(LOG), "--destination", "platform=iOS Simulator,name=iPhone 16",
                         "--out", str(tmp_path)])
    assert rc == 1
    assert (tmp_path / "device" / "ios" / "last-failed-run" / "benchmark_results.json.invalid").exists()
    assert not (tmp_path / "device" / "ios" / "benchmark_results.json").exists()


def test_metrics_only_log_is_reported_but_fails(benchmark, tmp_path):
    log = tmp_path / "metrics_only.log"
    log.write_text("\n".join(l for l in LOG.read_text().splitlines() if "CONVNETBENCH_JSON" not in l))
    assert benchmark.main(["--from-log", str(log), "--out", str(tmp_path)]) == 1
    failed = tmp_path / "device" / "ios" / "last-failed-run"
    assert "XCTest metrics" in (failed / "report.md").read_text()
    assert len(json.loads((failed / "xctest_metrics.json").read_text())) == 6
    assert (failed / "xcodebuild.log").read_text() == log.read_text()


def test_refuses_clearly_without_xcodebuild(benchmark, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark.shutil, "which", lambda name: None)
    assert benchmark.main(["--destination", DEVICE, "--out", str(tmp_path)]) == 2
    assert "xcodebuild not found" in capsys.readouterr().err


def test_help_runs_on_linux():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--destination" in done.stdout


def test_schema_breaking_json_is_kept_aside(benchmark, tmp_path, sample_results):
    del sample_results["device"]
    log = tmp_path / "bad.log"
    log.write_text("\n".join(benchmark.encode_for_log(json.dumps(sample_results).encode())))
    assert benchmark.main(["--from-log", str(log), "--out", str(tmp_path)]) == 1
    assert (tmp_path / "device" / "ios" / "last-failed-run" / "benchmark_results.json.invalid").exists()
    assert not (tmp_path / "device" / "ios" / "benchmark_results.json").exists()
    # nothing the shared report reads (OUT/device/*/*.json) is left by a failed run
    assert not list((tmp_path / "device").glob("*/*.json"))
