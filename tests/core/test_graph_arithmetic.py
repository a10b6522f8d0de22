"""core/graph_arithmetic.py: the graph preparation steps that write arithmetic another way, each checked in
float and listed as a rewrite."""

import torch

from core.export_check import export_training_graph
from core.rewrites import graph_rewrites


def test_silu_becomes_sigmoid_times_its_input_exactly():
    """LiteRT has no int8 SiLU: a quantized silu ran as float LOGISTIC and MUL in the .tflite."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 1))
    gm = export_training_graph(net.eval(), (3, 8, 8))
    done = graph_rewrites(gm)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.silu.default not in targets
    assert torch.ops.aten.sigmoid.default in targets and torch.ops.aten.mul.Tensor in targets
    assert {"from": "silu", "to": "sigmoid + mul", "count": 1} == {k: d[k] for d in done if d["from"] == "silu"
                                                                   for k in ("from", "to", "count")}
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(gm(x), net(x), atol=1e-6)



def test_int_scalars_of_float_arithmetic_become_float_and_floor_division_is_left_alone():
    """An int scalar became an int64 constant cast by a _to_dim_order_copy outside XNNPACK; a division with a
    rounding mode is not a multiplication by the reciprocal, so it stays."""

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.div(x * 3, 2, rounding_mode="floor") + 1

    gm = export_training_graph(Net(), (2, 4, 4))
    done = {r["from"]: r["count"] for r in graph_rewrites(gm)}
    assert done.get("int scalar in float arithmetic") == 2 and "division by a constant" not in done
    assert [n.args[1] for n in gm.graph.nodes if n.target in (torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor)] == [3.0, 1.0]
    x = torch.randn(2, 2, 4, 4) * 4
    with torch.no_grad():
        assert torch.equal(gm(x), Net()(x))



def test_a_trailing_sum_and_group_norm_become_ops_xnnpack_takes():
    """MobileViTv2's context vector (`sum(-1, keepdim=True)`) and its GroupNorm1 layers: XNNPACK has neither
    (21 group norms and 9 sums outside the delegate), and takes mean over the last two dims of a 4-d tensor."""

    class Norms(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.one, self.two = torch.nn.GroupNorm(1, 4), torch.nn.GroupNorm(2, 4, affine=False)
            with torch.no_grad():
                self.one.weight.uniform_(0.5, 1.5)
                self.one.bias.uniform_(-0.5, 0.5)

        def forward(self, x):
            y = self.two(self.one(x) * 3)
            return torch.cat([y.sum(-1, keepdim=True).flatten(1), y.sum((2, 3)).flatten(1)], 1)

    net = Norms()
    gm = export_training_graph(net, (4, 6, 5))
    done = {r["from"]: r["count"] for r in graph_rewrites(gm)}
    assert done.get("sum over trailing dims") == 2 and done.get("group_norm") == 2
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert not targets & {torch.ops.aten.group_norm.default, torch.ops.aten.sum.dim_IntList}
    means = [n for n in gm.graph.nodes if n.target == torch.ops.aten.mean.dim]
    assert all(n.args[1] == [2, 3] and n.args[2] and len(n.args[0].meta["val"].shape) == 4 for n in means)
    x = torch.randn(3, 4, 6, 5) * 2 + 1
    with torch.no_grad():
        assert torch.allclose(gm(x), net(x), atol=1e-4)
