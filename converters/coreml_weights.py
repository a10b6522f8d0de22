"""Core ML weights on Linux: BatchNorm folding before conversion, and reading a file's weights back into the
PyTorch network it was converted from.

Core ML cannot run on Linux, so a float .mlpackage is checked by loading its (decompressed) weights into the
network and running that. The file's const names are not relied on: coremltools names a weight after the
PyTorch parameter only when the weight reaches Core ML unchanged, and anonymously (`const_207_to_fp16`) when one
of its passes rebuilt it. Each network tensor is matched to the file's weight of the same shape whose values
are closest, the graph position deciding between equal candidates.
"""

from __future__ import annotations

import copy
import operator
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from core.weights import load_weights

from .base import ConversionError

# A matched weight differs from the network's by at most this share of its norm. fp16 rounding gives ~1e-3,
# k-means LUTs of 1 to 8 bits 0.6 down to 0.01; an unrelated tensor of the same shape ~1.4, zeros 1.0.
MAX_RELATIVE_DIFF = 0.9
SHARED_DIFF = 2e-3  # fp16 rounding: a tensor this close to a weight another tensor took shares it (deduplicated)
SHOWN = 3  # weights named on the console; the log has them all


class BatchNormThen(nn.Sequential):
    """A BatchNorm subclass taken apart: its plain batch norm, then the modules it applies after it (timm's
    BatchNormAct2d: `drop`, `act`). torch.fx sees the plain BatchNorm and folds it into the conv before it."""


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _plain_form(module: nn.Module) -> BatchNormThen | None:
    """`module` (a BatchNorm subclass) as its plain BatchNorm followed by its child modules, if that computes the
    same in eval mode (checked on a random input); None if its forward does anything else."""
    base = next(b for b in _BATCHNORMS if isinstance(module, b))
    own = set(module._parameters) | set(module._buffers)
    if own - {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}:
        return None  # state of its own beyond batch norm's: its forward uses it somehow
    plain = base(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                 track_running_stats=module.track_running_stats)
    plain.load_state_dict({k: v for k, v in module.state_dict(keep_vars=False).items() if "." not in k})
    names = [name for name, _ in module.named_children()]
    norm = next(n for n in ("norm", "bn", "batchnorm") if n not in names)
    plain_form = BatchNormThen(OrderedDict([(norm, plain), *((n, copy.deepcopy(c)) for n, c in module.named_children())]))
    plain_form.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, module.num_features, *(5,) * (_BATCHNORMS.index(base) + 1), generator=generator) * 3
    try:
        with torch.no_grad():
            same = torch.allclose(module.eval()(x), plain_form(x), rtol=1e-5, atol=1e-5)
    except Exception:  # noqa: BLE001 - a forward that does not take such an input is not plain batch norm
        return None
    return plain_form if same else None


