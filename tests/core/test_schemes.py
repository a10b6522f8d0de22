"""Schemes as settings: names, the support matrix, and refusals before anything runs."""

from pathlib import Path

import pytest

from converters import REGISTRY
from converters import support as schemes
from core.config import ConfigError, resolve
from core.schemes import Scheme
from pipeline import cli

README = Path(__file__).resolve().parents[2] / "docs" / "quantization.md"


def test_the_default_scheme_is_int8_and_named_in_full():
    s = Scheme()
    assert s.tag == "int8" and s.trainable and s.pt2e
    d = s.describe()
    assert d["summary"] == "int8 weights, symmetric, per output channel; int8 activations, static ranges"
    assert d["calibration"] == "histogram" and d["mode"] == "auto"


@pytest.mark.parametrize("scheme, tag", [
    (Scheme(granularity="per_tensor"), "w8pta8"),
    (Scheme(activations="dynamic"), "w8pcdyn"),
    (Scheme(activations="none"), "w8pcwo"),
    (Scheme(4, "per_block", activations="dynamic"), "w4b32dyn"),
    (Scheme(symmetry="asymmetric", activations="none"), "w8apcwo"),
    (Scheme(mode="ptq", calibration="percentile"), "int8-ptq-percentile"),
    (Scheme(mode="qat"), "int8-qat"),
])
def test_tags_tell_schemes_apart(scheme, tag):
    assert scheme.tag == tag


def test_the_readme_matrix_is_the_code_matrix():
    text = README.read_text()
    block = text.split("<!-- schemes:begin -->\n")[1].split("\n<!-- schemes:end -->")[0]
    assert block == schemes.matrix_markdown()


@pytest.mark.parametrize("scheme, runtime, reason", [
    (Scheme(symmetry="asymmetric", activations="dynamic"), "executorch", "symmetric weights only"),
    (Scheme(symmetry="asymmetric", activations="dynamic"), "tflite", "symmetric weights only"),
    (Scheme(activations="dynamic"), "coreml", "no dynamic activation quantization"),
    (Scheme(activations="none"), "executorch", "no weight-only path"),
    (Scheme(4, "per_channel"), "executorch", "4-bit weights only with dynamic int8 activations"),
    (Scheme(4, "per_block", activations="none"), "tflite", "blocks only with dynamic activations"),
    (Scheme(4, "per_block", block_size=48, activations="dynamic"), "tflite", "blocks are (32, 64, 128, 256)"),
    (Scheme(8, "per_block", activations="dynamic"), "tflite", "blockwise weights at 4 bits only"),
])
def test_unsupported_combinations_name_the_runtime_and_the_reason(scheme, runtime, reason):
    support = schemes.support(scheme, runtime)
    assert not support.ok and reason in support.reason
    problems = schemes.check(scheme, [runtime])
    assert problems and REGISTRY[runtime].display_name in problems[0] and reason in problems[0]


@pytest.mark.parametrize("scheme", [Scheme(), Scheme(granularity="per_tensor"), Scheme(activations="dynamic"),
                                    Scheme(4, "per_block", activations="dynamic"), Scheme(activations="none"),
                                    Scheme(4, "per_channel", activations="none")])
def test_every_exported_scheme_has_a_runtime(scheme):
    assert any(schemes.support(scheme, r).ok for r in REGISTRY)


def test_invalid_values_and_post_training_qat_are_refused():
    assert "choose one of" in Scheme(weight_bits=3).problems()[0]
    assert "post-training only" in Scheme(activations="none", mode="qat").problems()[0]
    assert "per-block weights are offered with --activations dynamic or none" in Scheme(granularity="per_block").problems()[0]


@pytest.mark.parametrize("args, message", [
    (["--activations", "dynamic"], "Core ML cannot export int8 weights, symmetric, per output channel; int8 activations, dynamic ranges"),
    (["--weight-symmetry", "asymmetric"], "asymmetric weights with static int8 activations are not offered"),
    (["--weight-symmetry", "asymmetric", "--activations", "dynamic"], "ExecuTorch (XNNPACK) cannot export"),
    (["--activations", "none", "--backends", "executorch"], "no weight-only path"),
    (["--weight-bits", "3"], "--weight-bits 3: choose one of 8, 4"),
    (["--activations", "none", "--quant-mode", "qat", "--backends", "tflite"], "post-training only"),
])
def test_the_cli_refuses_before_any_data_or_training(tmp_path, capsys, monkeypatch, args, message):
    def no_data(*a, **k):
        raise AssertionError("data was loaded before the scheme was checked")

    monkeypatch.setattr("core.data.load", no_data)
    code = cli.main(["train", "--out", str(tmp_path), *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


def test_schemes_command_prints_the_matrix_and_a_verdict(capsys):
    assert cli.main(["schemes", "--weight-granularity", "per_tensor"]) == 0
    out = capsys.readouterr().out
    assert schemes.matrix_markdown() in out and "tag w8pta8" in out
    assert cli.main(["schemes", "--activations", "dynamic"]) == 2
    assert "drop coreml from --backends" in capsys.readouterr().out


def test_backends_none_is_accepted_for_pytorch_only_schemes():
    cfg = resolve({"backends": "none", "weight_symmetry": "asymmetric", "activations": "dynamic"})
    assert schemes.check(Scheme.from_config(cfg), []) == []
    with pytest.raises(ConfigError):
        resolve({"backends": "onnx"})
