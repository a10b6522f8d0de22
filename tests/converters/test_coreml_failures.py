"""Core ML W8A8 of a network whose BatchNorm counts its calls (timm's BatchNormAct2d), and what a failing Core ML
file leaves behind: nothing in OUT, its sibling still made, a message that names the file, layer and op."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from converters import ConversionError, ExportOptions


class CountingBatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in brief: it increments num_batches_tracked itself in training, then batch norm and
    its activation. A QAT graph captured in training mode keeps the increment."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, self.eps)
        return self.act(x)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), CountingBatchNormAct(8),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), CountingBatchNormAct(16),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


@pytest.fixture(scope="module")
def source():
    """The tiny network at 32 px, its int8 PT2E graph (folded, as the .pte's), as the converters get them."""
    from core import qat
    from core.schemes import Scheme
    from core.workspace import ExportSource

    net = tiny()
    prepared = qat.prepare(net, (3, 32, 32))
    with torch.no_grad():
        for _ in range(3):
            prepared(torch.randn(16, 3, 32, 32) * 2)
    prepared.eval()
    program = qat.convert(prepared, fold=True)
    return ExportSource("bnact", (3, 32, 32), list("abcd"), [0.5] * 3, [0.25] * 3, net, scheme=Scheme(),
                        program=program, float_model=net)


def counter_updates(graph_module) -> list:
    return [n for n in graph_module.graph.nodes if n.op == "call_function" and "add_" in str(n.target)]


def test_w8a8_of_a_network_that_counts_its_batchnorm_calls(source, tmp_path):
    """The int8 graph updates each BatchNorm's counter; Core ML would make it model state, and coremltools then
    cannot read its own file back (`'fp16' has no attribute 'get_shape'`). The updates, read by nothing, are
    dropped for Core ML, and the file holds the int8 graph's numbers."""
    from converters.coreml import convert_w8a8
    from converters.coreml_checks import w8a8_checks

    counters = len(counter_updates(source.program))  # 2, unless the QAT preparation removes them itself
    dropped = []
    path = tmp_path / "bnact_coreml_int8.mlpackage"
    convert_w8a8(source, path.name, dropped).save(str(path))
    assert sorted(r["layer"] for r in dropped) == (["1", "3"] if counters else [])
    assert all("add_" in r["op"] for r in dropped)
    checks = w8a8_checks(path, source.program)  # before the fix: AttributeError: ... 'fp16' ... 'get_shape'
    assert checks["quantized_weights"] == 3 and checks["max_relative_weight_diff"] < 2e-3
    assert len(counter_updates(source.program)) == counters  # the source graph itself is left as it is


def test_dead_buffer_updates_are_dropped_exactly():
    from converters.coreml_graph import drop_dead_buffer_updates

    net = torch.export.export(tiny().train(), (torch.randn(2, 3, 32, 32),)).module()
    assert len(counter_updates(net)) == 2
    stripped, dropped = drop_dead_buffer_updates(net)
    assert not counter_updates(stripped) and len(counter_updates(net)) == 2 and len(dropped) == 2
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(stripped(x), net(x))


class Stateful(nn.Module):
    """A buffer the computation reads and updates: real model state, which Core ML W8A8 is not for."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls.add_(1)
        return self.conv(x).mean((2, 3)) + self.calls


def test_state_that_feeds_the_output_is_refused_with_its_layer():
    from converters.coreml import _convert
    from core.workspace import ExportSource

    source = ExportSource("st", (3, 32, 32), list("abcd"), [0.5] * 3, [0.25] * 3, Stateful())
    with pytest.raises(ConversionError, match=r"st_coreml_int8.mlpackage: the graph updates 1 buffer.*`calls`"):
        _convert(Stateful(), source, "st_coreml_int8.mlpackage")


def test_a_library_exception_is_explained_with_file_layer_and_op(capsys):
    """A coremltools failure inside an op's conversion names the file, the layer and the op; the library's own
    text is kept to its first line, and the traceback goes to the log (stdout)."""
    from converters.coreml import _convert
    from core.workspace import ExportSource

    class RunningMax(nn.Module):  # cummax: an op coremltools has no conversion for
        def forward(self, x):
            return x.cummax(dim=1)[0]

    class Unconvertible(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), RunningMax())
            self.head = nn.Linear(4, 4)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    net = Unconvertible().eval()
    source = ExportSource("u", (3, 32, 32), list("abcd"), [0.5] * 3, [0.25] * 3, net)
    from converters.coreml_graph import explained

    with pytest.raises(ConversionError) as error:
        with explained("u_coreml_fp16.mlpackage", "Core ML conversion", "do this"):
            _convert(net, source, "u_coreml_fp16.mlpackage")
    message = str(error.value)
    assert message.startswith("u_coreml_fp16.mlpackage: Core ML conversion failed at layer `body.1` (op aten.cummax")
    assert "do this; the full traceback is in the log" in message and "\n" not in message
    assert "Traceback" in capsys.readouterr().err


def test_a_failing_w8a8_file_leaves_nothing_in_out_and_the_palettized_one_is_made(source, tmp_path, monkeypatch):
    from converters import PartialExport, coreml
    from core.config import RunConfig

    def not_the_graphs_numbers(path, program):
        assert path.parent != tmp_path  # checked before it is renamed into OUT
        raise ConversionError(f"{path.name}: the file does not hold the int8 graph's numbers")

    monkeypatch.setattr(coreml, "w8a8_checks", not_the_graphs_numbers)
    with pytest.raises(PartialExport) as error:
        coreml.CoreMLConverter().export_scheme(source, tmp_path, ExportOptions.from_config(RunConfig(weight_threshold=0)))
    assert [a.file for a in error.value.artifacts] == ["bnact_coreml_pal4.mlpackage"]
    assert [str(f) for f in error.value.failures] == [
        "bnact_coreml_int8.mlpackage: the file does not hold the int8 graph's numbers"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bnact_coreml_pal4.mlpackage"]
