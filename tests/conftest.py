"""Shared fixtures: one tiny trained, QAT fine-tuned and exported model per test session (per xdist worker).

Tiers: a test marked `slow` runs in `make test-slow` (and `make test-all`, CI) only; everything else is in
`make test`, which runs on pytest-xdist workers. See README "Tests" for when to mark a test slow.
"""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# On an xdist worker: the cores shared out between the workers (torch's and OpenMP's thread pools size themselves
# from this variable when torch is first imported, which is after this conftest), so that 2 workers on 2 cores do
# not run 4 busy threads. Set before any test module imports torch; an explicit OMP_NUM_THREADS wins.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# Fixtures that every xdist worker builds for itself (needed by most of the suite, so worth building twice in
# parallel). Any other non-function-scoped fixture defined in tests/ keeps all of its tests on one worker
# (an xdist_group per shared fixture; with `--dist loadgroup` the group runs on one worker), so that a study,
# a bench run or a module's export is built once, not once per worker.
PER_WORKER = {"exported", "make_config", "calibrated", "ghost_gate", "tiny_attention", "config_for"}


def _shared_fixtures(item) -> list[str]:
    """The keys of the fixtures broader than one test that `item` uses and that are not PER_WORKER."""
    keys = []
    for name, defs in item._fixtureinfo.name2fixturedefs.items():
        fixturedef = defs[-1]
        if name in PER_WORKER or fixturedef.scope == "function" or not fixturedef.baseid.startswith("tests"):
            continue  # pytest's own and plugins' fixtures have no baseid under tests/
        where = item.nodeid.split("::")[0] if fixturedef.scope in ("module", "class") else fixturedef.baseid
        keys.append(f"{name}@{where}")
    return keys


def _put_in_group(config, item, group: str) -> None:
    """Mark `item` xdist_group(group) and, under `--dist loadgroup`, give its nodeid the "@group" suffix that
    xdist's scheduler groups by. xdist 3.8 sets that suffix through `item._nodeid`, which pytest 9.2 no longer
    reads (its nodeid comes from `item._id`): set here, after xdist's hook, with whichever pytest has."""
    item.add_marker(pytest.mark.xdist_group(group))
    if not getattr(config.option, "loadgroup", False) or "@" in item.nodeid:
        return
    if hasattr(item, "_id"):
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(f"{item.nodeid}@{group}")
    else:
        item._nodeid = f"{item.nodeid}@{group}"


@pytest.hookimpl(trylast=True)  # after xdist's own hook (see _put_in_group)
def pytest_collection_modifyitems(config, items):
    """One xdist group per set of tests linked by a shared fixture (union-find over the fixtures they share)."""
    parent: dict[str, str] = {}

    def find(key):
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    shared = {item.nodeid: _shared_fixtures(item) for item in items}
    for keys in shared.values():
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
    for item in items:
        if shared[item.nodeid]:
            _put_in_group(config, item, find(shared[item.nodeid][0]).replace("@", "-in-"))


TINY = dict(dataset="mnist-5k", model="convnet", epochs=1, limit_train=1024, limit_test=300,
            batch_size=32, qat_epochs=1.0, qat_max_steps=20, calib_batches=4, sample_size=20,
            # A 1-epoch model on 1024 digits has many near-ties: 4-bit LUTs flip about 2 of 300 test
            # predictions, so the agreement floor for this tiny model is 98%, not the default 99.5%.
            min_agreement=0.98)


def tiny_config(out, **overrides):
    from core.config import RunConfig

    return RunConfig(**{**TINY, "out": str(out), **overrides}).validate()


