"""Graph preparation (core/graph_prep.py): each step exact in float, and listed as a rewrite."""

import torch

from core.export_check import export_training_graph
from core.rewrites import graph_rewrites


class _NormAfter(torch.nn.Module):
    """A training-mode BatchNorm (batch statistics) after an activation written one way or another."""

    def __init__(self, activation):
        super().__init__()
        self.activation = activation

    def forward(self, x):
        return torch.nn.functional.batch_norm(self.activation(x), None, None, training=True)


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