def plain_batchnorms(model: nn.Module) -> list[str]:
    """Replace, in place, each BatchNorm subclass whose forward is batch norm then its own child modules (kept,
    in order) by `BatchNormThen`; the names of those replaced. Other subclasses stay as they are."""
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, _BATCHNORMS) and type(module) not in _BATCHNORMS:
            plain_form = _plain_form(module)
            if plain_form is not None:
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, plain_form)
                replaced.append(name)
    return replaced


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every Conv+BatchNorm pair into one conv (a copy of `model`, in eval mode), BatchNorm subclasses that
    are plain batch norm plus an activation included (timm's BatchNormAct2d).

    torch.fx's fuse() finds the pairs wherever they are (ResNet's conv1/bn1 as well as Sequential
    pairs); for a network torch.fx cannot trace, the pairs inside a Sequential are folded.
    """
    model = copy.deepcopy(model).eval()
    if isinstance(model, _BATCHNORMS):
        return model
    plain_batchnorms(model)
    try:
        from torch.fx.experimental.optimization import fuse

        return fold_channel_scales(fuse(model, inplace=True))
    except Exception:  # noqa: BLE001 - not symbolically traceable: fall back to Sequential pairs
        pass
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq)
        for i, (conv, bn) in enumerate(zip(children, children[1:])):
            if not isinstance(conv, nn.Conv2d):
                continue
            if type(bn) is nn.BatchNorm2d:
                seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
            elif isinstance(bn, BatchNormThen) and type(bn[0]) is nn.BatchNorm2d:
                seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn[0])
                bn[0] = nn.Identity()
    _fold_named_pairs(model)
    return model


def _fold_named_pairs(model: nn.Module) -> None:
    """Outside Sequentials: a module whose conv child is registered right before its BatchNorm child (timm's
    ConvNormAct: `self.conv`, `self.bn`) gets the pair folded when that leaves the module's output unchanged on
    a random input (eval mode); otherwise it is put back. For networks torch.fx cannot trace (MobileViTv2)."""
    generator = torch.Generator().manual_seed(0)
    for module in [m for m in model.modules() if not isinstance(m, nn.Sequential)]:
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            norm = bn[0] if isinstance(bn, BatchNormThen) else bn
            if not isinstance(conv, nn.Conv2d) or type(norm) is not nn.BatchNorm2d or conv.groups < 1:
                continue
            x = torch.randn(2, conv.in_channels, 9, 9, generator=generator)
            try:
                with torch.no_grad():
                    before = module(x)
                    setattr(module, conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm))
                    if isinstance(bn, BatchNormThen):
                        bn[0] = nn.Identity()
                    else:
                        setattr(module, bn_name, nn.Identity())
                    same = torch.allclose(module(x), before, rtol=1e-4, atol=1e-5)
            except Exception:  # noqa: BLE001 - a forward that does not take such an input: leave the pair
                same = False
            if not same:  # not conv-then-norm after all: as it was
                setattr(module, conv_name, conv)
                if isinstance(bn, BatchNormThen):
                    bn[0] = norm
                else:
                    setattr(module, bn_name, bn)


_PASS_THROUGH = (nn.Dropout, nn.Identity)  # identities in eval mode, between a conv and its scale


def fold_channel_scales(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Fold `conv(x) * gamma`, gamma a tensor of one value per output channel (timm's layer scale after an MLP's
    last conv, FastViT), into the conv's weight and bias, as Core ML's converter does: the file then holds the
    folded conv, which the read-back matches, and no gamma it could not find. In place; returns `gm`."""
    graph = gm.graph
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (operator.mul, torch.mul) or len(node.args) != 2:
            continue
        scale_node = next((a for a in node.args if isinstance(a, torch.fx.Node) and a.op == "get_attr"), None)
        if scale_node is None or len(scale_node.users) != 1:
            continue
        x = node.args[1] if node.args[0] is scale_node else node.args[0]
        while (isinstance(x, torch.fx.Node) and x.op == "call_module" and len(x.users) == 1
               and isinstance(gm.get_submodule(x.target), _PASS_THROUGH)):
            x = x.args[0]
        conv = gm.get_submodule(x.target) if isinstance(x, torch.fx.Node) and x.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or len(x.users) != 1 or calls[x.target] != 1:
            continue
        owner_name, _, attr = scale_node.target.rpartition(".")
        owner = gm.get_submodule(owner_name)
        scale = getattr(owner, attr)
        if (not isinstance(scale, torch.Tensor) or scale.dim() < 3 or scale.numel() != conv.out_channels
                or scale.shape[-3] != conv.out_channels):
            continue  # not one value per output channel of an NCHW conv ((C,) would scale the width)
        with torch.no_grad():
            gamma = scale.detach().reshape(-1)
            conv.weight.mul_(gamma.view(-1, *(1,) * (conv.weight.dim() - 1)))
            if conv.bias is None:
                conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
            conv.bias.mul_(gamma)
        node.replace_all_uses_with(node.args[1] if node.args[0] is scale_node else node.args[0])
        graph.erase_node(node)
        graph.erase_node(scale_node)
        delattr(owner, attr)
    graph.lint()
    gm.recompile()
    return gm


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Every weight of an mlpackage, decompressed to dense arrays, keyed by Core ML's const name, in the order
    the program first uses them."""
    import coremltools as ct
    from coremltools.optimize.coreml import decompress_weights, get_weights_metadata

    dense = decompress_weights(ct.models.MLModel(str(path), skip_model_load=True))
    weights = {name: np.asarray(meta.val) for name, meta in get_weights_metadata(dense, weight_threshold=0).items()}
    main = dense.get_spec().mlProgram.functions["main"]
    first_use: dict[str, int] = {}
    for i, op in enumerate(main.block_specializations[main.opset].operations):
        for argument in op.inputs.values():
            for arg in argument.arguments:
                first_use.setdefault(arg.name, i)
    order = sorted(weights, key=lambda name: first_use.get(name, len(first_use)))
    return {name: weights[name] for name in order}


def _graph_order(net: nn.Module) -> list[str]:
    """The network's floating-point state_dict keys, in the order its (fx) graph first uses them; a network
    that is not an fx GraphModule keeps its state_dict order."""
    state = net.state_dict()
    keys = [k for k, v in state.items() if v.is_floating_point()]
    if not isinstance(net, torch.fx.GraphModule):
        return keys
    used = []
    for node in net.graph.nodes:
        if node.op == "call_module":
            prefix = f"{node.target}."
            used += [k for k in keys if k.startswith(prefix) and "." not in k[len(prefix):]]
        elif node.op == "get_attr":
            used += [k for k in keys if k == node.target]
    seen = dict.fromkeys(used)
    return list(seen) + [k for k in keys if k not in seen]


def _shape_key(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape if d != 1)


def relative_diffs(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """||a - b|| / max(||a||, ||b||) between every row of `ours` and every row of `theirs` (flattened tensors)."""
    na, nb = (ours ** 2).sum(1), (theirs ** 2).sum(1)
    squared = np.maximum(na[:, None] + nb[None, :] - 2 * ours @ theirs.T, 0.0)
    return np.sqrt(squared) / np.maximum(np.sqrt(np.maximum(na[:, None], nb[None, :])), 1e-12)


def lookup_reads(net: nn.Module, shape: tuple[int, ...], keys: list[str]) -> dict[str, list[torch.Tensor]]:
    """For each of `keys` (tensors of `net`), the tables the network reads from it by constant indices, as maps
    of flat positions into the tensor: EfficientViT's `attention_biases[:, idxs]`, one head's row of it each.
    Core ML computes such reads at conversion and stores what they read, not the tensor.

    The network is exported in training mode (a module may cache the read in eval mode, hiding it from the
    graph) and the data-movement ops (core.graph_layout.LOOKUPS) that start at a key are run on its positions."""
    from core.graph_layout import LOOKUPS

    model = copy.deepcopy(net).train()
    try:
        gm = torch.export.export(model, (torch.zeros(2, *shape),)).module()
    except Exception:  # noqa: BLE001 - not exportable: no reads can be found, the caller reports the tensors
        return {}
    values, roots, wanted = {}, {}, set(keys)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = gm
            for part in node.target.split("."):
                value = getattr(value, part, None)
            if node.target in wanted and isinstance(value, torch.Tensor):
                values[node], roots[node] = torch.arange(value.numel()).reshape(value.shape), node.target
            elif isinstance(value, torch.Tensor):
                values[node] = value
            continue
        if node.op != "call_function" or node.target not in LOOKUPS:
            continue
        inputs = []
        torch.fx.node.map_arg((node.args, node.kwargs), inputs.append)
        from_key = {roots[n] for n in inputs if n in roots}
        if len(from_key) != 1 or not all(n in values for n in inputs):
            continue
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
        with torch.no_grad():
            values[node], roots[node] = node.target(*args, **kwargs), from_key.pop()
    reads: dict[str, list[torch.Tensor]] = {}
    for node, key in roots.items():
        if node.op == "call_function" and any(u not in roots for u in node.users):
            reads.setdefault(key, []).append(values[node])
    return reads


def match_weights(net: nn.Module, weights: dict[str, np.ndarray],
                  reads: dict[str, list[torch.Tensor]] | None = None) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Pair each floating-point tensor of `net` with one weight of the file: same shape (size-1 dimensions aside),
    closest values (relative L2 difference), and, among equally close ones, the nearest graph position.

    Core ML keeps one const for equal tensors, so a tensor left over may share the weight another one took when
    the two are equal to fp16 precision (SHARED_DIFF). Returns the file's value for each matched key, and one row per tensor left without a counterpart
    (none of that shape, or none within MAX_RELATIVE_DIFF): its key, shape and the closest difference seen.
    """
    state = net.state_dict()
    keys = _graph_order(net)
    names = [n for n, v in weights.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]
    matched, unmatched, taken = _assign({k: state[k] for k in keys}, keys, {n: weights[n] for n in names}, names)
    free_shapes = {_shape_key(weights[n].shape) for n in names if n not in taken}
    for row in [r for r in unmatched if _identity_element(state[r["key"]])
                and _shape_key(state[r["key"]].shape) not in free_shapes]:  # no weight in the file it could be
        matched[row["key"]] = state[row["key"]].detach().numpy()  # x * 1 or x + 0: Core ML drops the op and its const
        unmatched.remove(row)
    reads = {r["key"]: reads[r["key"]] for r in unmatched if r["key"] in (reads or {})}
    if not reads:
        return matched, unmatched
    # tensors read through constant indices: each read (a table) matched like a tensor, then written back
    tables = {f"{k}#{i}": state[k].detach().reshape(-1)[m] for k, maps in reads.items() for i, m in enumerate(maps)}
    free = [n for n in names if n not in taken]
    found, _, _ = _assign(tables, list(tables), {n: weights[n] for n in free}, free)
    for key, maps in reads.items():
        if all(f"{key}#{i}" in found for i in range(len(maps))):
            value = state[key].detach().clone().double()
            for i, m in enumerate(maps):
                value.reshape(-1)[m.reshape(-1)] = torch.from_numpy(
                    np.asarray(found[f"{key}#{i}"], np.float64).reshape(-1))
            matched[key] = value.numpy()
            unmatched = [r for r in unmatched if r["key"] != key]
    return matched, unmatched


