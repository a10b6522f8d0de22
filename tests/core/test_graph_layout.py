"""core/graph_layout.py: the graph preparation steps that move data, each bit-exact and listed as a rewrite."""

import torch

from core.export_check import export_training_graph
from core.rewrites import graph_rewrites


def test_batched_matmul_becomes_bmm_exactly_and_broadcasting_is_left_alone():
    """EfficientViT's 3-d `q.transpose(-2, -1) @ k` and a 4-d multi-head product become bmm (ExecuTorch's
    decomposition of matmul left int8 expand_copy ops outside XNNPACK); a product that broadcasts its batch
    is not a bmm and stays."""

    class Heads(torch.nn.Module):
        def forward(self, x):
            q = x.flatten(2).view(x.shape[0], 2, 4, 16)  # [B, heads, d, N]
            scores = q.transpose(-2, -1) @ q  # 4-d, the same batch dims
            mixed = x.flatten(2) @ x.flatten(2).transpose(-2, -1)  # 3-d
            heads = x.flatten(1).view(x.shape[0], 8, 2, 8).permute(0, 2, 1, 3)  # [B, 2 heads, 8, 8], not viewable
            levit = heads @ heads.transpose(-2, -1)  # LeViT: the 4-d operands cannot be viewed as 3-d
            shared = q @ torch.ones(1, 1, 16, 3)  # broadcasts over batch and heads: left as matmul
            return scores.sum((1, 2, 3)) + mixed.sum((1, 2)) + shared.sum((1, 2, 3)) + levit.sum((1, 2, 3))

    gm = export_training_graph(Heads(), (8, 4, 4))
    done = {r["from"]: r["count"] for r in graph_rewrites(gm)}
    assert done.get("batched matmul") == 3
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.aten.bmm.default) == 3 and targets.count(torch.ops.aten.matmul.default) == 1
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
