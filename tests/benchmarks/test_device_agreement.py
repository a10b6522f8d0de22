"""The host side of the device↔host check (benchmarks/device_agreement.py): synthetic device results that agree
with the golden outputs, that disagree by preprocessing, and that differ by one output step."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from benchmarks import device_agreement as da
from benchmarks import report

SAMPLE = Path(__file__).resolve().parents[1] / "android" / "data" / "sample_benchmark_results.json"
STEP = 0.0625


def _doc(agreements: dict) -> dict:
    """The sample Android results with host_agreement per model: {model: (top-1 agreement, max |Δlogit|)}."""
    doc = json.loads(SAMPLE.read_text())
    doc["run_id"] = "r"
    rows = []
    for model, (top1, diff) in agreements.items():
        row = copy.deepcopy(doc["results"][0])
        int8 = "int8" in model
        row.update(model=model, runtime="executorch" if model.endswith(".pte") else "litert",
                   quant="int8" if int8 else "fp32",
                   accelerator={"requested": "cpu (XNNPACK delegate)", "used": "cpu", "backends": ["XNNPACK"],
                                "source": "test"},
                   host_agreement={"available": True, "images": 100, "top1_agreement": top1, "max_abs_logit_diff": diff,
                                   "tolerance": STEP * (1 + 1e-6) if int8 else 0.012, "output_step": STEP if int8 else None,
                                   "host_method": "ai-edge-litert Interpreter", "worst_image": 3, "disagreeing_images": []})
        rows.append(row)
    doc["results"] = rows
    jsonschema.validate(doc, json.loads(report.DEVICE_SCHEMA.read_text()))
    return doc


def _devices(*docs) -> dict:
    return {"valid": [{"file": f"device/android/r{i}.json", "data": d} for i, d in enumerate(docs)], "invalid": []}


def _causes(doc) -> dict:
    return {a["row"]["model"]: (a["problems"], a["cause"]) for a in da.assess(doc)}


def test_files_that_agree_are_not_flagged():
    doc = _doc({"convnet_tflite_fp32.tflite": (1.0, 3e-6), "convnet_tflite_int8.tflite": (1.0, 0.0),
                "convnet_xnnpack_int8.pte": (1.0, 0.0)})
    assert all(problems == [] and cause is None for problems, cause in _causes(doc).values())
    text = "\n".join(da.section(_devices(doc), report.device_label))
    assert "FLAGGED" not in text and text.count("| agrees |") == 3
    assert "100.00% of 100" in text and "asked cpu (XNNPACK delegate), ran cpu; backends XNNPACK" in text
    assert da.console_lines(_devices(doc), report.device_label) == []


def test_a_preprocessing_difference_is_named_as_such():
    doc = _doc({"convnet_tflite_fp32.tflite": (0.91, 2.7), "convnet_tflite_int8.tflite": (0.9, 2.5),
                "convnet_xnnpack_int8.pte": (0.9, 2.5)})
    causes = _causes(doc)
    assert causes["convnet_tflite_int8.tflite"][1] == da.PREPROCESSING
    assert causes["convnet_xnnpack_int8.pte"][1] == da.PREPROCESSING  # no .pte fp32 here: the .tflite fp32 decides
    assert causes["convnet_tflite_fp32.tflite"][1] == da.PREPROCESSING_SELF
    assert causes["convnet_tflite_int8.tflite"][0] == ["top-1 agreement 90.00% < 100%",
                                                       "max |Δlogit| 2.5 > tolerance 0.0625"]
    text = "\n".join(da.section(_devices(doc), report.device_label))
    assert text.count("**FLAGGED**") == 3 and "Likely cause: preprocessing" in text
    lines = da.console_lines(_devices(doc), report.device_label)
    assert len(lines) == 3 and all(line.endswith("likely preprocessing") for line in lines)


def test_one_output_step_is_within_tolerance_unless_it_flips_an_answer():
    within = _doc({"convnet_tflite_fp32.tflite": (1.0, 1e-5), "convnet_tflite_int8.tflite": (1.0, STEP)})
    assert _causes(within)["convnet_tflite_int8.tflite"] == ([], None)
    flipped = _doc({"convnet_tflite_fp32.tflite": (1.0, 1e-5), "convnet_tflite_int8.tflite": (0.99, STEP)})
    problems, cause = _causes(flipped)["convnet_tflite_int8.tflite"]
    assert problems == ["top-1 agreement 99.00% < 100%"] and cause == da.NUMERICS
    two_steps = _doc({"convnet_tflite_fp32.tflite": (1.0, 1e-5), "convnet_tflite_int8.tflite": (1.0, 2 * STEP)})
    assert _causes(two_steps)["convnet_tflite_int8.tflite"] == (["max |Δlogit| 0.125 > tolerance 0.0625"], da.NUMERICS)


def test_without_an_fp32_file_the_cause_is_undetermined_and_missing_checks_are_shown():
    doc = _doc({"convnet_tflite_int8.tflite": (0.95, 0.3)})
    assert _causes(doc)["convnet_tflite_int8.tflite"][1] == da.UNDETERMINED
    doc["results"][0]["host_agreement"] = {"available": False, "reason": "no usable golden_outputs.json"}
    text = "\n".join(da.section(_devices(doc), report.device_label))
    assert "not checked: no usable golden_outputs.json" in text and "FLAGGED" not in text


def test_nan_on_the_device_is_flagged_but_a_classifier_without_logits_is_judged_on_top1():
    doc = _doc({"convnet_tflite_fp32.tflite": (1.0, None)})
    assert _causes(doc)["convnet_tflite_fp32.tflite"][0] == ["max |Δlogit| not finite (NaN or infinity on the device)"]
    doc["results"][0]["host_agreement"]["logits_compared"] = False
    assert _causes(doc)["convnet_tflite_fp32.tflite"] == ([], None)


@pytest.mark.parametrize("bad", [{"available": True}, {"available": False}])
def test_the_schema_refuses_an_incomplete_agreement(bad):
    doc = _doc({"convnet_tflite_int8.tflite": (1.0, 0.0)})
    doc["results"][0]["host_agreement"] = bad
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, json.loads(report.DEVICE_SCHEMA.read_text()))
