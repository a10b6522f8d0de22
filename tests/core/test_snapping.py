"""Snapping a converted PT2E graph's weights and biases onto the int8/int32 grids, for the schemes that have them."""

import copy

import pytest
import torch
import torch.nn as nn

from core import qat, quantize
from core.schemes import Scheme
from core.snapping import restore_float, snap_to_grid

QD = torch.ops.quantized_decomposed


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 5)).eval()


def _ptq(scheme: Scheme):
    """The PTQ-prepared graph of the model, observers fed. PTQ folds the BatchNorm into the conv when it prepares
    (so the conv has a bias to snap), and its convert skips QAT's conv-bn folding, which exports about a
    hundred patterns and would cost minutes here."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from core.export_check import export_training_graph

    prepared = prepare_pt2e(export_training_graph(_model(), (3, 12, 12)), qat.quantizer(False, scheme=scheme))
    with torch.no_grad():
        for _ in range(3):
            prepared(torch.randn(4, 3, 12, 12))
    return prepared


@pytest.fixture(scope="module")
def prepared():
    return _ptq(Scheme())


def _layers(gm):
    """Per conv/linear: input scale, weight scales, the weight's dequantize node, the bias, and a get_attr reader."""
    def attr(a):
        if not isinstance(a, torch.fx.Node):
            return a
        owner, _, name = a.target.rpartition(".")
        return getattr(gm.get_submodule(owner) if owner else gm, name)

    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
            x, w, b = node.args[0], node.args[1], node.args[2]
            scales = torch.as_tensor(attr(w.args[1]), dtype=torch.float64)  # per channel: a tensor; per tensor: a float
            yield x.args[1], scales, w, attr(b).detach().double(), attr


def _assert_on_grid(folded, unfolded):
    """Every bias on the int32 grid s_in·s_w, the same in both graphs; every unfolded weight a fixed point of its
    graph's own quantize/dequantize."""
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
                quant, dequant = q.target, w.target
                again = dequant(quant(weight, *[attr(a) for a in q.args[1:]]), *[attr(a) for a in w.args[1:]])
                assert torch.equal(again, weight)
        biases.append(layer_biases)
    assert len(biases[0]) == 3 and all(torch.equal(a, b) for a, b in zip(*biases))  # the same int32 biases


def test_weights_and_biases_land_on_the_grid_in_both_graphs(prepared):
    folded, unfolded = quantize._converted(prepared, Scheme())
    assert unfolded.meta["grid_snap"]["layers"] == 3 and unfolded.meta["grid_snap"]["weights_moved"] > 0
    assert folded.meta["grid_snap"]["weights_moved"] == 0  # folded weights are int8 already
    _assert_on_grid(folded, unfolded)
    assert snap_to_grid(unfolded)["weights_moved"] == 0 and snap_to_grid(unfolded)["biases_moved"] == 0  # idempotent
    record = quantize.grid_snap(quantize.Quantized("qat", folded, None, unfolded))
    assert record["unfolded"]["weights_moved"] > 0 and record["program"]["biases_moved"] > 0


def test_unsnapped_graphs_are_off_the_grid(prepared):
    """The check above can fail: convert without snapping leaves biases off the int32 grid."""
    folded, unfolded = qat.convert(prepared, snap=False), qat.convert(prepared, fold=False, snap=False)
    assert "grid_snap" not in folded.meta
    with pytest.raises(AssertionError, match="int32 grid"):
        _assert_on_grid(folded, unfolded)


def test_per_tensor_weights_are_snapped_exactly():
    scheme = Scheme(granularity="per_tensor")
    folded, unfolded = quantize._converted(_ptq(scheme), scheme)
    weight_quant = [n for n in unfolded.graph.nodes if n.target == QD.quantize_per_tensor.default
                    and n.args[0].op == "get_attr"]
    assert len(weight_quant) == 3  # one scale per weight tensor, and so one bias step per layer
    assert unfolded.meta["grid_snap"]["layers"] == 3 and unfolded.meta["grid_snap"]["weights_moved"] > 0
    _assert_on_grid(folded, unfolded)


def test_snapping_moves_biases_by_at_most_half_a_step(prepared):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    snapped = qat.convert(prepared)
    assert 0 < snapped.meta["grid_snap"]["largest_bias_move_steps"] <= 0.5
    x = torch.randn(16, 3, 12, 12)
    plain_out, snapped_out = convert_pt2e(copy.deepcopy(prepared))(x), snapped(x)
    assert (plain_out == snapped_out).float().mean() > 0.9  # int8 outputs: a rare value moves by one step
    assert snap_to_grid(snapped)["biases_moved"] == 0


def test_dynamic_schemes_are_left_unsnapped():
    """Dynamic activations: the input scale, and so the bias grid, exists only at run time."""
    scheme = Scheme(activations="dynamic")
    prepared = _ptq(scheme)
    bias = prepared.get_parameter("5.bias").detach().clone()
    program, unfolded = quantize._converted(prepared, scheme)
    assert unfolded is None and "grid_snap" not in program.meta
    assert torch.equal(program.get_parameter("5.bias"), bias)  # the float bias, untouched
    assert quantize.grid_snap(quantize.Quantized("ptq", program, None)) is None


def _constants(gm) -> dict:
    def read(target):
        owner, _, name = target.rpartition(".")
        return getattr(gm.get_submodule(owner) if owner else gm, name).detach().clone()
    return {n.target: read(n.target) for n in gm.graph.nodes if n.op == "get_attr"}


def test_restore_float_puts_back_exactly_the_values_snapping_moved(prepared):
    off_grid = qat.convert(prepared, fold=False, snap=False)
    snapped = qat.convert(prepared, fold=False)
    counts = restore_float(snapped, _constants(off_grid))
    assert counts == {"weights_restored": 3, "biases_restored": 3, "layers_left_on_grid": 0}
    after, before = _constants(snapped), _constants(off_grid)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_restore_float_refuses_values_that_are_not_the_graphs_own(prepared):
    """A float value that does not snap to the graph's own weight (as a conv weight from before BatchNorm
    folding would not; here each weight shifted by 30% of its range) is never swapped in."""
    snapped = qat.convert(prepared, fold=False)
    grid = _constants(snapped)
    wrong = {k: v + 0.3 * v.abs().max() for k, v in grid.items() if v.is_floating_point() and v.dim() > 1}
    counts = restore_float(snapped, wrong)
    assert counts["weights_restored"] == 0 and counts["layers_left_on_grid"] == 3
    assert all(torch.equal(v, _constants(snapped)[k]) for k, v in grid.items())  # nothing changed