@pytest.fixture(scope="session")
def make_config():
    return tiny_config


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A Pipeline whose OUT holds a trained model, its QAT result and all six verified artifacts."""
    from pipeline.cli import quiet_libraries
    from pipeline.stages import Pipeline

    quiet_libraries()
    pipeline = Pipeline(tiny_config(tmp_path_factory.mktemp("exported")))
    pipeline.train()
    pipeline.qat()
    pipeline.export_ok = pipeline.export()
    return pipeline


@pytest.fixture
def copy_of(exported, tmp_path, make_config):
    """copy_of(**settings) -> a Pipeline over a private copy of the exported OUT, with changed settings."""
    from pipeline.stages import Pipeline

    def copy(**overrides):
        out = tmp_path / "out"
        shutil.copytree(exported.out, out)
        return Pipeline(make_config(out, **overrides))

    return copy


@pytest.fixture(scope="session")
def calibrated():
    """calibrated(net, shape, batch=16, scale=2.0) -> `net` prepared for QAT as core.qat prepares it, its observers
    run on 3 random batches (from the caller's torch seed), in eval mode: what conversion and parity tests start from."""
    import torch

    from core import qat

    def calibrate(net, shape, batch: int = 16, scale: float = 2.0):
        prepared = qat.prepare(net, shape)
        with torch.no_grad():
            for _ in range(3):
                prepared(torch.randn(batch, *shape) * scale)
        prepared.eval()
        return prepared

    return calibrate


@pytest.fixture(scope="session")
def int8_parity(calibrated):
    """int8_parity(make_net, work_dir, name) -> (folded int8 graph, parity.run result): a network of `make_net()`,
    built after seeding torch (3 x 32 x 32 input), calibrated, converted, written as an int8 .tflite (litert-torch)
    and .pte (XNNPACK), and compared layer by layer on 16 images."""
    import litert_torch
    import torch

    from converters import parity
    from converters.executorch import lower
    from converters.tflite import _int8_config
    from core import qat

    def run(make_net, work_dir, name: str):
        torch.manual_seed(0)
        prepared = calibrated(make_net(), (3, 32, 32))
        folded, unfolded = qat.convert(prepared, fold=True), qat.convert(prepared, fold=False)
        unfolded.training = False
        tflite, pte = work_dir / f"{name}.tflite", work_dir / f"{name}.pte"
        litert_torch.convert(unfolded, (torch.zeros(1, 3, 32, 32),), quant_config=_int8_config()).export(str(tflite))
        pte.write_bytes(lower(folded, (3, 32, 32))[0].to_executorch().buffer)
        return folded, parity.run(folded, torch.randn(16, 3, 32, 32) * 2, (3, 32, 32), pte=pte, tflite=tflite,
                                  work_dir=work_dir)

    return run


@pytest.fixture(scope="session")
def conv2_off_by_many_steps(exported, tmp_path_factory):
    """The int8 .tflite of the fixture's QAT graph with every conv2 weight moved 40 int8 steps up."""
    import copy

    import litert_torch
    import torch

    from converters.tflite import _int8_config
    from core import quantize

    graph = copy.deepcopy(quantize.load_program(exported.quantized_folder("int8") / quantize.UNFOLDED))
    quant = torch.ops.quantized_decomposed.quantize_per_channel.default
    q = next(n for n in graph.graph.nodes if n.target == quant and n.args[0].target == "conv2.weight")
    weight, scales = graph.get_parameter(q.args[0].target), getattr(graph, q.args[1].target)
    with torch.no_grad():
        weight += 40 * scales.view(-1, 1, 1, 1)
    graph.training = False
    path = tmp_path_factory.mktemp("broken") / "convnet_tflite_int8.tflite"
    litert_torch.convert(graph, (torch.zeros(1, 1, 28, 28),), quant_config=_int8_config()).export(str(path))
    return path


@pytest.fixture(scope="session")
def ghost_gate():
    """The class of a tiny network with GhostNetV2's and RepViT's patterns (for graph preparation tests)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class GhostGate(nn.Module):
        """GhostNetV2's pattern: a concatenation sliced to its own full width (a no-op slice), gated by a sigmoid
        upsampled (nearest) from half resolution; RepViT's head: two linears averaged with an int divisor."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.primary, self.cheap = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.short = nn.Conv2d(8, 8, 1)
            self.head, self.head_dist = nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            x = F.relu(self.stem(x))
            res = self.short(F.avg_pool2d(x, kernel_size=2, stride=2))
            x1 = self.primary(x)
            out = torch.cat([x1, self.cheap(x1)], dim=1)
            x = out[:, :8, :, :] * F.interpolate(torch.sigmoid(res), size=(out.shape[-2], out.shape[-1]), mode="nearest")
            x = x.mean((2, 3))
            return (self.head(x) + self.head_dist(x)) / 2

    return GhostGate


@pytest.fixture(scope="session")
def tiny_attention():
    """The class of a tiny network with EfficientViT's (MSRA) attention: batched matrix products over the
    flattened feature map (`q.transpose(-2, -1) @ k`, `v @ attn.transpose(-2, -1)`), a bias per relative
    offset read from a learned table by constant indices, one head's row of it, a softmax, and an adaptive
    pool to the size the map already has (for graph preparation tests)."""
    import torch
    import torch.nn as nn

    class TinyAttention(nn.Module):
        def __init__(self, size: int = 8):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, stride=4, padding=1)
            self.qkv = nn.Conv2d(8, 12, 1)
            points = torch.arange(size * size)
            offsets = (points[:, None] // size - points[None] // size).abs() * size + (points[:, None] % size - points[None] % size).abs()
            self.table = nn.Parameter(torch.randn(2, size * size) * 0.1)  # a bias per head and relative offset
            self.register_buffer("offsets", offsets, persistent=False)
            self.proj, self.head = nn.Conv2d(4, 8, 1), nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            b, _, h, w = x.shape
            q, k, v = self.qkv(x).split([4, 4, 4], dim=1)
            q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
            bias = self.table[:, self.offsets]  # [heads, N, N]: a table read by constant indices
            attn = (q.transpose(-2, -1) @ k * 0.5 + bias[1]).softmax(dim=-1)
            x = self.proj((v @ attn.transpose(-2, -1)).view(b, 4, h, w))
            x = nn.functional.adaptive_avg_pool2d(x, (h, w))  # a pool to the size it has (EfficientViT at 64 px)
            return self.head(x.mean((2, 3)))

    return TinyAttention
