"""Section 1: per-layer SQNR, MSE against Δ²/12 and clipping, from OUT's exported quantized program."""

import copy

import numpy as np
import torch
import torch.nn as nn

from core import qat
from core.data import DataBundle
from study import numerics


def test_layer_error_of_the_qat_model(section):
    r = section("error")
    weights = {w["layer"]: w for w in r["weights"]}
    assert set(weights) == {"conv1", "conv2", "fc1", "fc2"}
    fc1 = weights["fc1"]  # 1.2 M weights, almost none clipped: the measured variance sits on Δ²/12
    assert 0.8 < fc1["measured_mse"] / fc1["predicted_mse"] < 1.25 and fc1["clipped_fraction"] < 1e-3
    # the exported graph's weights sit on their grid; the error is measured from the QAT float weights
    assert r["float_restored"] == {"weights_restored": 4, "biases_restored": 4, "layers_left_on_grid": 0}
    assert all(25 < w["sqnr_db"] < 70 for w in weights.values())  # int8: about 6 dB per bit, minus the range's crest
    acts = {a["layer"]: a for a in r["activations"]}
    assert list(acts) == ["input", "conv1", "conv2", "fc1", "fc2"]  # re-quantizations after pooling are not layers
    for relu_layer in ("conv1", "conv2", "fc1"):  # ReLU zeros sit on the grid: less error than Δ²/12
        assert acts[relu_layer]["zero_fraction"] > 0.2
        assert acts[relu_layer]["measured_mse"] < acts[relu_layer]["predicted_mse"]
    assert r["test_images"] == 256  # --study-batches 1


def _tiny_data(n=48, size=8, seed=0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (n,), generator=g)
    return DataBundle("synthetic", "test", images, labels, images, labels, ["a", "b", "c"], [0.5], [0.29])


def test_simulator_bypasses_exactly_the_chosen_quantizers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    data = _tiny_data()
    prepared = qat.calibrate(model, data, (1, 8, 8), calib_batches=2, batch_size=16)
    snapped = qat.convert(prepared, fold=False)  # weights and biases on their grids, as the pipeline saves it
    graph, restored = numerics.float_restored(snapped, model.state_dict())
    assert restored == {"weights_restored": 2, "biases_restored": 2, "layers_left_on_grid": 0}
    x = data.normalize(data.test_images[:16])
    with torch.no_grad():
        assert torch.equal(numerics.Simulator(graph)(x), graph(x))  # nothing bypassed: the int8 graph itself
        # the restored graph computes what the snapped one does, up to the float bias's sub-step offsets
        assert torch.allclose(graph(x), snapped(x), atol=1e-4)
        assert not torch.allclose(numerics.Simulator(snapped, weights=False, activations=False)(x), model(x), atol=1e-5)
        assert torch.allclose(numerics.Simulator(graph, weights=False, activations=False)(x), model(x), atol=1e-5)
        # weights only: the float network with each weight replaced by dequantize(quantize(w))
        quantized = {q.layer: q for q in numerics.quantizers(graph) if q.kind == "weight"}
        assert set(quantized) == {"0", "3"}
        manual = copy.deepcopy(model)
        rows = {w["layer"]: w for w in numerics.weight_errors(graph)}
        for layer in ("0", "3"):
            args = quantized[layer].node.args
            scale = numerics._fetch(graph, args[1].target)
            zero = numerics._fetch(graph, args[2].target)
            w = getattr(manual, layer).weight
            w.copy_(numerics.fake_quantize(w, scale, zero, -127, 127, axis=0)[0])
            err = (getattr(manual, layer).weight - getattr(model, layer).weight).pow(2).mean()
            assert np.isclose(float(err), rows[layer]["measured_mse"], rtol=1e-5)
        assert torch.allclose(numerics.Simulator(graph, activations=False)(x), manual(x), atol=1e-5)
        assert not torch.allclose(numerics.Simulator(graph, activations=False)(x), graph(x), atol=1e-5)
    acts = {a["layer"]: a for a in numerics.activation_errors(graph, data)}
    assert set(acts) == {"input", "0", "3"}
    assert acts["0"]["zero_fraction"] > 0  # after the ReLU


def test_clipping_is_counted():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    dequant, raw, _ = numerics.fake_quantize(x, 0.01, 0, -128, 127)  # representable: [-1.28, 1.27]
    assert int(((raw < -128) | (raw > 127)).sum()) == 2
    assert abs(float(dequant.max()) - 1.27) < 1e-6 and abs(float(dequant.min()) + 1.28) < 1e-6
