"""Exact, behaviour-preserving rewrites that let real networks export cleanly to the int8 runtimes.

Each rewrite computes the same function as the original (in eval mode), but in a form the
quantizer and the delegates take:

- timm's train-time branches collapsed: a block with `reparameterize()` or `switch_to_deploy()`
  (MobileOne's and FastViT's conv + scale + identity branches, RepMixer, the large-kernel conv) is
  turned into its single inference conv by timm's own method, as timm does before deployment. Quantizing
  the branches instead rounds every one of them (mobileone_s0: 413 int8 layers, whose one-step errors
  changed 1 answer in 6). Only timm's classes are touched (a user's method of that name may mean
  anything); their `fuse()` (conv + norm, RepViT's and EfficientViT's) is not called: the quantizer
  folds norms itself.
- StochasticDepth -> Identity. It is the identity in eval mode; in a train-mode export it
  becomes `bernoulli_`, which neither ExecuTorch nor litert-torch can lower.
- Hardsigmoid -> relu6(x + 3) * (1/6), and Hardswish -> x * relu6(x + 3) * (1/6) (PyTorch's own
  definitions, up to one rounding of the division). XNNPACK's quantizer has no pattern for them: they run in float inside the
  delegate and leave float tensors in the .tflite; the rewritten forms quantize as add, relu6
  and mul.
- BatchNorm after no convolution (on a residual sum, as an identity branch) -> a depthwise 1x1
  conv, or folded into the Linear that alone reads it (core/standalone_norm.py).
- In the exported graph: `mean(x, [2, 3])` -> `mean(x, [2, 3], keepdim=True)` then a reshape
  (XNNPACK delegates the mean only with keepdim), and `split`/`chunk` -> one `slice` per piece.
- In the exported graph (core/graph_prep.py): no-op slices and aliases removed, nearest upsampling
  by an integer factor as concatenations and reshapes, division by a constant as multiplication by its
  reciprocal, integer scalars of float arithmetic made float, silu as x * sigmoid(x).
- In the exported graph: BatchNorm's training-only counter (`num_batches_tracked.add_(1)`, in
  any BatchNorm class or subclass, e.g. timm's BatchNormAct2d) is removed when nothing in the
  graph reads the counter. A train-mode export records it; torchao drops it only for the exact
  nn.BatchNorm2d class, so a subclass's increments reached the int8 program as adds outside
  XNNPACK. Nothing computed reads it, so the outputs are unchanged.

Module rewrites are checked against the original network in float (`apply`), and every
rewrite is listed, so the report can say what was changed.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import standalone_norm
from .graph_prep import prepare as prepare_graph

FLOAT_TOLERANCE = 1e-4  # max |difference| / max |output| allowed between original and rewritten, in float


SIXTH = 1.0 / 6.0  # a multiply, not a divide: the quantizers annotate mul, and leave div in float


class HardSigmoid(nn.Module):
    """hardsigmoid(x) = relu6(x + 3) / 6, as ops the int8 quantizers know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) * SIXTH


