"""Graph preparation (core/graph_prep.py): each step exact in float, and listed as a rewrite."""

import torch

from core.export_check import export_training_graph
from core.rewrites import graph_rewrites


def test_noop_slice_nearest_upsampling_and_division_by_a_constant_are_rewritten_exactly(ghost_gate):
    torch.manual_seed(0)
    net = ghost_gate().eval()
    gm = export_training_graph(net, (1, 32, 32))
    done = {r["from"]: r for r in graph_rewrites(gm)}
    assert done["no-op slice / alias"]["count"] == 1 and done["upsample_nearest2d"]["count"] == 1
    assert done["division by a constant"]["count"] == 1  # RepViT's (a + b) / 2, as (a + b) * 0.5
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.slice.Tensor not in ops and torch.ops.aten.upsample_nearest2d.vec not in ops
    assert torch.ops.aten.div.Tensor not in ops
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(gm(x), net(x))  # the same values, not merely close


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


def test_a_slice_without_its_trailing_arguments_is_read_with_their_defaults():
    """`slice(x, dim, start, end)` with step left out (torchvision's shufflenet_v2 in the zoo): it was read as
    three values and export failed with 'not enough values to unpack'."""
    class Halves(torch.nn.Module):
        def forward(self, x):
            return x[:, :4] + x[:, 4:]

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), Halves())
    gm = export_training_graph(net.eval(), (3, 4, 4))
    slices = [n for n in gm.graph.nodes if n.target == torch.ops.aten.slice.Tensor]
    assert slices
    for node in slices:  # as the exporter writes it for a channel split: no step, and no end for `x[:, 4:]`
        node.args = tuple(a for i, a in enumerate(node.args) if i < 4 and a is not None) or node.args
    gm.recompile()
    graph_rewrites(gm)  # no error; and the halves are not no-ops, so they stay
    assert sum(n.target == torch.ops.aten.slice.Tensor for n in gm.graph.nodes) == len(slices)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(gm(x), net(x))


class _NormAfter(torch.nn.Module):
    """A training-mode BatchNorm (batch statistics) after an activation written one way or another."""

    def __init__(self, activation):
        super().__init__()
        self.activation = activation

    def forward(self, x):
        return torch.nn.functional.batch_norm(self.activation(x), None, None, training=True)


def test_the_float_check_is_not_fooled_by_rounding_that_batch_statistics_amplify():
    """tinynet_a in the zoo: SiLU as x * sigmoid(x) rounds differently in float32, and a training graph's
    BatchNorm over a nearly constant batch amplified that to 1e-5..3e-3 of the output; the check said the
    rewrite changed the network. In float64 the same rewrite is exact to ~1e-12; a real change still shows."""
    from core.graph_prep import FLOAT_TOLERANCE, float_difference

    x = (3 + 1e-2 * torch.randn(2, 64, generator=torch.Generator().manual_seed(0)),)
    # IEEE rounding, the same on every CPU: (x + 1000) - 1000 is x to within float32's step at 1000 (6e-5)
    plain = torch.fx.symbolic_trace(_NormAfter(lambda x: x))
    rounded = torch.fx.symbolic_trace(_NormAfter(lambda x: (x + 1000) - 1000))
    with torch.no_grad():
        a, b = plain(*x), rounded(*x)
    assert float((a - b).abs().max() / a.abs().max()) > FLOAT_TOLERANCE  # what a float32 check would say
    assert float_difference(plain, rounded, x) < 1e-9
    silu = torch.fx.symbolic_trace(_NormAfter(torch.nn.functional.silu))
    rewritten = torch.fx.symbolic_trace(_NormAfter(lambda x: x * torch.sigmoid(x)))
    wrong = torch.fx.symbolic_trace(_NormAfter(lambda x: x * torch.sigmoid(x) + 1e-3 * x * x))
    assert float_difference(silu, rewritten, x) < 1e-9
    assert float_difference(silu, wrong, x) > FLOAT_TOLERANCE  # a real change still shows


