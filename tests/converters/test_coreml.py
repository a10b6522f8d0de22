import numpy as np
import pytest
import torch

from converters import ConversionError, ExportOptions
from converters.coreml import CoreMLConverter, palettized_file, fold_batchnorm, load_into, read_weights
from converters.coreml_checks import lut_checks

pytestmark = pytest.mark.cpu_sensitive  # re-run under forced CPU capabilities (make test-cpus)


def test_palettized_package_has_4bit_luts_and_shrank(exported):
    artifact = exported.manifest["artifacts"]["convnet_coreml_pal4.mlpackage"]
    checks = lut_checks(exported.out / "convnet_coreml_pal4.mlpackage", 4)
    assert checks["palettized"] and not checks["wrong_nbits"]
    assert all(v == {"indices": "UINT4", "lut_entries": 16} for v in checks["palettized"].values())
    assert set(checks["dense"]) == {"p_net_conv1_weight_to_fp16", "p_net_fc2_weight_to_fp16"}  # below 2048 elements
    assert artifact["checks"]["bytes_palettized"] < 0.5 * artifact["checks"]["bytes_fp16_weights"]
    assert lut_checks(exported.out / "convnet_coreml_pal4.mlpackage", 2)["wrong_nbits"]


def test_readback_is_within_tolerance(exported):
    v = exported.manifest["artifacts"]["convnet_coreml_pal4.mlpackage"]["verification"]
    # k-means differs between CPUs: the verdict, not a margin of a few images, is what must hold
    agreement = next(x for x in v["verdicts"] if x["method"] == "Clopper-Pearson")
    assert v["passed"] and agreement["outcome"] != "fail" and agreement["n"] == 300
    fp16 = exported.manifest["artifacts"]["convnet_coreml_fp16.mlpackage"]["verification"]
    assert fp16["max_abs_logit_diff"] < 0.05  # fp16 rounding only
    source = exported.export_source()
    weights = read_weights(exported.out / "convnet_coreml_pal4.mlpackage")
    net = load_into(fold_batchnorm(source.float_model), weights)
    w = net.fc1.weight.detach().numpy()
    # per_grouped_channel, group 16: each group of 16 output rows shares 16 values at most
    assert all(len(np.unique(w[g:g + 16].astype(np.float32))) <= 16 for g in range(0, 128, 16))
    assert not torch.equal(net.fc1.weight, source.float_model.fc1.weight)


def test_metadata_and_classifier_survive(exported):
    import coremltools as ct

    spec = ct.models.MLModel(str(exported.out / "convnet_coreml_pal4.mlpackage"), skip_model_load=True).get_spec()
    meta = dict(spec.description.metadata.userDefined)
    assert meta["dataset"] == "mnist-5k" and meta["quantization"] == "pal4" and meta["run_id"]
    assert spec.description.input[0].type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.GRAYSCALE
    assert spec.description.predictedFeatureName == "classLabel"
    assert spec.description.predictedProbabilitiesName == "classLabel_probs"


@pytest.mark.parametrize("nbits", [5, 0, 16])
def test_unsupported_nbits_is_refused(exported, tmp_path, monkeypatch, nbits):
    monkeypatch.setattr(exported.cfg, "nbits", nbits)
    with pytest.raises(ConversionError, match=f"--nbits {nbits} is not supported"):
        CoreMLConverter().export_scheme(exported.export_source(), tmp_path, ExportOptions.from_config(exported.cfg))
    assert list(tmp_path.iterdir()) == []


