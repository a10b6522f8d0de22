import pytest
import torch
import torch.nn as nn

from core import qat, quantize


def test_qat_keeps_accuracy_close_to_fp32(exported):
    acc = exported.manifest["accuracy"]
    int8 = acc["int8"]
    assert int8["qat"] >= acc["fp32"] - 0.03
    assert int8["ptq"] > 0.5 and int8["float"] > 0.5
    assert int8["chosen"] == ("qat" if int8["qat"] >= int8["ptq"] else "ptq")  # auto keeps the better one
    assert int8["quantized"] == int8[int8["chosen"]]


def test_qat_freeze_schedule_ran(exported):
    stage = exported.manifest["stages"]["quantize"]["int8"]
    events = stage["events"]
    assert [(e["event"], e["step"]) for e in events] == [("freeze_bn", 12), ("freeze_observers", 16)]
    assert events[0]["nodes"] == 0  # the ConvNet has no BatchNorm
    assert stage["steps"] == 20


def test_saved_programs_reload_and_match(exported):
    folder = quantize.folder(exported.out, "int8")
    folded = quantize.load_program(folder / quantize.PROGRAM)
    unfolded = quantize.load_program(folder / quantize.UNFOLDED)
    x = torch.randn(5, 1, 28, 28)
    assert torch.allclose(folded(x), unfolded(x), atol=1e-5)
    # folded weights are int8 only: the unused float copies are dropped
    assert (folder / quantize.PROGRAM).stat().st_size < 0.4 * (folder / quantize.UNFOLDED).stat().st_size
    weights = qat.load_float_weights(folder / quantize.FLOAT)
    assert set(weights) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                            "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}


def test_freeze_batchnorm_in_a_qat_graph():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    prepared = qat.prepare(model, (1, 28, 28))
    assert qat.freeze_batchnorm(prepared) == 1
    bn_nodes = [n for n in prepared.graph.nodes if n.target == torch.ops.aten.batch_norm.default]
    assert all(n.args[5] is False for n in bn_nodes)


def test_quantizer_skips_batchnorm_patterns_only_where_no_batchnorm_can_match():
    """The skip saves ~5 s of pattern exports per prepare, and must not change a single annotation."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    patterns = XNNPACKQuantizer.SUPPORTED_PATTERNS
    assert "conv_bn" in [p.name for p in qat.patterns_for(qat._export(with_bn.train(), (1, 8, 8)), patterns)]
    assert not [p.name for p in qat.patterns_for(qat._export(plain.train(), (1, 8, 8)), patterns) if "_bn" in p.name]
    original = XNNPACKQuantizer().set_global(qat.quantization_config(None, is_qat=True))
    ours = prepare_qat_pt2e(qat._export(plain.train(), (1, 8, 8)), qat.quantizer(is_qat=True))
    theirs = prepare_qat_pt2e(qat._export(plain.train(), (1, 8, 8)), original)
    assert ours.code == theirs.code


def test_corrupt_qat_program_is_an_error(tmp_path):
    bad = tmp_path / quantize.PROGRAM
    bad.write_bytes(b"garbage")
    import pytest

    with pytest.raises(qat.QuantError, match="corrupt"):
        qat.load_program(bad)
    with pytest.raises(qat.QuantError, match="run `qat` first"):
        qat.load_program(tmp_path / "missing.pt2")


def test_weight_rounding_error_follows_the_uniform_noise_model(exported):
    rows = {r["layer"]: r for r in exported.manifest["stages"]["quantize"]["int8"]["weight_error"]}
    assert set(rows) == {"conv1", "conv2", "fc1", "fc2"}
    fc1 = rows["fc1"]  # 1.2 M weights: the measured variance must sit on Δ²/12
    assert 0.8 < fc1["measured_mse"] / fc1["predicted_mse"] < 1.25
    assert "Weight rounding error: `int8`" in (exported.out / "report.md").read_text()


def test_each_calibration_sets_its_own_activation_ranges():
    """--calibration picks the PTQ observer: on inputs with rare outliers, percentile clips them (a finer step
    than min/max), and every choice gives the graph its own scales."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from core.schemes import Scheme

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 3)).eval()
    batches = [torch.randn(16, 1, 32, 32) for _ in range(4)]  # 16,384 values a batch
    for b in batches:
        b[0, 0, 0, 0] = 40.0  # one outlier per batch: 0.006% of its values, inside the 0.01% tail
    input_scale = {}
    for calibration in ("minmax", "moving_average", "histogram", "percentile"):
        prepared = prepare_pt2e(qat._export(model, (1, 32, 32)),
                                qat.quantizer(is_qat=False, scheme=Scheme(mode="ptq", calibration=calibration)))
        with torch.no_grad():
            for b in batches:
                prepared(b)
        graph = convert_pt2e(prepared)
        first = next(n for n in graph.graph.nodes if n.op == "call_function" and "quantize_per_tensor" in str(n.target))
        input_scale[calibration] = float(first.args[1])
    assert input_scale["minmax"] == pytest.approx((40.0 - min(float(b.min()) for b in batches)) / 255, rel=1e-3)
    assert input_scale["percentile"] < 0.5 * input_scale["minmax"]  # the outliers are clipped
    assert input_scale["moving_average"] <= input_scale["minmax"]
    assert len({round(s, 8) for s in input_scale.values()}) == 4


def test_float_model_of_qat_weights_gets_its_own_batchnorm_statistics(tmp_path, make_config, monkeypatch):
    """The QAT graph's running averages do not fit the float network of its weights: the float model that Core ML
    palettizes and the study reads gets statistics re-estimated over training batches, and says so."""
    from core import train
    from pipeline.stages import Pipeline

    from_qat_graph = {}  # the float model's statistics as they come from the QAT graph, before re-estimation
    original = train.recalibrate_batchnorm

    def recalibrate(model, *args, **kwargs):
        from_qat_graph.update({k: v.clone() for k, v in model.state_dict().items() if k.endswith("running_mean")})
        return original(model, *args, **kwargs)

    monkeypatch.setattr(train, "recalibrate_batchnorm", recalibrate)

    factory = tmp_path / "bn_net.py"
    factory.write_text("import torch.nn as nn\n\n\ndef build(num_classes, in_channels):\n"
                       "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
                       "                         nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16, momentum=0.01), nn.ReLU(),\n"
                       "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))\n")
    pipeline = Pipeline(make_config(tmp_path / "out", model=f"{factory}:build", limit_train=256, limit_test=100,
                                    quant_mode="qat", qat_max_steps=4, bn_recalibration=3,
                                    lr=3e-3))  # at the default 1e-3 this net stays at chance after 8 steps: refused
    pipeline.train()
    pipeline.qat()
    tag = pipeline.scheme().tag
    entry = pipeline.manifest["stages"]["quantize"][tag]
    assert entry["chosen"] == "qat" and entry["float_bn_recalibration"]["batches"] == 3
    folder = pipeline.quantized_folder(tag)
    saved = qat.load_float_weights(folder / quantize.FLOAT)
    stats = [k for k in saved if k.endswith("running_mean")]
    assert stats and sorted(stats) == sorted(from_qat_graph)
    assert all(not torch.equal(saved[k], from_qat_graph[k].to(saved[k].device)) for k in stats)  # not the QAT graph's
