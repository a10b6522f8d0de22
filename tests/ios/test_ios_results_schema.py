"""The iOS results JSON fits the schema shared with Android; broken ones do not."""
import copy
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "benchmarks" / "schemas" / "device_results.schema.json"
WRITER = REPO / "ios_demo" / "ConvNetBench" / "ResultsWriter.swift"


def test_sample_validates_as_ios(benchmark, sample_results):
    assert benchmark.schema_errors(sample_results, SCHEMA) == []
    assert benchmark.ios_errors(sample_results, "platform=iOS,id=00008110-001A2B3C4D5E6F70") == []
    assert sample_results["platform"] == "ios"
    assert sample_results["memory_kind"] == "phys_footprint"
    units = {r["compute_units"] for r in sample_results["results"] if r["runtime"] == "coreml"}
    assert units == {"cpu", "cpu_gpu", "cpu_ne", "all"}
    assert any(r["status"] == "error" for r in sample_results["results"])


def _first_ok(doc):
    return next(r for r in doc["results"] if r["status"] == "ok")


@pytest.mark.parametrize("breakage", [
    lambda d: _first_ok(d)["metrics"].pop("p99_inference_latency(ms)"),
    lambda d: _first_ok(d)["metrics"].update({"accuracy": 1.5}),
    lambda d: _first_ok(d).pop("metrics"),
    lambda d: _first_ok(d).update(compute_units="gpu_only"),
    lambda d: d["results"][-1].pop("error"),
    lambda d: d["device"].pop("is_simulator"),
    lambda d: d.update(platform="android"),  # Android rows need PSS and native heap
    lambda d: d.update(schema_version=2),
], ids=["no-p99", "accuracy>1", "ok-without-metrics", "bad-units", "error-without-text",
        "no-is_simulator", "android-without-pss", "schema-v2"])
def test_broken_results_fail(benchmark, sample_results, breakage):
    broken = copy.deepcopy(sample_results)
    breakage(broken)
    assert benchmark.schema_errors(broken, SCHEMA)


@pytest.mark.parametrize("breakage", [
    lambda d: d.update(memory_kind="pss"),
    lambda d: d["results"][0].update(compute_units=None),
    lambda d: d["results"][-2].update(compute_units="cpu"),
], ids=["pss-on-ios", "coreml-without-units", "executorch-with-units"])
def test_ios_specific_checks(benchmark, sample_results, breakage):
    broken = copy.deepcopy(sample_results)
    breakage(broken)
    assert benchmark.ios_errors(broken, None)


def test_simulator_label_must_match_destination(benchmark, sample_results):
    assert benchmark.ios_errors(sample_results, "platform=iOS Simulator,name=iPhone 16")


def swift_json_keys():
    """JSON keys named in ResultsWriter.swift's CodingKeys (`case a, b` or `case x = "key"`)."""
    keys = set()
    for line in re.findall(r"^\s*case (.+)$", WRITER.read_text(), re.M):
        quoted = re.search(r'"([^"]+)"', line)
        keys |= {quoted.group(1)} if quoted else {k.strip() for k in line.split(",")}
    return keys


def test_swift_writer_names_every_required_schema_key():
    schema = json.loads(SCHEMA.read_text())
    required = set(schema["required"]) | set(schema["properties"]["device"]["required"])
    required |= set(schema["$defs"]["metrics"]["required"]) | {"warm_load_time(ms)", "memory_kind"}
    required |= set(schema["properties"]["results"]["items"]["required"]) | {"compute_units"}
    assert required - swift_json_keys() == set()
