"""Layer-by-layer parity on the tiny ConvNet: every layer of .pte and .tflite agrees, and a perturbed file is caught."""

import copy

import numpy as np
import pytest
import torch

from converters import parity
from converters.layers import capture_pytorch, is_quantize, opname, quantized_layers
from core import io as atomic
from core import qat, quantize

pytestmark = pytest.mark.cpu_sensitive  # re-run under forced CPU capabilities (make test-cpus)

LAYERS = ["input", "conv1", "conv2", "max_pool2d", "flatten", "fc1", "fc2"]


def test_layers_carry_the_networks_own_names(exported):
    layers = quantized_layers(exported.quantized_program("int8"))
    assert [l.name for l in layers] == LAYERS
    assert [l.op for l in layers][1:3] == ["conv2d+relu", "conv2d+relu"]
    assert layers[-1].is_output and not layers[1].is_output
    assert layers[1].hierarchy == "core.models.ConvNet/torch.nn.modules.conv.Conv2d_conv1"
    values = capture_pytorch(exported.quantized_program("int8"), layers, exported.data.normalize(exported.data.test_images[:3]))
    assert values["conv2"].dtype == torch.int8 and tuple(values["conv2"].shape) == (3, 64, 24, 24)


def test_every_layer_of_pte_and_tflite_is_identical(exported):
    result = exported.manifest["parity"]  # written by the check inside verify
    assert result["images"] == 100 and result["check"]["passed"]
    rows = result["pairs"]["pte_vs_tflite"]["rows"]
    assert [r["layer"] for r in rows] == LAYERS
    assert all(r["max_steps"] == 0 and r["equal_share"] == 1.0 and r["sqnr_db"] == "inf" for r in rows)
    assert result["pairs"]["pte_vs_tflite"]["first_divergence"] is None
    assert "identical on all 7 layers" in result["pairs"]["pte_vs_tflite"]["verdict"]
    # the debug copies compute what the shipped files compute
    assert result["runtimes"]["pte"]["final_output_equals_shipped"] == "100/100"
    assert result["runtimes"]["tflite"]["final_output_equals_shipped"] == "100/100"
    assert result["runtimes"]["pte"]["ops_outside_delegate"] == {}
    methods = {r["name"]: r["tflite"]["method"] for r in result["layers"]}
    assert methods["conv1"] == methods["conv2"] == methods["fc1"] == "tensor name"
    assert methods["input"] == "model input" and methods["fc2"] == "model output"
    # against the PyTorch graph the runtimes are close, not exact (float conv, then requantization)
    assert all(r["max_steps"] <= 1 for r in result["pairs"]["pytorch_vs_pte"]["rows"])
    assert exported.manifest["verification"]["parity_passed"] is True
    # each op on its own (teacher-forced) is within a step of PyTorch in both runtimes
    for rt in ("pte", "tflite"):
        assert result["local_check"][rt]["passed"] and result["local_check"][rt]["layers"] == 7
    report = (exported.out / "report.md").read_text()
    assert "## Layer-by-layer parity" in report and "identical on all 7 layers" in report
    for pair in parity.PAIRS:
        assert (exported.out / "parity" / f"{pair}.png").stat().st_size > 5000


def test_coreml_weights_are_compared_with_the_qat_weights(exported):
    coreml = exported.manifest["parity"]["coreml"]
    pal4, fp16 = coreml["convnet_coreml_pal4.mlpackage"], coreml["convnet_coreml_fp16.mlpackage"]
    assert {r["weight"] for r in pal4} == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                           "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    fc1 = {r["weight"]: r for r in pal4}["fc1.weight"]
    assert fc1["max_steps"] > 1 and fc1["sqnr_db"] < 40  # 4-bit LUTs: coarser than int8
    assert all(r["max_steps"] < 0.5 for r in fp16 if r["weight"].endswith("weight"))  # fp16 rounding only


