"""BatchNorms that follow no conv (core/standalone_norm.py): found from the export graph, rewritten exactly, and the
int8 files then run them as int8 convs (no float island in the .tflite, nothing outside XNNPACK)."""

import torch
import torch.nn as nn

from core import qat, rewrites, standalone_norm


class _RepVggStyle(nn.Module):
    """RepViT's `bn(conv(x) + conv1(x) + x)`, MobileOne's identity branch `relu(conv(x) + bn(x))`, a conv whose
    output feeds both a BatchNorm and a residual add, and a classifier head `bn1d -> dropout -> linear`."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv, self.conv1, self.bn = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1, groups=8), nn.BatchNorm2d(8)
        self.branch, self.identity = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)), nn.BatchNorm2d(8)
        self.shared, self.shared_bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.head_bn, self.drop, self.fc = nn.BatchNorm1d(8), nn.Dropout(0.1), nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = self.bn(self.conv(x) + self.conv1(x) + x)
        x = torch.relu(self.branch(x) + self.identity(x))
        s = self.shared(x)
        x = self.shared_bn(s) + s
        return self.fc(self.drop(self.head_bn(x.mean((2, 3)))))


def _with_statistics(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


SHAPE = (3, 16, 16)


def test_standalone_batchnorms_are_found_from_the_graph_not_by_class():
    found = standalone_norm.find(_with_statistics(_RepVggStyle()), SHAPE)
    # stem.1 and branch.1 follow their conv alone: the quantizers fold those, so they are left as they are
    assert found == {"bn": None, "identity": None, "shared_bn": None, "head_bn": "fc"}


def test_rewrite_is_exact_in_float_and_leaves_no_batchnorm_outside_a_conv():
    net = _with_statistics(_RepVggStyle())
    rewritten, summary, diff = rewrites.apply(net, SHAPE)
    assert diff < 1e-5
    kinds = {(s["from"], s["to"]): s["count"] for s in summary}
    assert kinds == {("BatchNorm2d", "depthwise 1x1 Conv2d"): 3, ("BatchNorm1d", "folded into the Linear after it"): 1}
    assert standalone_norm.find(rewritten, SHAPE) == {}
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(net(x), rewritten.eval()(x), atol=1e-5)


def test_the_int8_files_run_the_rewritten_batchnorms_as_int8(tmp_path, calibrated):
    """Without the rewrite, the .tflite kept float ops around the BatchNorms (RepViT's int8 .tflite did)."""
    import litert_torch

    from converters.executorch import delegation_checks, lower
    from converters.tflite import _int8_config, inspect

    def int8_files(net, pte=True):
        torch.manual_seed(1)
        prepared = calibrated(net, SHAPE, batch=8)
        folded, unfolded = qat.convert(prepared, fold=True), qat.convert(prepared, fold=False)
        unfolded.training = False
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.tflite"
        litert_torch.convert(unfolded, (torch.zeros(1, *SHAPE),), quant_config=_int8_config()).export(str(path))
        if not pte:  # ExecuTorch's own BatchNorm pass cannot even lower the lone BatchNorms (KeyError 'val')
            return inspect(path)[0], None
        program, table = lower(folded, SHAPE)
        return inspect(path)[0], delegation_checks(program, table, "int8")

    original = _with_statistics(_RepVggStyle())
    before, _ = int8_files(original, pte=False)
    assert before["float_ops"], before["ops"]  # the fault this rewrite mends: float ops for the lone BatchNorms
    rewritten, _, _ = rewrites.apply(original, SHAPE)
    after, pte = int8_files(rewritten)
    assert after["fully_int8"] and after["float_ops"] == {}, after["ops"]
    assert pte["fully_delegated"], pte["non_delegated_ops"]
