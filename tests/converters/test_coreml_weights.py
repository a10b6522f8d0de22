"""Core ML weights on Linux: BatchNorm subclasses folded like BatchNorm, and a read-back that matches the file's
weights to the network by shape, value and graph position, not by name."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from converters import ConversionError
from converters.coreml_fold import fold_batchnorm
from converters.coreml_weights import load_into, match_weights, read_weights


class BatchNormAct(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: a BatchNorm2d subclass whose forward is F.batch_norm, then its activation."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, self.eps)
        return self.act(x)


class BatchNormScaled(nn.BatchNorm2d):
    """A subclass that does more than batch norm: it must not be taken apart."""

    def forward(self, x):
        return super().forward(x) * 2


def tiny(norm=BatchNormAct) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), norm(8), nn.Conv2d(8, 8, 3, padding=1, bias=False),
                        norm(8), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def test_batchnorm_subclass_with_an_activation_is_folded_into_its_conv():
    net = tiny()
    folded = fold_batchnorm(net)
    assert not [k for k in folded.state_dict() if "running_mean" in k]  # no batch norm left to compute
    assert "batch_norm" not in folded.code
    assert [k for k, v in folded.state_dict().items() if v.dim() == 1] == ["0.bias", "2.bias", "4.bias", "8.bias"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)


def test_a_subclass_that_computes_more_than_batch_norm_is_left_alone():
    net = tiny(BatchNormScaled)
    folded = fold_batchnorm(net)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)
    assert len([m for m in folded.modules() if isinstance(m, BatchNormScaled)]) == 2


@pytest.fixture(scope="module")
def fp16_package(tmp_path_factory):
    from converters.coreml import convert_float
    from core.workspace import ExportSource

    net = tiny()
    source = ExportSource("bnact", (3, 32, 32), list("abcd"), [0.5] * 3, [0.25] * 3, net)
    path = tmp_path_factory.mktemp("coreml") / "bnact_fp16.mlpackage"
    convert_float(net, source).save(str(path))
    return net, path


def test_fp16_readback_of_a_batchnorm_subclass_network(fp16_package):
    net, path = fp16_package
    loaded = load_into(fold_batchnorm(net), read_weights(path), path.name).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        diff = (loaded(x) - net(x)).abs().max()
    assert diff < 1e-2  # fp16 weights
    assert diff > 0  # the file's fp16 values, not the network's own


def test_readback_does_not_depend_on_weight_names(fp16_package):
    """Core ML names a weight anonymously (`const_207_to_fp16`) when a pass rebuilt it: renaming every weight
    and shuffling their order changes nothing."""
    net, path = fp16_package
    weights = read_weights(path)
    renamed = {f"const_{i}_to_fp16": weights[n] for i, n in enumerate(reversed(list(weights)))}
    a, b = load_into(fold_batchnorm(net), weights), load_into(fold_batchnorm(net), renamed)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_equal_candidates_are_told_apart_by_graph_position():
    """Two convs of one shape with identical values (zero biases): position decides, in graph order."""
    net = fold_batchnorm(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)))
    for conv in net.children():
        nn.init.zeros_(conv.bias)
    w0, w1 = (c.weight.detach().numpy() for c in net.children())
    zeros = np.zeros(4, np.float16)
    weights = {"a": w0.astype(np.float16), "b": zeros, "c": w1.astype(np.float16), "d": zeros + 0}
    matched, unmatched = match_weights(net, weights)
    assert not unmatched and matched["0.weight"] is weights["a"] and matched["1.weight"] is weights["c"]
    assert matched["0.bias"] is weights["b"] and matched["1.bias"] is weights["d"]


def test_a_tensor_missing_from_the_file_is_named_briefly(fp16_package, capsys):
    net, path = fp16_package
    weights = {n: w for n, w in read_weights(path).items() if w.shape != (8, 8, 3, 3)}
    weights.update({f"junk_{i}": np.full((4, 8), 9.0, np.float16) for i in range(5)})
    big = fold_batchnorm(nn.Sequential(*tiny(), *(nn.Linear(8, 4) for _ in range(4))))
    with pytest.raises(ConversionError) as error:
        load_into(big, weights, path.name)
    message = str(error.value)
    assert path.name in message and "and " in message and "more" in message and "macOS" in message
    assert "`2.weight` (8, 8, 3, 3) (no weight of that shape)" in message
    assert len(message) < 700
    assert "9.weight" in capsys.readouterr().out  # the full list: printed, which the CLI sends to the log


def test_equal_tensors_share_the_one_weight_core_ml_keeps_for_them():
    """Core ML deduplicates equal consts: two heads whose BatchNorm saw the same features have equal running
    statistics, and the file holds them once. Both read back from that one weight; a different tensor does not."""
    net = nn.Sequential(nn.BatchNorm1d(6), nn.BatchNorm1d(6)).eval()
    for bn in net:
        bn.running_mean.copy_(torch.linspace(-1, 1, 6))
        bn.running_var.copy_(torch.linspace(0.5, 2, 6))
    weights = {"mean": torch.linspace(-1, 1, 6).numpy().astype(np.float16),
               "var": torch.linspace(0.5, 2, 6).numpy().astype(np.float16),
               "gamma": np.ones(6, np.float16), "beta": np.zeros(6, np.float16)}
    matched, unmatched = match_weights(net, weights)
    assert not unmatched and matched["0.running_mean"] is matched["1.running_mean"] is weights["mean"]
    net[1].running_var.mul_(3)
    assert [r["key"] for r in match_weights(net, weights)[1]] == ["1.running_var"]


def test_the_w8a8_check_pairs_weights_by_shape_and_value_not_by_coremltools_numbering():
    """coremltools numbers its dequantize ops in its own order: on timm fastvit_t8 it left the graph's order
    from one block on, and the check, pairing by position, called the file's structure changed."""
    import numpy as np
    import pytest

    from converters.base import ConversionError
    from converters.coreml_checks import _paired

    rng = np.random.default_rng(0)
    ours = [rng.normal(size=s).astype(np.float32) for s in [(8, 3, 3, 3), (8, 1, 1, 1), (8, 1, 1, 1), (4, 8)]]
    theirs = [ours[2] * 1.0001, ours[0], ours[3], ours[1]]  # fp16-like rounding, another order
    paired = _paired(ours, theirs, "m.mlpackage")
    assert all(np.allclose(a, b, rtol=1e-3) for a, b in zip(ours, paired))
    with pytest.raises(ConversionError, match=r"\(8, 1, 1, 1\): 2 in the graph, 1 in the file"):
        _paired(ours, theirs[:3] + [np.zeros((8, 2), np.float32)], "m.mlpackage")