def _unfolded_with_one_channel_moved(exported, layer: str) -> torch.fx.GraphModule:
    """The unfolded QAT graph with `layer`'s first output channel moved one int8 step up."""
    graph = copy.deepcopy(quantize.load_program(exported.quantized_folder("int8") / quantize.UNFOLDED))
    quant = torch.ops.quantized_decomposed.quantize_per_channel.default
    q = next(n for n in graph.graph.nodes if n.target == quant and n.args[0].target == f"{layer}.weight")
    weight, scales = graph.get_parameter(q.args[0].target), getattr(graph, q.args[1].target)
    with torch.no_grad():
        weight[0] += scales[0]
    return graph


def test_a_perturbed_tflite_is_caught_at_its_layer(exported, tmp_path):
    import litert_torch

    from converters.tflite import _int8_config

    graph = _unfolded_with_one_channel_moved(exported, "conv2")
    graph.training = False
    litert_torch.convert(graph, (torch.zeros(1, 1, 28, 28),), quant_config=_int8_config()).export(str(tmp_path / "bad.tflite"))
    images = exported.data.normalize(exported.data.test_images[:20])
    pte = exported.out / "convnet_xnnpack_int8.pte"
    result = parity.run(exported.quantized_program("int8"), images, (1, 28, 28), pte=pte, tflite=tmp_path / "bad.tflite",
                        work_dir=exported.out / "parity", key=atomic.sha256(exported.quantized_folder("int8") / quantize.PROGRAM))
    assert result["runtimes"]["pte"]["reused"]  # the debug .pte the fixture's verify lowered
    div = result["pairs"]["pte_vs_tflite"]["first_divergence"]
    assert div["layer"] == "conv2" and div["max_steps"] >= 1
    rows = {r["layer"]: r for r in result["pairs"]["pte_vs_tflite"]["rows"]}
    assert rows["conv1"]["equal_share"] == 1.0 and rows["input"]["equal_share"] == 1.0
    passed, failures, status = parity.check(result, max_steps=0, max_steps_float=1)
    assert not passed and failures[0].startswith("layer `conv2` (conv2d+relu)")
    assert [s["state"] for s in status][:3] == ["ok", "ok", "FAILED"]
    # teacher-forced, the fault stays where it is: conv2 of the .tflite is off by itself, and the layers after it,
    # computed from its own (wrong) conv2, match it again; the .pte is fine op by op
    local = parity.check_local(result, max_steps=1)
    assert local["pte"]["passed"] and not local["tflite"]["passed"]
    assert local["tflite"]["failures"][0].startswith("layer `conv2` (conv2d+relu)")
    forced = {r["layer"]: r for r in result["local"]["tflite"]["rows"]}
    carried = {r["layer"]: r for r in result["pairs"]["pytorch_vs_tflite"]["rows"]}
    assert forced["max_pool2d"]["max_steps"] <= 1 < carried["max_pool2d"]["max_steps"]
    # a generous allowance lets it through: the check reads the setting
    big = rows["conv2"]["max_steps"]
    assert parity.check(result, max_steps=max(r["max_steps"] for r in rows.values()), max_steps_float=big)[0]


def _result(layers):
    rows = [{"layer": name, "op": op, "max_steps": steps, "mean_steps": 0.0, "equal_share": 1.0 if steps == 0 else 0.9,
             "sqnr_db": "inf", "values": 10} for name, op, steps, _ in layers]
    return {"layers": [{"name": name, "float_in": floats} for name, _, _, floats in layers],
            "pairs": {"pte_vs_tflite": {"rows": rows}}}


