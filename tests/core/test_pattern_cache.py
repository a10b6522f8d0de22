"""torchao's rewrite patterns built once per process (core/pattern_cache.py): the converted and prepared graphs are
the same, node for node and number for number, as when every pattern is exported anew."""

import torch
import torch.nn as nn

from core import pattern_cache, qat

SHAPE = (3, 16, 16)


class _Net(nn.Module):
    """Conv+BN with and without bias, with ReLU and without, a depthwise conv, a transposed conv+BN and a Conv1d+BN:
    every family of pattern torchao's QAT prepare and convert look for."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8))
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 8, 2, stride=2), nn.BatchNorm2d(8), nn.ReLU())
        self.seq = nn.Sequential(nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.up(self.b(self.a(x)))
        x = self.seq(x.mean(3))
        return self.fc(x.mean(2))


def _prepared_and_converted(seed: int = 0):
    torch.manual_seed(seed)
    net = _Net()
    prepared = qat.prepare(net, SHAPE)
    with torch.no_grad():
        for _ in range(2):
            prepared(torch.randn(4, *SHAPE))
    prepared.eval()
    return prepared, qat.convert(prepared, fold=True), qat.convert(prepared, fold=False)


def test_cached_patterns_give_the_same_graphs_and_numbers_as_patterns_exported_anew():
    assert getattr(pattern_cache.torchao_builder(), "__wrapped_by_pattern_cache__", False)
    x = torch.randn(3, *SHAPE)
    with pattern_cache.bypassed():
        fresh = _prepared_and_converted()
    _prepared_and_converted()  # fills the cache (when no earlier test of this process did)
    before = dict(pattern_cache.stats)
    cached = _prepared_and_converted()
    assert pattern_cache.stats["reused"] > before["reused"] and pattern_cache.stats["built"] == before["built"]
    for a, b in zip(fresh, cached):
        assert a.code == b.code
        with torch.no_grad():
            assert torch.equal(a(x), b(x))
    # the folded graph really had its conv+BN patterns replaced (the cache found matches, not nothing)
    assert not any("batch_norm" in str(n.target) for n in cached[1].graph.nodes)


def test_a_callable_the_cache_cannot_key_is_exported_every_time():
    class Holder(nn.Module):  # a module with a parameter: its patterns may depend on more than its code
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))
            self.fn = lambda x: x * 2

        def forward(self, x):
            return self.fn(x) * self.w

    build = pattern_cache.torchao_builder()
    before = pattern_cache.stats["uncached"]
    first, second = (build(Holder(), (torch.randn(2),)) for _ in range(2))
    assert pattern_cache.stats["uncached"] == before + 2
    assert first is not second
