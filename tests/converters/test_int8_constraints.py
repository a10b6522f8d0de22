"""The runtimes' int8 constraints (core/int8_constraints.py) reach the PT2E graph, so both int8 files take it."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from converters import parity
from core import int8_constraints, qat


class _SqueezeExcitePad(nn.Module):
    """conv -> squeeze-excitation gated by a sigmoid (as in EfficientNet, RepViT, RegNetY) -> an explicit F.pad
    before an unpadded conv (GhostNet's) -> mean -> linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU())
        self.reduce, self.expand = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
        self.conv, self.fc = nn.Conv2d(16, 8, 3), nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        x = F.pad(x * gate, (1, 1, 1, 1))
        return self.fc(self.conv(x).mean((2, 3)))


PADS = (torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default)


def _quantize_outputs_of(folded, *targets):
    return [n for n in folded.graph.nodes if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
            and "dequantize" not in str(n.target) and n.args[0].target in targets]


def test_sigmoid_gate_and_pad_give_a_tflite_that_prepares_and_agrees_with_the_pte(tmp_path, calibrated):
    """LiteRT's int8 LOGISTIC needs output scale 1/256 and zero point -128, and its PAD one scale on both sides;
    an observed sigmoid range made the .tflite fail to prepare. The .pte and the .tflite must agree per layer."""
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    from converters.executorch import delegation_checks, lower
    from converters.tflite import _int8_config, inspect

    torch.manual_seed(0)
    shape = (3, 32, 32)
    prepared = calibrated(_SqueezeExcitePad(), shape, batch=8)
    folded, unfolded = qat.convert(prepared, fold=True), qat.convert(prepared, fold=False)
    unfolded.training = False
    tflite, pte = tmp_path / "se.tflite", tmp_path / "se.pte"
    litert_torch.convert(unfolded, (torch.zeros(1, *shape),), quant_config=_int8_config()).export(str(tflite))
    interpreter = Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()  # LiteRT's prepare: the LOGISTIC and PAD checks
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                           torch.zeros(1, *shape, dtype=torch.int8).numpy())
    interpreter.invoke()
    checks, _ = inspect(tflite)  # every op int8: LOGISTIC and PAD as int8 kernels, not float islands
    assert checks["fully_int8"] and checks["float_ops"] == {} and checks["ops"].get("LOGISTIC") == 1, checks["ops"]
    sigmoid_q = _quantize_outputs_of(folded, torch.ops.aten.sigmoid.default)
    assert [(n.args[1], n.args[2]) for n in sigmoid_q] == [(1 / 256, -128)]
    pad = next(n for n in folded.graph.nodes if n.target in PADS)
    into, out = pad.args[0], _quantize_outputs_of(folded, *PADS)
    assert len(out) == 1 and out[0].args[1:3] == into.args[1:3]  # the pad keeps its input's scale and zero point
    program, table = lower(folded, shape)
    assert delegation_checks(program, table, "int8")["fully_delegated"]
    pte.write_bytes(program.to_executorch().buffer)
    result = parity.run(folded, torch.randn(32, *shape) * 2, shape, pte=pte, tflite=tflite, work_dir=tmp_path)
    rows = result["pairs"]["pte_vs_tflite"]["rows"]
    assert any(r["op"] == "sigmoid" for r in rows), [r["op"] for r in rows]
    assert all(r["max_steps"] <= 1 for r in rows), result["pairs"]["pte_vs_tflite"]["verdict"]


def test_silu_reaches_both_int8_files_as_int8_sigmoid_and_mul(tmp_path, calibrated):
    """A quantized SiLU (EfficientNet, TinyNet) ran as float LOGISTIC and MUL in the .tflite; as sigmoid * x
    (core/graph_prep.py) the .tflite is all int8, the .pte fully delegated and the two identical per layer."""
    import litert_torch

    from converters.executorch import delegation_checks, lower
    from converters.tflite import _int8_config, inspect

    torch.manual_seed(0)
    shape = (3, 16, 16)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    prepared = calibrated(net.eval(), shape, batch=8)
    folded, unfolded = qat.convert(prepared, fold=True), qat.convert(prepared, fold=False)
    unfolded.training = False
    tflite, pte = tmp_path / "silu.tflite", tmp_path / "silu.pte"
    litert_torch.convert(unfolded, (torch.zeros(1, *shape),), quant_config=_int8_config()).export(str(tflite))
    checks, _ = inspect(tflite)
    assert checks["fully_int8"] and checks["float_ops"] == {} and checks["ops"].get("LOGISTIC") == 1, checks["ops"]
    program, table = lower(folded, shape)
    assert delegation_checks(program, table, "int8")["fully_delegated"]
    pte.write_bytes(program.to_executorch().buffer)
    result = parity.run(folded, torch.randn(16, *shape) * 2, shape, pte=pte, tflite=tflite, work_dir=tmp_path)
    rows = result["pairs"]["pte_vs_tflite"]["rows"]
    assert [r["op"] for r in rows if r["op"] in ("sigmoid", "mul")] == ["sigmoid", "mul"]
    assert all(r["max_steps"] == 0 for r in rows), result["pairs"]["pte_vs_tflite"]["verdict"]


def test_a_head_averaged_by_division_is_int8_in_the_tflite(tmp_path, calibrated):
    """RepViT's head returns (head(x) + head_dist(x)) / 2: the quantizers leave div float, so the .tflite had a float
    MUL between a DEQUANTIZE and a QUANTIZE. As a multiplication by 0.5 (core/graph_prep.py) it is int8."""
    import litert_torch

    from converters.tflite import _int8_config, inspect

    class Averaged(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head, self.head_dist = nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            x = self.body(x)
            return (self.head(x) + self.head_dist(x)) / 2

    torch.manual_seed(0)
    shape = (3, 16, 16)
    unfolded = qat.convert(calibrated(Averaged().eval(), shape, batch=8), fold=False)
    unfolded.training = False
    tflite = tmp_path / "averaged.tflite"
    litert_torch.convert(unfolded, (torch.zeros(1, *shape),), quant_config=_int8_config()).export(str(tflite))
    checks, _ = inspect(tflite)
    assert checks["fully_int8"] and checks["float_ops"] == {} and checks["ops"].get("MUL") == 1, checks["ops"]


def test_the_tables_name_the_kernels_grids():
    aten = torch.ops.aten
    assert int8_constraints.FIXED_GRIDS[aten.sigmoid.default].scale == 1 / 256
    assert int8_constraints.FIXED_GRIDS[aten.sigmoid.default].zero_point == -128
    assert (int8_constraints.FIXED_GRIDS[aten.tanh.default].scale, int8_constraints.FIXED_GRIDS[aten.tanh.default].zero_point) == (1 / 128, 0)
    assert qat.RELU6_SCALE == pytest.approx(6 / 255)
    assert aten.constant_pad_nd.default in int8_constraints.SAME_SCALE