def test_a_layer_scale_after_a_conv_is_folded_like_core_ml_folds_it(tmp_path):
    """timm's FastViT scales its MLP's last conv per channel (`fc2(x) * gamma`, through a dropout): Core ML folds
    gamma into the conv, and the read-back found neither gamma nor the conv. Folded on both sides, the file
    reads back; a (C,) tensor, which scales the width, and a conv used twice are left alone."""
    from converters.coreml import convert_float
    from converters.coreml_fold import fold_channel_scales
    from core.workspace import ExportSource

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.drop = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Dropout(0.1)
            self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
            self.width = nn.Parameter(torch.rand(6) + 0.5)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = self.drop(self.fc2(F.relu(self.fc1(x)))) * self.gamma
            x = self.fc1(x[:, :3]) * self.width  # a conv used twice, scaled along the width: not folded
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    net = Scaled().eval()
    folded = fold_batchnorm(net)
    assert "gamma" not in folded.state_dict() and "width" in folded.state_dict()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)
    source = ExportSource("scaled", (3, 6, 6), list("abcd"), [0.5] * 3, [0.25] * 3, net)
    path = tmp_path / "scaled.mlpackage"
    convert_float(net, source).save(str(path))
    loaded = load_into(fold_batchnorm(net), read_weights(path))
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-2)
    assert fold_channel_scales(torch.fx.symbolic_trace(nn.Conv2d(3, 3, 1))) is not None  # nothing to fold: unchanged


