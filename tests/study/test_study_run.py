"""The whole study: one folder with report, schema-checked results and plots; bad input stops it at once."""

import json
import math
import shutil

import pytest

from core.schemes import Scheme
from pipeline.cli import main
from study import StudyError
from study.context import check_scheme, parse_bits, parse_keep_float, parse_sections
from study.results import SCHEMA, clean, problems


def test_study_writes_every_section(studied):
    cfg, out, results, passed = studied
    assert passed, {k: v["error"] for k, v in results["sections"].items()}
    assert not problems(results)
    assert all(s["status"] == "done" for s in results["sections"].values())
    report = (out / "study" / "report.md").read_text()
    for i, title in enumerate(["Per-layer quantization error", "Sensitivity", "Automatic mixed precision",
                               "Bit-width sweep", "Pruning against quantization", "Weight-only"], 1):
        assert f"## {i}. {title}" in report
    for png in ("layer_error.png", "sensitivity.png", "mixed_precision.png", "sweep.png", "pruning.png",
                "weights_activations.png"):
        assert (out / "study" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png})" in report
    assert results["dataset"] == {"name": "mnist-5k", "n_train": 1024, "n_test": 300, "source": results["dataset"]["source"]}
    assert not list(out.glob(".tmp.*"))  # built under a temporary name, then renamed into place


def test_schema_rejects_a_wrong_document(studied):
    broken = json.loads(json.dumps(studied[2]))
    broken["accuracy"]["fp32"] = 1.5
    broken["sections"]["sweep"]["status"] = "maybe"
    del broken["sections"]["wa"]
    found = " ".join(problems(broken))
    assert "1.5" in found and "maybe" in found and "'wa' is a required property" in found
    assert SCHEMA.is_file()


def test_a_file_of_any_registered_backend_fits_the_schema():
    """The schema names no backends: one that `converters.register` added (one registry line) writes valid results."""
    import jsonschema

    defs = json.loads(SCHEMA.read_text())["$defs"]
    validator = jsonschema.Draft202012Validator({"$defs": defs, "$ref": "#/$defs/file"})
    row = {"file": "m_fake_int8.fake", "backend": "fake", "quant": "int8", "bytes": 10, "zip_bytes": 9,
           "accuracy": 0.9, "how": "runtime", "verification": {"passed": True, "failures": []}}
    assert list(validator.iter_errors(row)) == []
    assert [e.message for e in validator.iter_errors({**row, "backend": ""})]  # a name it must have


def test_clean_makes_json_values():
    assert clean({"a": math.inf, "b": [float("nan"), 1.0], "c": (1, 2)}) == {"a": None, "b": [None, 1.0], "c": [1, 2]}


@pytest.mark.parametrize("text,expected", [("all", 6), ("error,wa", 2), ("1,3", 2), ("pruning", 1)])
def test_sections_parse(text, expected):
    assert len(parse_sections(text)) == expected


def test_bad_settings_are_named():
    with pytest.raises(StudyError, match="unknown section 'speed'"):
        parse_sections("error,speed")
    with pytest.raises(StudyError, match="auto:PP"):
        parse_keep_float("auto:lots")
    with pytest.raises(StudyError, match="--sweep-bits '8,5'"):
        parse_bits("8,5")
    assert parse_bits("1,8,4") == (8, 4, 1)
    with pytest.raises(StudyError, match="static int8 schemes"):  # nothing to leave float, no pairs to read
        check_scheme(Scheme(activations="dynamic"))
    check_scheme(Scheme(granularity="per_tensor"))
    assert parse_keep_float("auto:0.25").auto_pp == 0.25
    assert parse_keep_float("conv1, fc2").names == ("conv1", "fc2")
    assert parse_keep_float("none").names == () and parse_keep_float("none").auto_pp is None


def test_study_without_qat_is_exit_2(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "empty"), "--dataset", "mnist-5k"]) == 2
    assert "run `mobile-pipeline train` and `qat` first" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "study").exists()


def test_unknown_layer_is_exit_2_and_keeps_the_previous_study(exported, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(exported.out, out, ignore=shutil.ignore_patterns("*.mlpackage", "*.pte", "*.tflite"))
    (out / "study").mkdir()
    (out / "study" / "report.md").write_text("an earlier study")
    assert main(["study", "--out", str(out), "--keep-float", "conv1,fc9"]) == 2
    err = capsys.readouterr().err
    assert "['fc9'] are not conv/linear layers of convnet" in err and "conv1, conv2, fc1, fc2" in err
    assert (out / "study" / "report.md").read_text() == "an earlier study"
    assert main(["study", "--out", str(out), "--sparsity", "1.5"]) == 2
    assert "--sparsity is a fraction in [0, 1)" in capsys.readouterr().err


def test_changed_quantized_program_is_exit_2(exported, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(exported.out, out, ignore=shutil.ignore_patterns("*.mlpackage", "*.pte", "*.tflite"))
    (out / "quantized" / "int8" / "unfolded.pt2").write_bytes(b"not a program")
    assert main(["study", "--out", str(out)]) == 2
    assert "unfolded.pt2 in" in capsys.readouterr().err and not (out / "study").exists()