def test_batched_matmul_becomes_bmm_exactly_and_broadcasting_is_left_alone():
    """EfficientViT's 3-d `q.transpose(-2, -1) @ k` and a 4-d multi-head product become bmm (ExecuTorch's
    decomposition of matmul left int8 expand_copy ops outside XNNPACK); a product that broadcasts its batch
    is not a bmm and stays."""

    class Heads(torch.nn.Module):
        def forward(self, x):
            q = x.flatten(2).view(x.shape[0], 2, 4, 16)  # [B, heads, d, N]
            scores = q.transpose(-2, -1) @ q  # 4-d, the same batch dims
            mixed = x.flatten(2) @ x.flatten(2).transpose(-2, -1)  # 3-d
            shared = q @ torch.ones(1, 1, 16, 3)  # broadcasts over batch and heads: left as matmul
            return scores.sum((1, 2, 3)) + mixed.sum((1, 2)) + shared.sum((1, 2, 3))

    gm = export_training_graph(Heads(), (8, 4, 4))
    done = {r["from"]: r["count"] for r in graph_rewrites(gm)}
    assert done.get("batched matmul") == 2
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.aten.bmm.default) == 2 and targets.count(torch.ops.aten.matmul.default) == 1
    x = torch.randn(3, 8, 4, 4)
    with torch.no_grad():
        assert torch.equal(gm(x), Heads()(x))


def test_rank_six_permutes_are_written_at_the_lowest_rank_exactly():
    """EfficientViT's window partition (rank 6, one window: size-1 dims) and MobileViT's patch unfolding (rank
    6, dims that move together): Core ML allows rank 5 at most, and its int8 conversion failed on them."""

    class Windows(torch.nn.Module):
        def forward(self, x):
            b, c, h, w = x.shape
            y = x.permute(0, 2, 3, 1)  # [B, H, W, C]
            windows = y.view(b, 1, h, 1, w, c).transpose(2, 3).reshape(b, h, w, c)  # one window
            patches = x.reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c, -1, 4)
            return torch.cat([windows.flatten(1), patches.flatten(1)], 1)  # data movement only: bit-exact

    gm = export_training_graph(Windows(), (3, 8, 8))
    done = {r["from"]: r["count"] for r in graph_rewrites(gm)}
    assert done.get("permute of rank >= 5") == 2
    ranks = [len(n.meta["val"].shape) for n in gm.graph.nodes if n.op == "call_function"
             and isinstance(n.meta.get("val"), torch.Tensor)]
    assert max(ranks) <= 5, ranks
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(gm(x), Windows()(x))


def test_the_float_check_runs_an_int8_graph_in_float32(calibrated):
    """Export re-runs graph preparation on the converted int8 graph: a model quantized before a step existed gets
    that step there (the zoo's efficientvit_m0: matmul -> bmm), and its quantize ops take float32 only."""
    from core import qat
    from core.graph_prep import _example, float_difference

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3))
    converted = qat.convert(calibrated(net, (1, 8, 8)), fold=True)
    graph = torch.export.export(converted, (torch.zeros(1, 1, 8, 8),)).module()
    assert float_difference(graph, graph, _example(graph)) == 0.0


def test_an_expand_that_arithmetic_would_broadcast_anyway_is_dropped_exactly():
    """MobileViTv2's `relu(v) * context.expand_as(v)`: XNNPACK left the expand outside and LiteRT's converter
    failed on the BROADCAST_TO. An expand also read by something else, or whose result the arithmetic needs at
    its expanded size, stays."""

    class Context(torch.nn.Module):
        def forward(self, x):
            v = x * 2
            context = x.sum(-1, keepdim=True)  # [B, C, H, 1]
            mixed = torch.relu(v) * context.expand_as(v)
            kept = context.expand(-1, -1, -1, 4)  # also returned: stays
            grown = x[:, :, :, :1].expand_as(x) + torch.ones(1, 1, 1, 1)  # needs the expanded size: stays
            return torch.cat([mixed.flatten(1), kept.flatten(1), grown.flatten(1)], 1)

    gm = export_training_graph(Context(), (3, 4, 4))
    done = {r["from"]: r["count"] for r in graph_rewrites(gm)}
    assert done.get("expand before broadcasting arithmetic") == 1
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.aten.expand.default) + targets.count(torch.ops.aten.expand_as.default) == 2
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(gm(x), Context()(x))


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