def test_conv_norm_pairs_fold_in_a_network_fx_cannot_trace_and_a_norm_at_its_initial_values_reads_back(tmp_path):
    """timm's MobileViTv2 does not trace with torch.fx, and its ConvNormAct keeps conv and BatchNorm as named
    children, not a Sequential: nothing was folded and 102 tensors found no weight in the Core ML file. Folded
    where the module's output shows it is conv-then-norm, the file reads back; a GroupNorm still at weight 1 and
    bias 0 (Core ML drops that multiply and add) reads back as itself."""
    from converters.coreml import convert_float
    from core.workspace import ExportSource

    class ConvNormAct(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(cin, cout, 3, padding=1, bias=False), BatchNormAct(cout)

        def forward(self, x):
            return self.bn(self.conv(x))

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.block = ConvNormAct(3, 8), ConvNormAct(8, 8)
            self.norm, self.head = nn.GroupNorm(1, 8), nn.Linear(8, 4)

        def forward(self, x):
            if x.shape[-1] > 4:  # Python control flow on a size: torch.fx cannot trace it
                x = self.stem(x)
            return self.head(self.norm(self.block(x)).mean((2, 3)))

    torch.manual_seed(0)
    net = Untraceable().eval()
    for bn in (net.stem.bn, net.block.bn):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(net)
    folded = fold_batchnorm(net)
    assert not any(k.startswith(("stem.bn", "block.bn")) and "running" in k for k in folded.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)
    path = tmp_path / "untraceable.mlpackage"
    convert_float(net, ExportSource("u", (3, 8, 8), list("abcd"), [0.5] * 3, [0.25] * 3, net)).save(str(path))
    loaded = load_into(fold_batchnorm(net), read_weights(path))
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-2)


class AffineAfter(nn.Module):
    """timm hgnetv2's ConvBNAct with its LearnableAffineBlock: conv, batch norm, ReLU, then `scale * x + bias`
    with a one-element scale and bias."""

    def __init__(self, cin: int, cout: int, scale: float, bias: float):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        self.scale, self.bias = nn.Parameter(torch.tensor([scale])), nn.Parameter(torch.tensor([bias]))

    def forward(self, x):
        return self.scale * self.act(self.bn(self.conv(x))) + self.bias


def test_a_scalar_scale_that_fp16_rounds_to_one_is_not_read_back_as_another_scalar(tmp_path):
    """timm hgnetv2_b0: two LearnableAffineBlock scales (1.0004) are 1.0 in fp16, so Core ML drops their multiply
    and const. The read-back paired them with the closest free scalars, the input normalization's mean (0.13) and
    1/std (3.46), within the 0.9 allowed for compressed weights: the fp16 file read back at 32.5% accuracy against
    86.5%. A dense fp16 const is the network's value to fp16 rounding or not that tensor at all; a scalar that is
    1 (or 0) in fp16 and has no such const is read back as that identity, not as the 0.9995 one step away."""
    from converters.coreml import convert_float
    from converters.coreml_weights import FileWeights
    from core.workspace import ExportSource

    torch.manual_seed(0)
    net = nn.Sequential(AffineAfter(1, 8, 1.0004, 0.01), AffineAfter(8, 8, 0.9995, -0.02),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "affine.mlpackage"
    convert_float(net, ExportSource("affine", (1, 32, 32), list("abcd"), [0.13], [0.29], net)).save(str(path))
    weights = read_weights(path)
    assert isinstance(weights, FileWeights) and not weights.compressed
    matched, unmatched = match_weights(fold_batchnorm(net), weights)
    assert not unmatched and np.asarray(matched["0.scale"]).reshape(-1).tolist() == [1.0]  # the fp16 identity
    loaded = load_into(fold_batchnorm(net), weights, path.name)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-2)
    # no identity in fp16 and no const of its value: refused, naming the tensor, not paired with the mean or 1/std
    net[0].scale.data.fill_(1.5)
    with pytest.raises(ConversionError, match="`0.scale`"):
        load_into(fold_batchnorm(net), weights, path.name)