def test_float_ops_are_loosened_only_where_they_run():
    layers = [("conv", "conv2d", 0, {}), ("act", "hardswish", 1, {"pte": "Hardswish (NC, F32)"}),
              ("conv2", "conv2d", 3, {}), ("fc", "linear", 2, {})]
    passed, failures, status = parity.check(_result(layers), max_steps=0, max_steps_float=1)
    assert passed and not failures
    assert [s["state"] for s in status] == ["ok", "float op, within 1", "after act", "after act"]
    passed, failures, _ = parity.check(_result(layers), max_steps=0, max_steps_float=0)
    assert not passed and "layer `act` (hardswish)" in failures[0] and "computed in float" in failures[0]
    strict = [("conv", "conv2d", 0, {}), ("conv2", "conv2d", 1, {}), ("act", "hardswish", 1, {"tflite": "HARD_SWISH"})]
    passed, failures, _ = parity.check(_result(strict), max_steps=0, max_steps_float=1)
    assert not passed and failures[0].startswith("layer `conv2`")


def test_xnnpack_float_kernels_name_the_layers_they_compute():
    """ETDump names XNNPACK's kernels, not PyTorch's ops: a float batch matmul (attention's q^T k) is a bmm layer."""
    from converters.layers import Layer

    layers = [Layer(i, name, op, f"q{i}", 0.1, 0, "", "", "", "") for i, (name, op) in
              enumerate([("attn:bmm", "bmm"), ("attn:softmax", "softmax"), ("proj", "conv2d")])]
    rows = parity._layer_rows(layers, {l.name: (4,) for l in layers}, None,
                              ["Batch Matrix Multiply (NC, F32) GEMM #1", "Softmax (NC, F32) #2"])
    assert [r["float_in"] for r in rows] == [{"pte": "Batch Matrix Multiply (NC, F32) GEMM #1"},
                                             {"pte": "Softmax (NC, F32) #2"}, {}]


def test_stats_count_steps_equal_values_and_sqnr():
    stats = parity.Stats()
    a = np.array([[-128, 0, 5, 10]], np.int8)
    b = np.array([[-128, 1, 5, 7]], np.int8)
    stats.update(a, (0.5, 0), b, (0.5, 0), 0.5)
    s = stats.summary()
    assert s["max_steps"] == 3 and s["mean_steps"] == 1.0 and s["equal_share"] == 0.5
    signal = (0.5 ** 2) * (128 ** 2 + 25 + 100)
    assert s["sqnr_db"] == pytest.approx(10 * np.log10(signal / (0.25 * (1 + 9))))


class _Block(torch.nn.Module):
    """conv -> (norm) -> ReLU6 modules at torchvision's indices, then a residual add. The norm slot holds an
    Identity: a BatchNorm there makes QAT's convert fold conv-bn by exporting ~100 patterns (minutes here), and
    the mapping under test does not depend on it."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Identity(), torch.nn.ReLU6())
        self.conv = torch.nn.Conv2d(8, 8, 1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.conv(x)
        return self.fc(x.mean((2, 3)))


def test_module_activations_map_to_fused_tflite_tensors(tmp_path, calibrated):
    """litert-torch fuses ReLU6 into the conv before it: the conv's own output has no tensor, the ReLU6's has."""
    import litert_torch

    from converters.parity_capture import match_tflite
    from converters.tflite import _int8_config
    from ai_edge_litert.interpreter import Interpreter

    torch.manual_seed(0)
    prepared = calibrated(_Block(), (3, 8, 8), batch=4, scale=1.0)
    folded, unfolded = qat.convert(prepared, fold=True), qat.convert(prepared, fold=False)
    unfolded.training = False
    litert_torch.convert(unfolded, (torch.zeros(1, 3, 8, 8),), quant_config=_int8_config()).export(str(tmp_path / "b.tflite"))
    layers = quantized_layers(folded)
    names = [l.name for l in layers]
    assert names[:4] == ["input", "stem.0", "stem.2", "conv"] and "stem" not in names  # `stem.0`: conv, `stem.2`: ReLU6
    assert layers[1].activation == "stem.2" and layers[2].op == "hardtanh"
    sizes = {l.name: int(np.prod(v.shape[1:])) for l, v in zip(layers, capture_pytorch(folded, layers, torch.zeros(2, 3, 8, 8)).values())}
    interpreter = Interpreter(model_path=str(tmp_path / "b.tflite"), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    matches, missing = match_tflite(interpreter, layers, sizes)
    assert "stem.0" not in matches and "fused `stem.2`" in missing["stem.0"]
    assert matches["stem.2"].method == "tensor name" and matches["stem.2"].producer == "CONV_2D"
    assert matches["conv"].method == "tensor name" and matches[names[-1]].method == "model output"


class _HardSwishBlock(torch.nn.Module):
    """conv -> hardswish (as the rewrite writes it: x * relu6(x + 3) / 6) -> squeeze-excitation with the rewritten
    hardsigmoid (MobileNetV3's) -> conv -> mean -> linear."""

    def __init__(self):
        super().__init__()
        from torchvision.ops import SqueezeExcitation

        from core.rewrites import HardSigmoid, HardSwish

        self.stem, self.act = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), HardSwish()
        self.dw = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), torch.nn.ReLU())
        self.se = SqueezeExcitation(16, 8, scale_activation=torch.nn.Hardsigmoid)  # MobileNetV3's features.1
        self.se.scale_activation = HardSigmoid()
        self.conv, self.fc = torch.nn.Conv2d(16, 8, 1), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.conv(self.se(self.dw(self.act(self.stem(x))))).mean((2, 3)))


