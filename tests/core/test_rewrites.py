"""Module rewrites (core/rewrites.py): timm's train-time branches collapsed into their inference conv."""

import torch
import torch.nn as nn

from core import rewrites


def _randomize_norms(model: nn.Module) -> nn.Module:
    """Norm statistics away from 1/0, so that collapsing them into a conv is not trivially exact."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def _mobileone_net() -> nn.Module:
    from timm.models.byobnet import MobileOneBlock

    # a strided 3x3 stem block with its scale branch, then a depthwise block with conv, scale and identity branches
    return nn.Sequential(MobileOneBlock(1, 8, 3, stride=2, num_conv_branches=2),
                         MobileOneBlock(8, 8, 3, group_size=1, num_conv_branches=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def _convs(model: nn.Module, shape) -> int:
    gm = torch.export.export(model.eval(), (torch.randn(1, *shape),)).graph_module
    return sum(n.op == "call_function" and "conv" in str(n.target) for n in gm.graph.nodes)


def test_timm_branches_become_one_conv_each_and_compute_the_same():
    net, shape = _randomize_norms(_mobileone_net()).eval(), (1, 32, 32)
    rewritten, summary, diff = rewrites.apply(net, shape)
    assert [(s["from"], s["count"]) for s in summary] == [("MobileOneBlock", 2)]
    assert diff < rewrites.FLOAT_TOLERANCE
    assert not any(isinstance(m, nn.BatchNorm2d) for m in rewritten.modules())  # every branch's norm went in
    assert (_convs(net, shape), _convs(rewritten, shape)) == (6, 2)  # per block 2 conv branches + a 1x1 scale conv -> 1
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the original is not changed


def test_a_users_own_method_of_that_name_is_not_called():
    class Mine(nn.Module):  # `reparameterize` here may mean anything (a VAE's sampling, say)
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.calls = 0

        def reparameterize(self):
            self.calls += 1

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    rewritten, done = rewrites.module_rewrites(Mine())
    assert done == [] and rewritten.calls == 0
