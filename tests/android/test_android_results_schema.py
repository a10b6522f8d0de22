"""benchmark_results.json against benchmarks/schemas/device_results.schema.json: the
sample the app's format is modelled on validates, and broken copies do not."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "benchmarks" / "schemas" / "device_results.schema.json"
SAMPLE = Path(__file__).resolve().parent / "data" / "sample_benchmark_results.json"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def messages(validator, doc) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


def test_sample_validates(validator, sample_results):
    assert messages(validator, sample_results) == []
    # ExecuTorch's benchmark metric names are kept as a subset
    m = sample_results["results"][0]["metrics"]
    for key in ("model_load_time(ms)", "avg_inference_latency(ms)", "trimmean_inference_latency(ms)",
                "ram_pss_usage(mb)"):
        assert key in m


@pytest.mark.parametrize("field", ["ram_pss_usage(mb)", "native_heap(mb)", "p99_inference_latency(ms)",
                                   "accuracy"])
def test_missing_metric_fails(validator, sample_results, field):
    del sample_results["results"][0]["metrics"][field]
    assert f"'{field}' is a required property" in messages(validator, sample_results)


def test_pss_and_native_heap_are_android_only(validator, sample_results):
    doc = copy.deepcopy(sample_results)
    for r in doc["results"]:
        r.get("metrics", {}).pop("ram_pss_usage(mb)", None)
        r.get("metrics", {}).pop("native_heap(mb)", None)
    assert messages(validator, doc)  # android: required
    doc["platform"] = "ios"
    assert messages(validator, doc) == []


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["results"][3].pop("error"), "'error' is a required property"),
    (lambda d: d["results"][0].pop("metrics"), "'metrics' is a required property"),
    (lambda d: d["device"].__setitem__("cores", 0), "0 is less than the minimum of 1"),
    (lambda d: d["device"].__setitem__("soc", ""), "should be non-empty"),
    (lambda d: d["results"][0]["metrics"].__setitem__("accuracy", 1.5), "1.5 is greater than the maximum of 1"),
    (lambda d: d["results"][0].__setitem__("runtime", "tflite"), "'tflite' is not one of"),
    (lambda d: d.__setitem__("schema_version", 2), "1 was expected"),
])
def test_broken_documents_fail(validator, sample_results, mutate, expected):
    mutate(sample_results)
    found = messages(validator, sample_results)
    assert any(expected in m for m in found), found


def test_script_validation_matches(bench, sample_results):
    assert bench.schema_errors(sample_results) == []
    del sample_results["results"][1]["metrics"]["native_heap(mb)"]
    assert bench.schema_errors(sample_results) == [
        "results/1/metrics: 'native_heap(mb)' is a required property"]


def test_markdown_report_from_sample(bench, sample_results):
    sample_results["run_context"] = {"before": {"thermal_status_name": "none", "cpufreq_khz": {"cpu0": 300000}},
                                     "after": {"thermal_status_name": "moderate", "battery_temp_c": 38.5}}
    report = bench.markdown_report([sample_results])
    assert "Google Pixel 7, SoC Google Tensor G2, arm64-v8a, Android 14 (API 34), 8 cores, 7672 MB RAM" in report
    assert "Before: none, cpufreq 300–300 MHz. After: moderate, battery 38.5 °C." in report
    assert "| convnet_xnnpack_fp32.pte | executorch | fp32 | 14.1 | 2.118 | 0.702 |" in report
    assert "| convnet_xnnpack_int8.pte | executorch | int8 | error: ExecutorchRuntimeException" in report


def test_pipeline_report_merges_android_results(bench, sample_results, tmp_path):
    """What benchmark.py writes to OUT/device/android/ is what the pipeline report reads."""
    from benchmarks.report import device_section, load_device_results

    out = tmp_path / "artifacts"
    folder = out / "device" / "android"
    folder.mkdir(parents=True)
    sample_results["run_context"] = {"serial": "X", "repeat": 1, "of": 1}
    (folder / "benchmark_results.json").write_text(json.dumps(sample_results))
    (folder / "report.md").write_text(bench.markdown_report([sample_results]))  # not JSON: must be ignored
    broken = copy.deepcopy(sample_results)
    del broken["results"][0]["metrics"]["ram_pss_usage(mb)"]
    (folder / "benchmark_results.json.invalid").write_text(json.dumps(broken))  # kept aside: ignored
    (folder / "benchmark_results_run2.json").write_text(json.dumps(broken))

    devices = load_device_results(out)
    assert [e["file"] for e in devices["valid"]] == ["device/android/benchmark_results.json"]
    assert [e["file"] for e in devices["invalid"]] == ["device/android/benchmark_results_run2.json"]
    assert "ram_pss_usage(mb)" in devices["invalid"][0]["error"]

    text = "\n".join(device_section({"rows": []}, devices))
    for r in sample_results["results"]:
        assert f"`{r['model']}`" in text
    assert "| android | Pixel 7 (Google Tensor G2, 4 threads) | `convnet_tflite_int8.tflite` | litert |" in text
    assert "error: ExecutorchRuntimeException" in text
    assert "skipped `device/android/benchmark_results_run2.json`" in text
