"""Snapping a converted QAT graph's weights and biases onto the int8/int32 grids."""

import pytest
import torch
import torch.nn as nn

from core import qat
from core.snapping import snap_to_grid

QD = torch.ops.quantized_decomposed


@pytest.fixture(scope="module")
def prepared():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 5))
    prepared = qat.prepare(model, (3, 12, 12))
    with torch.no_grad():
        for _ in range(3):
            prepared(torch.randn(4, 3, 12, 12))
    prepared.eval()
    return prepared


def _layers(gm):
    attr = lambda n: gm.get_parameter(n.target) if n.target in dict(gm.named_parameters()) else getattr(gm, n.target)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
            x, w, b = node.args[0], node.args[1], node.args[2]
            yield x.args[1], attr(w.args[1]).double(), w, attr(b).detach().double(), attr


def test_weights_and_biases_land_on_the_grid_in_both_graphs(prepared):
    folded, unfolded = qat.convert(prepared, fold=True), qat.convert(prepared, fold=False)
    assert unfolded.meta["grid_snap"]["layers"] == 3 and unfolded.meta["grid_snap"]["weights_moved"] > 0
    assert folded.meta["grid_snap"]["weights_moved"] == 0  # folded weights are int8 already
    biases = []
    for gm in (folded, unfolded):
        layer_biases = []
        for s_in, s_w, w, bias, attr in _layers(gm):
            k = bias / (s_in * s_w)
            assert torch.allclose(k, k.round(), atol=1e-3), "bias off the int32 grid"
            layer_biases.append(bias)
            q = w.args[0]
            if q.op == "call_function":  # unfolded: dequant(quant(w)) must give w back exactly
                weight = attr(q.args[0]).detach()
                args = [attr(a) if isinstance(a, torch.fx.Node) else a for a in q.args[1:]]
                assert torch.equal(QD.dequantize_per_channel.default(QD.quantize_per_channel.default(weight, *args), *args), weight)
        biases.append(layer_biases)
    assert all(torch.equal(a, b) for a, b in zip(*biases))  # the same int32 biases for both converters
    assert snap_to_grid(unfolded)["weights_moved"] == 0 and snap_to_grid(unfolded)["biases_moved"] == 0  # idempotent


def test_snapping_moves_biases_by_at_most_half_a_step(prepared):
    import copy

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    snapped = qat.convert(prepared)
    assert 0 < snapped.meta["grid_snap"]["largest_bias_move_steps"] <= 0.5
    x = torch.randn(16, 3, 12, 12)
    plain_out, snapped_out = convert_pt2e(copy.deepcopy(prepared))(x), snapped(x)
    assert (plain_out == snapped_out).float().mean() > 0.9  # int8 outputs: a rare value moves by one step
    assert snap_to_grid(snapped)["biases_moved"] == 0
