"""Bad input through the real command line: exit status 2, a message that says what to do, nothing lost."""

import json
import subprocess
import sys

import pytest

from pipeline import cli
from core.config import ConfigError, load_config_file, resolve

TINY = ["--dataset", "mnist-5k", "--limit-train", "256", "--limit-test", "100", "--epochs", "1"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "svhn"], "unknown dataset 'svhn'"),
    (["--model", "resnet9"], "unknown model 'resnet9'"),
    (["--dataset", "imagefolder:/no/such/data"], "needs /no/such/data/train"),
    (["--epochs", "-1"], "--epochs must be >= 0"),
    (["--backends", "executorch,onnx"], "unknown backend(s) ['onnx']"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, args, message):
    result = run_cli("train", *TINY, "--out", str(tmp_path), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_bad_input_destroys_no_checkpoint(exported):
    ckpt = exported.out / "checkpoints" / "fp32.pt"
    before = ckpt.read_bytes()
    for args in (["--epochs", "-1"], ["--dataset", "svhn"], ["--model", "resnet9"]):
        assert run_cli("train", *TINY, "--out", str(exported.out), *args).returncode == 2
    assert ckpt.read_bytes() == before


def test_parity_settings_are_range_checked():
    from core.config import RunConfig

    for flag in ("max_parity_steps", "max_parity_steps_float", "parity_images"):
        with pytest.raises(ConfigError, match=f"--{flag.replace('_', '-')} must be >= 0"):
            RunConfig(**{flag: -1}).validate()


def test_parity_without_artifacts_says_to_export_first(make_config, tmp_path):
    from pipeline import parity
    from pipeline.stages import Pipeline, StageError

    with pytest.raises(StageError, match="run `export` first"):
        parity.run(Pipeline(make_config(tmp_path)))


def test_parity_refuses_a_scheme_it_cannot_compare(exported):
    manifest = (exported.out / "manifest.json").read_bytes()
    result = run_cli("parity", *TINY, "--out", str(exported.out), "--activations", "dynamic",
                     "--backends", "executorch,tflite")
    assert result.returncode == 2, result.stderr
    assert "parity: scheme w8pcdyn" in result.stderr and "quantized at run time" in result.stderr
    assert (exported.out / "manifest.json").read_bytes() == manifest


def test_parity_compares_only_static_int8_schemes_both_runtimes_export():
    from core.schemes import Scheme
    from pipeline.parity import comparable

    assert comparable(Scheme()) is None and comparable(Scheme(granularity="per_tensor")) is None
    assert "no executorch and no tflite file" in comparable(Scheme(weight_bits=4))
    assert "its activations are float" in comparable(Scheme(activations="none"))


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("train", *TINY, "--out", str(blocker / "out"))
    assert result.returncode == 2 and "not writable" in result.stderr


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in cli.COMMANDS:
        assert command in result.stdout
    assert "--qat-epochs" in run_cli("qat", "--help").stdout


def help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    return capsys.readouterr().out


def test_each_command_help_shows_only_the_groups_it_uses(capsys):
    train = help_of("train", capsys)
    assert "--epochs" in train and "--weight-bits" in train
    assert "--sparsity" not in train and "--bench-iterations" not in train and "--min-agreement" not in train
    assert "quantization study:" not in train and "host benchmark:" not in train
    schemes = help_of("schemes", capsys)
    assert "--weight-bits" in schemes and "--epochs" not in schemes and "--out" not in schemes
    assert "--sparsity" in help_of("study", capsys) and "--bench-iterations" in help_of("bench", capsys)
    # a setting of another command is still accepted (one --config serves every command) and does not break parsing
    args = cli.build_parser().parse_args(["train", "--sparsity", "0.5", "--epochs", "2"])
    assert cli.config_from_args(args).sparsity == 0.5


def test_every_bad_input_error_is_one_class_the_cli_catches(tmp_path, monkeypatch, capsys):
    from benchmarks.host import BenchError
    from converters import ConversionError
    from core.data import DataError
    from core.errors import BadInput
    from core.io import OutputDirError
    from core.manifest import ManifestError
    from core.models import ModelError
    from core.qat import QuantError
    from core.schemes import SchemeError
    from core.train import CheckpointError
    from pipeline.state import StageError
    from study import StudyError

    for error in (ConfigError, DataError, ModelError, CheckpointError, QuantError, OutputDirError, ManifestError,
                  StageError, BenchError, SchemeError, StudyError, ConversionError):
        assert issubclass(error, BadInput), error

    class NewProblem(BadInput):
        pass

    def refuse(cfg, args):
        raise NewProblem("OUT lacks the thing; run `thing` first")

    monkeypatch.setitem(cli.COMMANDS, "report", cli.Command("rebuild the reports", refuse, ("run",)))
    assert cli.main(["report", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: OUT lacks the thing; run `thing` first" in err and "Traceback" not in err and "full output" not in err


def test_config_file_then_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: mnist-5k\nepochs: 7\nqat-lr: 0.01\n")
    args = cli.build_parser().parse_args(["train", "--config", str(config), "--epochs", "2"])
    cfg = cli.config_from_args(args)
    assert (cfg.dataset, cfg.epochs, cfg.qat_lr, cfg.model) == ("mnist-5k", 2, 0.01, "convnet")


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown settings \\['epoch'\\]"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="fraction"):
        resolve({"freeze_bn_at": 2.0})


def test_manifest_records_the_run(exported):
    manifest = json.loads((exported.out / "manifest.json").read_text())
    assert manifest["dataset"]["name"] == "mnist-5k" and manifest["dataset"]["n_train"] == 1024
    assert manifest["config"]["seed"] == 0 and manifest["model"]["name"] == "convnet"
    assert set(manifest["accuracy"]) >= {"fp32", "int8"} and set(manifest["accuracy"]["int8"]) >= {"ptq", "qat", "chosen"}
    for tool in ("torch", "executorch", "coremltools", "litert-torch", "ai-edge-litert"):
        assert manifest["versions"][tool]


def test_parity_console_names_the_failing_layer_and_leaves_the_table_to_the_log(tmp_path, capsys):
    """On a real network the per-layer table runs to 150 lines; the console gets the failing layer and a count."""
    from core import console
    from pipeline.parity import _summarize

    def row(layer, state, share, steps):
        return {"layer": layer, "state": state, "equal_share": share, "max_steps": steps, "allowed": 0}

    layers = [row("conv1", "ok", 1.0, 0), row("act", "FAILED", 0.76, 1)] + [
        row(f"block{i}", "after act", 0.5, 3) for i in range(40)]
    result = {"images": 100, "pairs": {"pte-tflite": {"verdict": ".pte vs .tflite: diverging from layer `act`"}},
              "check": {"layers": layers, "failures": ["layer `act` differs by 1 step"], "passed": False, "max_steps": 0}}
    log = tmp_path / "parity.log"
    with console.capture(log):
        _summarize(result)
    shown = capsys.readouterr().out
    assert "[x] act" in shown and "40 later layers inherit the difference" in shown and "1 of 42 within" in shown
    assert "block7" not in shown and "conv1" not in shown and len(shown.splitlines()) < 10
    kept = log.read_text()
    assert "block39" in kept and "[✓] conv1" in kept  # the whole table is in the log