def _identity_element(tensor: torch.Tensor) -> bool:
    """All ones or all zeros: a scale or shift that computes nothing (a norm's weight and bias at their
    initial values), whose op and constant Core ML removes from the program."""
    t = tensor.detach()
    return t.is_floating_point() and t.numel() > 0 and (bool((t == 1).all()) or bool((t == 0).all()))


def _assign(tensors: dict, keys: list[str], weights: dict[str, np.ndarray], names: list[str]) -> tuple[dict, list, set]:
    """match_weights' pairing of `tensors` (in graph order `keys`) with the file's `weights` (in program order
    `names`): the file's value per matched key, the rows left unmatched, and the names taken."""
    from scipy.optimize import linear_sum_assignment

    state = tensors
    key_pos = {k: i / max(len(keys) - 1, 1) for i, k in enumerate(keys)}
    name_pos = {n: i / max(len(names) - 1, 1) for i, n in enumerate(names)}
    groups: dict[tuple, tuple[list, list]] = {}
    for k in keys:
        groups.setdefault(_shape_key(state[k].shape), ([], []))[0].append(k)
    for n in names:
        if _shape_key(weights[n].shape) in groups:
            groups[_shape_key(weights[n].shape)][1].append(n)
    matched, unmatched, taken = {}, [], set()
    for shape, (ours, theirs) in groups.items():
        if not theirs:
            unmatched += [{"key": k, "shape": list(state[k].shape), "closest": None} for k in ours]
            continue
        a = np.stack([state[k].detach().double().reshape(-1).numpy() for k in ours])
        b = np.stack([np.asarray(weights[n], np.float64).reshape(-1) for n in theirs])
        diffs = relative_diffs(a, b)
        position = np.abs(np.array([key_pos[k] for k in ours])[:, None] - np.array([name_pos[n] for n in theirs])[None, :])
        rows, cols = linear_sum_assignment(diffs + 1e-6 * position)  # the position only breaks near-ties
        paired = dict(zip(rows.tolist(), cols.tolist()))
        for i, k in enumerate(ours):
            j = paired.get(i)
            if (j is None or diffs[i, j] > MAX_RELATIVE_DIFF) and diffs[i].min() <= SHARED_DIFF:
                j = int(diffs[i].argmin())  # equal tensors (two heads' BatchNorm statistics): Core ML keeps one const
            if j is None or diffs[i, j] > MAX_RELATIVE_DIFF:
                unmatched.append({"key": k, "shape": list(state[k].shape), "closest": float(diffs[i].min())})
            else:
                matched[k] = np.asarray(weights[theirs[j]])
                taken.add(theirs[j])
    return matched, unmatched, taken