def test_relu6_after_add_rounds_once_as_litert_does(tmp_path, calibrated):
    """LiteRT fuses relu6 into the ADD before it and rounds once. The PT2E graph (and so the .pte) must do the
    same, or a quarter of MobileNetV3's hardswish values differ by a step between the .pte and the .tflite.
    The squeeze-excitation's MUL (an NHWC map times a broadcast scale) must be read in its own layout."""
    import litert_torch

    from converters.executorch import lower
    from converters.tflite import _int8_config

    torch.manual_seed(0)
    prepared = calibrated(_HardSwishBlock(), (3, 16, 16))
    folded, unfolded = qat.convert(prepared, fold=True), qat.convert(prepared, fold=False)
    unfolded.training = False
    # the add's output is quantized once, on the fixed grid of [0, 6], and relu6 keeps that grid
    add_q = [n for n in folded.graph.nodes if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
             and "dequantize" not in str(n.target) and n.args[0].target == torch.ops.aten.add.Tensor]
    assert [(pytest.approx(n.args[1], rel=1e-6), n.args[2]) for n in add_q] == [(qat.RELU6_SCALE, -128)] * 2
    # ... and the ops reading relu6 (hardswish's and the excitation's MUL) read it on that grid: no requantize
    requantized = [(n.args[0].args[1], n.args[1]) for n in folded.graph.nodes
                   if is_quantize(n) and opname(n.args[0]) == "dequantize_per_tensor"]
    assert requantized == []
    tflite, pte = tmp_path / "hs.tflite", tmp_path / "hs.pte"
    litert_torch.convert(unfolded, (torch.zeros(1, 3, 16, 16),), quant_config=_int8_config()).export(str(tflite))
    pte.write_bytes(lower(folded, (3, 16, 16))[0].to_executorch().buffer)
    result = parity.run(folded, torch.randn(32, 3, 16, 16) * 2, (3, 16, 16), pte=pte, tflite=tflite, work_dir=tmp_path)
    rows = {r["layer"]: r for r in result["pairs"]["pte_vs_tflite"]["rows"]}
    assert "se" in rows and rows["se"]["op"] == "mul"  # the excitation's product is compared, not skipped
    assert result["pairs"]["pte_vs_tflite"]["first_divergence"] is None, result["pairs"]["pte_vs_tflite"]["verdict"]