def test_two_bit_palettization(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(exported.cfg, "nbits", 2)
    artifacts = CoreMLConverter().export_scheme(exported.export_source(), tmp_path, ExportOptions.from_config(exported.cfg))
    assert artifacts[1].file == "convnet_coreml_pal2.mlpackage"
    assert all(v["indices"] == "UINT2" for v in artifacts[1].checks["palettized"].values())


def test_palettized_files_of_different_schemes_never_share_a_name():
    from core.schemes import Scheme

    default, ptq = Scheme(), Scheme(mode="ptq", calibration="percentile")
    assert palettized_file("convnet", default, 4) == "convnet_coreml_pal4.mlpackage"
    assert palettized_file("convnet", ptq, 4) == f"convnet_coreml_{ptq.tag}_pal4.mlpackage" != palettized_file("convnet", default, 4)


def test_squeeze_excitation_biases_read_back(tmp_path):
    """MobileNetV3's squeeze-excitation, after the hardsigmoid rewrite, adds 3 right after a conv; Core ML's
    fuse_conv_bias pass would fold it into a renamed bias that the read-back cannot find. The float package
    keeps every conv bias under its own name, and the read-back network matches the original."""
    import torch.nn as nn
    from torchvision.ops import SqueezeExcitation

    from converters.coreml import convert_float
    from core import rewrites
    from core.workspace import ExportSource

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        SqueezeExcitation(16, 8, scale_activation=nn.Hardsigmoid),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    net[1].running_mean.uniform_(-0.5, 0.5)
    rewritten, done = rewrites.module_rewrites(net)
    assert done, "the hardsigmoid rewrite (add 3, relu6, mul) must apply, or this test checks nothing"
    source = ExportSource("se", (3, 16, 16), list("abcd"), [0.5] * 3, [0.25] * 3, net)
    from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

    fp16 = convert_float(rewritten, source)
    # palettizing rebuilds the program through Core ML's default passes, which would fuse again
    lut = palettize_weights(fp16, OptimizationConfig(OpPalettizerConfig(mode="kmeans", nbits=8, weight_threshold=0)))
    x = torch.randn(8, 3, 16, 16)
    for name, package in (("fp16", fp16), ("pal8", lut)):
        path = tmp_path / f"se_{name}.mlpackage"
        package.save(str(path))
        loaded = load_into(fold_batchnorm(rewritten), read_weights(path)).eval()
        with torch.no_grad():
            assert torch.allclose(loaded(x), net(x), atol=5e-2), name  # fp16 and 8-bit LUT weights


def test_a_weight_table_read_by_constant_indices_reads_back_through_its_reads(tmp_path, tiny_attention):
    """EfficientViT's attention biases: Core ML stores `table[:, idxs][head]`, not the table, so matching by shape
    found nothing for it. Matched through the reads (lookup_reads) and written back, the network runs with the
    file's values: a table changed in the file shows in the read-back."""
    from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

    from converters.coreml import convert_float
    from converters.coreml_weights import lookup_reads
    from core.workspace import ExportSource

    torch.manual_seed(0)
    net = tiny_attention().eval()
    shape = (1, 32, 32)
    reads = lookup_reads(net, shape, ["table"])
    assert [tuple(m.shape) for m in reads["table"]] == [(64, 64)]  # the one head's row the network reads
    source = ExportSource("attn", shape, list("abcd"), [0.5], [0.25], net)
    fp16 = convert_float(net, source)
    lut = palettize_weights(fp16, OptimizationConfig(OpPalettizerConfig(mode="kmeans", nbits=8, weight_threshold=0)))
    x = torch.randn(4, *shape)
    for name, package in (("fp16", fp16), ("pal8", lut)):
        path = tmp_path / f"attn_{name}.mlpackage"
        package.save(str(path))
        with pytest.raises(ConversionError, match="`table`"):  # by shape alone: no (2, 64) weight in the file
            load_into(fold_batchnorm(net), read_weights(path))
        loaded = load_into(fold_batchnorm(net), read_weights(path), path.name, shape)
        assert torch.allclose(loaded.table[1], net.table[1], atol=2e-3), name  # fp16 / 8-bit LUT of the read row
        with torch.no_grad():
            assert torch.allclose(loaded(x), net(x), atol=5e-2), name
    # the file's table is what runs: a table scaled in the file is read back scaled, one far off is not found
    weights = read_weights(tmp_path / "attn_fp16.mlpackage")
    table = next(n for n, w in weights.items() if w.shape == (64, 64))
    scaled = load_into(fold_batchnorm(net), {**weights, table: weights[table] * 1.3}, "scaled", shape)
    assert torch.allclose(scaled.table[1], net.table[1] * 1.3, atol=2e-3)
    with pytest.raises(ConversionError, match="`table`"):
        load_into(fold_batchnorm(net), {**weights, table: weights[table] + 5.0}, "far off", shape)


def test_w8a8_package_of_a_hardswish_block_holds_the_graphs_weights(tmp_path, calibrated):
    """The rewritten hardswish quantizes its 3 and 1/6 as int8 constants; Core ML folds them into its ops. They are
    not weights: the W8A8 check compares the conv/linear weights and the activation scales, and passes."""
    import torch.nn as nn

    from converters.coreml import convert_w8a8
    from converters.coreml_checks import graph_weights_and_scales, w8a8_checks
    from core import qat
    from core.rewrites import HardSwish
    from core.workspace import ExportSource

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), HardSwish(), nn.Conv2d(8, 8, 1), HardSwish(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    program = qat.convert(calibrated(net, (3, 8, 8)), fold=True)
    weights, scales = graph_weights_and_scales(program)
    assert [w.shape for w in weights] == [(8, 3, 3, 3), (8, 8, 1, 1), (4, 8)]
    assert any(abs(s - qat.RELU6_SCALE) < 1e-7 for s in scales)  # the relu6 grid is an activation scale
    source = ExportSource("hs", (3, 8, 8), list("abcd"), [0.5] * 3, [0.25] * 3, net, program=program)
    path = tmp_path / "hs_w8a8.mlpackage"
    convert_w8a8(source).save(str(path))
    checks = w8a8_checks(path, program)
    assert checks["quantized_weights"] == 3 and checks["max_relative_weight_diff"] < 2e-3


def test_w8a8_check_reads_the_scale_of_a_residual_add_that_coremltools_rescales(tmp_path, calibrated):
    """coremltools quantizes a residual sum in its first input's steps; the graph's own scale for the sum is
    then on the dequantize that reads it back. The check finds it there, and still misses a scale not in the file."""
    import torch.nn as nn

    from converters.coreml import ConversionError, convert_w8a8
    from converters.coreml_checks import activation_scales, graph_weights_and_scales, w8a8_checks
    from core import qat
    from core.workspace import ExportSource

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            # a conv reads the sum, so no later op shares its scale (pooling would)
            self.head = nn.Sequential(nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

        def forward(self, x):
            x = self.stem(x)
            return self.head(x + self.conv(x))

    torch.manual_seed(0)
    net = Residual().eval()
    program = qat.convert(calibrated(net, (3, 8, 8)), fold=True)
    path = tmp_path / "res_w8a8.mlpackage"
    convert_w8a8(ExportSource("res", (3, 8, 8), list("abcd"), [0.5] * 3, [0.25] * 3, net, program=program)).save(str(path))
    add = next(n for n in program.graph.nodes if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
               and "dequantize" not in str(n.target) and "add" in str(n.args[0].target))
    scale = add.args[1]
    assert sum(abs(s - scale) <= 2e-3 * scale for s in activation_scales(path)) == 1  # the dequantize's only
    assert w8a8_checks(path, program)["graph_activation_scales"] == len(set(graph_weights_and_scales(program)[1]))
    add.args = (add.args[0], add.args[1] * 1.5, *add.args[2:])  # a graph the file was not made from
    with pytest.raises(ConversionError, match="activation scales not found"):
        w8a8_checks(path, program)


def test_w8a8_check_recovers_the_scale_of_a_sum_read_only_by_another_sum(tmp_path, calibrated):
    """`a + b + c` (RepViT's token mixer, MobileOne's branches): coremltools rescales both adds, the second by the
    first's own output scale, so that scale is written nowhere in the file. The check undoes the rescaling (each add
    divided by one input's scale) and finds it; a scale the file was not made from is still missing."""
    import torch.nn as nn

    from converters.coreml import ConversionError, convert_w8a8
    from converters.coreml_checks import graph_weights_and_scales, w8a8_checks
    from core import qat
    from core.workspace import ExportSource

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.conv, self.conv1 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1)
            self.head = nn.Sequential(nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

        def forward(self, x):
            x = self.stem(x)
            return self.head(self.conv(x) + self.conv1(x) + x)

    torch.manual_seed(0)
    net = Chain().eval()
    program = qat.convert(calibrated(net, (3, 16, 16)), fold=True)
    path = tmp_path / "chain_w8a8.mlpackage"
    convert_w8a8(ExportSource("chain", (3, 16, 16), list("abcd"), [0.5] * 3, [0.25] * 3, net, program=program)).save(str(path))
    checks = w8a8_checks(path, program)
    assert checks["rescaled_adds"] == 2
    assert checks["graph_activation_scales"] == len(set(graph_weights_and_scales(program)[1]))
    first = next(n for n in program.graph.nodes if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
                 and "dequantize" not in str(n.target) and "add" in str(n.args[0].target))
    first.args = (first.args[0], first.args[1] * 1.3, *first.args[2:])  # the inner sum's scale (x 1.5 is the input's)
    with pytest.raises(ConversionError, match="activation scales not found"):
        w8a8_checks(path, program)


def test_a_noop_slice_converts_to_core_ml_and_reads_back(tmp_path, ghost_gate):
    """GhostNet's `out[:, :C]` of a C-channel tensor became an `alias` in the decomposed program, which Core ML's
    converter refused ("Unsupported fx node alias"): the zoo's ghostnet_100 had no Core ML file at all."""
    from converters.coreml import convert_float
    from core.workspace import ExportSource

    torch.manual_seed(0)
    net = ghost_gate().eval()
    path = tmp_path / "ghost.mlpackage"
    convert_float(net, ExportSource("ghost", (1, 32, 32), list("abcd"), [0.5], [0.25], net)).save(str(path))
    loaded = load_into(fold_batchnorm(net), read_weights(path))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-2)