def _describe(row: dict) -> str:
    closest = "no weight of that shape" if row["closest"] is None else f"closest differs by {row['closest']:.2f}"
    return f"`{row['key']}` {tuple(row['shape'])} ({closest})"


def load_into(net: nn.Module, weights: dict[str, np.ndarray], file: str = "the Core ML file",
              shape: tuple[int, ...] | None = None) -> nn.Module:
    """Load a Core ML file's weights (read_weights) into the PyTorch network it was converted from, each tensor
    matched by shape, value and graph position (match_weights); with the input `shape`, a tensor the file holds
    only as tables read from it by constant indices is matched through them (lookup_reads). A ConversionError
    names those with no match."""
    matched, unmatched = match_weights(net, weights)
    if unmatched and shape is not None:
        reads = lookup_reads(net, shape, [r["key"] for r in unmatched])
        if reads:
            matched, unmatched = match_weights(net, weights, reads)
    if unmatched:
        shown = ", ".join(_describe(r) for r in unmatched[:SHOWN])
        more = f" and {len(unmatched) - SHOWN} more (all in the log)" if len(unmatched) > SHOWN else ""
        print(f"Core ML read-back of {file}: {len(unmatched)} tensor(s) of the network have no counterpart in it:")
        for row in unmatched:
            print(f"  {_describe(row)}")
        raise ConversionError(
            f"{file}: Core ML read-back found no weight in the file for {len(unmatched)} of {len(matched) + len(unmatched)} "
            f"network tensors, by shape and value: {shown}{more}. Core ML's converter rebuilt them (folded into a "
            "neighbouring op), so this file cannot be checked on Linux; run `verify` on macOS, where Core ML runs it")
    state = net.state_dict()
    load_weights(net, {k: torch.from_numpy(matched[k].astype(np.float32)).reshape(v.shape) if k in matched else v
                       for k, v in state.items()})
    net.train()  # a module that caches what it read from its weights in eval mode (timm's attention bias
    return net.eval()  # cache) drops that cache on train(): what runs next reads the file's weights