def test_an_activation_fused_away_does_not_take_the_next_blocks_tensor(tmp_path, calibrated):
    """Two hardswish blocks of one shape: LiteRT fuses each relu6 into its ADD, so the relu6 layers have no tensor
    of their own. The second block's ADD has the same scale, zero point and size as the first relu6, but is named
    after its own block: it is not a fit for the first relu6."""
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    from converters.parity_capture import match_tflite
    from converters.tflite import _int8_config
    from core.rewrites import HardSwish

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), HardSwish(), torch.nn.Conv2d(8, 8, 1), HardSwish(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    prepared = calibrated(net, (3, 8, 8), batch=8)
    folded, unfolded = qat.convert(prepared, fold=True), qat.convert(prepared, fold=False)
    unfolded.training = False
    litert_torch.convert(unfolded, (torch.zeros(1, 3, 8, 8),), quant_config=_int8_config()).export(str(tmp_path / "h.tflite"))
    layers = quantized_layers(folded)
    relu6 = [l.name for l in layers if l.op == "relu6"]
    assert len(relu6) == 2
    sizes = {name: int(np.prod(v.shape[1:])) for name, v in capture_pytorch(folded, layers, torch.zeros(2, 3, 8, 8)).items()}
    interpreter = Interpreter(model_path=str(tmp_path / "h.tflite"), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    matches, missing = match_tflite(interpreter, layers, sizes)
    assert [n for n, m in matches.items() if "guess" in m.method] == []
    assert all(name in missing for name in relu6)
    adds = [l.name for l in layers if l.op == "add"]
    assert len({matches[a].index for a in adds}) == 2 and all(matches[a].method == "tensor name" for a in adds)


class _AttentionHead(torch.nn.Module):
    """EfficientViT's attention head: one conv makes q, k and v (one scale), q gets a depthwise conv, k and v are
    only flattened; every op is named after this module."""

    def __init__(self):
        super().__init__()
        self.qkv, self.dw = torch.nn.Conv2d(8, 24, 1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).view(b, -1, h, w).split([8, 8, 8], dim=1)
        q, k, v = self.dw(q).flatten(2), k.flatten(2), v.flatten(2)
        attn = ((q * 0.35).transpose(-2, -1) @ k).softmax(dim=-1)
        return (v @ attn.transpose(-2, -1)).view(b, 8, h, w)


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.attn = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), _AttentionHead()
        self.proj, self.fc = torch.nn.Conv2d(8, 8, 1), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.proj(self.attn(self.stem(x))).mean((2, 3)))


def test_same_named_tensors_are_told_apart_by_what_they_read(tmp_path, int8_parity):
    """k and v are flattened slices of one conv: same name, scale and size. LiteRT reshapes k where its matmul
    reads it, after v, so graph order gave k's layer v's tensor (and v's k's): 183 steps off, both runtimes right.
    Each layer takes the tensor that holds, or is computed from, the tensors of its own input layers."""
    folded, result = int8_parity(_Attention, tmp_path, "att")
    # XNNPACK computes the attention products in float (the .tflite in int8): a step may differ after them, and
    # on some CPUs does (AVX2: 1 step on 0.012% of the last view's values); a wrong tensor is many steps off
    worst = max(r["max_steps"] for r in result["pairs"]["pte_vs_tflite"]["rows"])
    assert worst <= 1, result["pairs"]["pte_vs_tflite"]["verdict"]
    assert parity.check_local(result, max_steps=1)["tflite"]["passed"]
    layers = {l.name: l for l in quantized_layers(folded)}
    assert layers["attn:flatten_1"].inputs == ["attn:slice_tensor_1"] and layers["attn:flatten_2"].inputs == ["attn:slice_tensor_2"]
    methods = {r["name"]: r["tflite"]["method"] for r in result["layers"] if r["tflite"]}
    assert "reads the layer's inputs" in methods["attn:flatten_1"] and "reads the layer's inputs" in methods["attn:flatten_2"]
