"""Arithmetic with an identity scalar (core/identity_arithmetic.py), removed exactly in graph preparation."""

import torch
import torch.nn as nn

from core.export_check import export_training_graph
from core.rewrites import graph_rewrites


class _SumFromZero(nn.Module):
    """timm's MobileOneBlock without identity or scale branch: `out = 0; out += conv(x)`, then `out += 0`."""

    def __init__(self):
        super().__init__()
        self.conv, self.conv1 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        identity_out, scale_out = 0, 0
        out = scale_out
        out += self.conv(x)
        out += identity_out
        y = self.conv1(torch.relu(out))
        y += identity_out
        return (y * 1) / 1


SHAPE = (3, 16, 16)



def test_identity_arithmetic_is_removed_exactly():
    torch.manual_seed(0)
    net = _SumFromZero().eval()
    gm = export_training_graph(net, SHAPE)
    done = {r["from"]: r["count"] for r in graph_rewrites(gm)}
    assert done["identity arithmetic (x + 0, x * 1)"] == 5
    assert "division by a constant" not in done  # `/ 1` is removed in one step, not made `* 1.0` first
    left = [n.target for n in gm.graph.nodes if n.op == "call_function"
            and any(isinstance(a, (int, float)) and not isinstance(a, bool) for a in n.args[1:2])]
    assert left == []
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(gm(x), net(x))


def test_the_fp32_pte_takes_a_sum_from_zero_whole():
    """Without the step, ExecuTorch cast the int 0 with _to_dim_order_copy ops that XNNPACK refused (MobileOne: 8)."""
    from converters.executorch import delegation_checks, lower

    program, table = lower(_SumFromZero().eval(), SHAPE)
    checks = delegation_checks(program, table, "fp32")
    assert checks["fully_delegated"], checks["non_delegated_ops"]