class HardSwish(nn.Module):
    """hardswish(x) = x * relu6(x + 3) / 6, as ops the int8 quantizers know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (F.relu6(x + 3.0) * SIXTH)


ACTIVATIONS = {nn.Hardsigmoid: HardSigmoid, nn.Hardswish: HardSwish}  # PyTorch's module -> its rewritten form


def native_activations(model: nn.Module) -> nn.Module:
    """A copy of a rewritten `model` with nn.Hardsigmoid / nn.Hardswish back in place of HardSigmoid / HardSwish.

    For Core ML, which has these activations as ops of its own. There the rewritten form does harm:
    Core ML folds the `+ 3` that follows a conv (MobileNetV3's squeeze-excitation) into that conv's
    bias under a new name, so the bias no longer maps back to the network for the read-back check.
    Same function either way; nothing with weights is touched.
    """
    model = copy.deepcopy(model)
    originals = {rewritten: original for original, rewritten in ACTIVATIONS.items()}
    for name, module in list(model.named_modules()):
        if type(module) in originals:
            model.set_submodule(name, originals[type(module)]())
    return model


def _stochastic_depth_type():
    try:
        from torchvision.ops import StochasticDepth

        return StochasticDepth
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return ()


REPARAMETERIZE = ("reparameterize", "switch_to_deploy")  # timm's in-place names for collapsing train-time branches


def _timm_class(module: nn.Module) -> bool:
    return type(module).__module__.split(".", 1)[0] == "timm"


def reparameterize_timm(model: nn.Module, prefix: str = "") -> list[dict]:
    """Collapse, in place and top-down, timm blocks that have an inference form (`REPARAMETERIZE`); returns
    what was changed. A block's children are visited after it, as they are after the collapse."""
    done = []
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        method = next((m for m in REPARAMETERIZE if callable(getattr(child, m, None))), None)
        if method and _timm_class(child):
            getattr(child, method)()
            done.append({"module": path, "from": type(child).__name__, "to": f"{type(child).__name__}.{method}()",
                         "why": "timm's inference form of the block: its branches as one conv, so each is not "
                                "rounded on its own in int8"})
        done += reparameterize_timm(child, f"{path}.")
    return done


def module_rewrites(model: nn.Module, shape: tuple[int, ...] | None = None) -> tuple[nn.Module, list[dict]]:
    """A copy of `model` with the module rewrites applied, and what was replaced (module name, from, to).

    With the input `shape`, BatchNorms that follow no conv are rewritten too (core/standalone_norm.py:
    finding them takes an export of the network).
    """
    model = copy.deepcopy(model)
    depth = _stochastic_depth_type()
    done = reparameterize_timm(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, depth):
            new, why = nn.Identity(), "identity in eval; a train-mode export would bake in bernoulli_"
        elif type(module) in ACTIVATIONS:
            new, why = ACTIVATIONS[type(module)](), "same function; quantizes as add/relu6/mul"
        else:
            continue
        model.set_submodule(name, new)
        done.append({"module": name, "from": type(module).__name__, "to": type(new).__name__, "why": why})
    if shape is not None:
        done += standalone_norm.rewrite(model, shape)
    return model, done


def summarize(done: list[dict]) -> list[dict]:
    """Rewrites grouped by kind, with how many modules each touched (for the report)."""
    groups: dict[tuple, dict] = {}
    for d in done:
        key = (d["from"], d["to"])
        g = groups.setdefault(key, {"from": d["from"], "to": d["to"], "why": d["why"], "count": 0, "examples": []})
        g["count"] += 1
        if len(g["examples"]) < 3:
            g["examples"].append(d["module"])
    return list(groups.values())


def float_difference(original: nn.Module, rewritten: nn.Module, shape: tuple[int, ...], seed: int = 0) -> float:
    """Max |original - rewritten| over a random batch in eval mode, relative to the largest output."""
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a, b = original.eval()(x), rewritten.eval()(x)
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def apply(model: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, list[dict], float]:
    """Module rewrites, checked in float: returns (rewritten model, summary, relative max difference)."""
    rewritten, done = module_rewrites(model, shape)
    if not done:
        return model, [], 0.0
    diff = float_difference(model, rewritten, shape)
    if diff > FLOAT_TOLERANCE:
        raise AssertionError(f"export rewrites changed the network's float output by {diff:.2e} (relative); "
                             f"rewrites: {summarize(done)}")
    return rewritten, summarize(done), diff


# ---- rewrites of an exported graph (torch.export, aten ops) ------------------------------------
def _is(node: torch.fx.Node, *targets) -> bool:
    return node.op == "call_function" and node.target in targets


COUNTER = "num_batches_tracked"  # BatchNorm's training-step counter buffer (torch.nn.modules.batchnorm._NormBase)


def _in_place(node: torch.fx.Node) -> bool:
    """An in-place aten op (`add_`, `copy_`, `fill_`, ...): its schema mutates its first argument."""
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and bool(schema.arguments) \
        and schema.arguments[0].alias_info is not None and schema.arguments[0].alias_info.is_write


def drop_training_counters(gm: torch.fx.GraphModule) -> int:
    """Remove in-place updates of BatchNorm `num_batches_tracked` buffers that nothing in the graph reads.

    Matched by the buffer, not the module class: any `_BatchNorm` subclass keeps its counter under
    that name. Updates whose result is used, or counters some other op reads, are left alone (then
    the counter is part of the computation, not training bookkeeping). Returns how many were removed.
    """
    removed = 0
    for buffer in [n for n in gm.graph.nodes if n.op == "get_attr" and n.target.rpartition(".")[2] == COUNTER]:
        updates = list(buffer.users)
        if updates and all(_in_place(u) and u.args[0] is buffer and not u.users for u in updates):
            for update in updates:
                gm.graph.erase_node(update)
                removed += 1
    return removed


def graph_rewrites(gm: torch.fx.GraphModule) -> list[dict]:
    """Rewrite a torch.export graph module in place; returns what was changed (from, to, count, why)."""
    aten = torch.ops.aten
    counters = drop_training_counters(gm)
    prepared = prepare_graph(gm)  # no-op slices and aliases, nearest upsampling, int scalars: checked in float
    counts = {"mean keepdim + reshape": 0, "split/chunk -> slices": 0}
    graph = gm.graph
    for node in list(graph.nodes):
        if _is(node, aten.mean.dim) and len(node.args) >= 2 and not (node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)):
            x, dims = node.args[0], node.args[1]
            value = x.meta.get("val")
            if value is None or value.dim() != 4 or sorted(d % 4 for d in dims) != [2, 3]:
                continue
            with graph.inserting_before(node):
                kept = graph.call_function(aten.mean.dim, (x, list(dims), True))
                kept.meta = {**node.meta, "val": value.mean(dim=list(dims), keepdim=True)}
                flat = graph.call_function(aten.view.default, (kept, [-1 if i == 0 else s for i, s in enumerate(node.meta["val"].shape)]))
                flat.meta = dict(node.meta)
            node.replace_all_uses_with(flat)
            graph.erase_node(node)
            counts["mean keepdim + reshape"] += 1
        elif _is(node, aten.split_with_sizes.default, aten.split.Tensor, aten.chunk.default):
            x = node.args[0]
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            pieces = node.meta.get("val")
            getters = [u for u in node.users if _is(u, operator.getitem)]
            if pieces is None or len(getters) != len(node.users):
                continue
            starts, start = [], 0
            for piece in pieces:
                starts.append((start, start + piece.shape[dim]))
                start += piece.shape[dim]
            for getter in getters:
                lo, hi = starts[getter.args[1]]
                with graph.inserting_before(getter):
                    sliced = graph.call_function(aten.slice.Tensor, (x, dim, lo, hi))
                    sliced.meta = dict(getter.meta)
                getter.replace_all_uses_with(sliced)
                graph.erase_node(getter)
            graph.erase_node(node)
            counts["split/chunk -> slices"] += 1
    graph.lint()
    gm.recompile()
    done = [{"from": op.split(" ")[0], "to": op, "count": n, "why": "delegated by XNNPACK in this form"}
            for op, n in counts.items() if n]
    if counters:
        done.append({"from": f"BatchNorm {COUNTER}.add_", "to": "removed", "count": counters,
                     "why": "training-only step counter; nothing in the graph reads it"})
    return prepared + done
