"""Core ML weights on Linux: reading a file's weights back into the PyTorch network it was converted from
(folded first, converters/coreml_fold.py, as it was before conversion).

Core ML cannot run on Linux, so a float .mlpackage is checked by loading its (decompressed) weights into the
network and running that. The file's const names are not relied on: coremltools names a weight after the
PyTorch parameter only when the weight reaches Core ML unchanged, and anonymously (`const_207_to_fp16`) when one
of its passes rebuilt it. Each network tensor is matched to the file's weight of the same shape whose values
are closest, the graph position deciding between equal candidates; a weight the file stores dense (fp16) only
if it is the tensor to fp16 rounding, a compressed one within the compression's error.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from core.weights import load_weights

from .base import ConversionError


# A matched weight differs from the network's by at most this share of its norm. fp16 rounding gives ~1e-3,
# k-means LUTs of 1 to 8 bits 0.6 down to 0.01; an unrelated tensor of the same shape ~1.4, zeros 1.0.
MAX_RELATIVE_DIFF = 0.9  # a weight the file stores compressed (a LUT, linear int8), or of unknown storage
# A weight the file stores dense (a plain fp16 `const`) is the network's value rounded to fp16 (< 5e-4 of its
# norm): only that close is it the same tensor. Two unrelated scalars can differ by less than MAX_RELATIVE_DIFF
# (hgnetv2's LearnableAffineBlock scale 1.0004, rounded to 1.0 and dropped by Core ML, took the input's 1/std).
DENSE_DIFF = 5e-3
SHARED_DIFF = 2e-3  # fp16 rounding: a tensor this close to a weight another tensor took shares it (deduplicated)
# ... of a dense const, compared in fp16 (_as_stored): equal tensors are equal there. Not one fp16 step apart: a
# scale that is 1.0 in fp16 (dropped with its multiply) is not another block's 0.9995
SHARED_DENSE_DIFF = 1e-4
SHOWN = 3  # weights named on the console; the log has them all


class FileWeights(dict):
    """read_weights' answer: a dict (const name -> dense array) that also knows which consts the file stores
    compressed (`compressed`, the outputs of its constexpr_* ops); the others are plain fp16 consts. A plain dict
    given to match_weights is of unknown storage: every weight is matched as if it could be compressed."""

    def __init__(self, items=(), compressed=frozenset()):
        super().__init__(items)
        self.compressed = frozenset(compressed)


def read_weights(path: Path) -> FileWeights:
    """Every weight of an mlpackage, decompressed to dense arrays, keyed by Core ML's const name, in the order
    the program first uses them; `.compressed` names those the file stores compressed."""
    import coremltools as ct
    from coremltools.optimize.coreml import decompress_weights, get_weights_metadata

    model = ct.models.MLModel(str(path), skip_model_load=True)
    stored = model.get_spec().mlProgram.functions["main"]
    compressed = {out.name for op in stored.block_specializations[stored.opset].operations
                  if op.type.startswith("constexpr_") for out in op.outputs}
    dense = decompress_weights(model)
    weights = {name: np.asarray(meta.val) for name, meta in get_weights_metadata(dense, weight_threshold=0).items()}
    main = dense.get_spec().mlProgram.functions["main"]
    first_use: dict[str, int] = {}
    for i, op in enumerate(main.block_specializations[main.opset].operations):
        for argument in op.inputs.values():
            for arg in argument.arguments:
                first_use.setdefault(arg.name, i)
    order = sorted(weights, key=lambda name: first_use.get(name, len(first_use)))
    return FileWeights(((name, weights[name]) for name in order), compressed & set(weights))


def _tolerances(weights: dict, names: list[str]) -> dict[str, float]:
    """How far each of the file's weights may be from the network tensor it is: fp16 rounding for a dense const,
    compression error for a compressed one (or for any weight of a plain dict, whose storage is unknown)."""
    compressed = getattr(weights, "compressed", None)
    return {n: MAX_RELATIVE_DIFF if compressed is None or n in compressed else DENSE_DIFF for n in names}


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


def _as_stored(tensor: torch.Tensor) -> np.ndarray:
    """The tensor flattened, as the file would store it: rounded to fp16 (float64 values). Compared so, a dense
    weight is its tensor to within the converter's own rounding, tiny values too (FastViT's layer scale, 1e-5 at
    initialization, leaves a folded conv of fp16 subnormals: 0.09 off its fp32 values)."""
    finite = np.clip(tensor.detach().double().reshape(-1).numpy(), -65504.0, 65504.0)
    return finite.astype(np.float16).astype(np.float64)


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
    tolerance = _tolerances(weights, names)
    matched, unmatched, taken = _assign({k: state[k] for k in keys}, keys, {n: weights[n] for n in names}, names,
                                        tolerance)
    free = [n for n in names if n not in taken]
    for row in list(unmatched):
        identity = _identity_element(state[row["key"]])
        if identity is None or _could_be(state[row["key"]], free, weights, tolerance):
            continue  # not an identity in fp16, or a weight in the file could be it: reported
        matched[row["key"]] = identity  # x * 1 or x + 0 in fp16: Core ML drops the op and its const
        unmatched.remove(row)
    reads = {r["key"]: reads[r["key"]] for r in unmatched if r["key"] in (reads or {})}
    if not reads:
        return matched, unmatched
    # tensors read through constant indices: each read (a table) matched like a tensor, then written back
    tables = {f"{k}#{i}": state[k].detach().reshape(-1)[m] for k, maps in reads.items() for i, m in enumerate(maps)}
    found, _, _ = _assign(tables, list(tables), {n: weights[n] for n in free}, free, tolerance)
    for key, maps in reads.items():
        if all(f"{key}#{i}" in found for i in range(len(maps))):
            value = state[key].detach().clone().double()
            for i, m in enumerate(maps):
                value.reshape(-1)[m.reshape(-1)] = torch.from_numpy(
                    np.asarray(found[f"{key}#{i}"], np.float64).reshape(-1))
            matched[key] = value.numpy()
            unmatched = [r for r in unmatched if r["key"] != key]
    return matched, unmatched


def _identity_element(tensor: torch.Tensor) -> np.ndarray | None:
    """The tensor as the file would hold it, if that is all ones or all zeros once rounded to fp16: a scale or
    shift that computes nothing (a norm's weight and bias at their initial values; hgnetv2's LearnableAffineBlock
    scale 1.0004, which is 1.0 in fp16), whose op and constant Core ML removes from the program. None otherwise."""
    t = tensor.detach()
    if not t.is_floating_point() or t.numel() == 0:
        return None
    rounded = _as_stored(t).astype(np.float16).reshape(t.shape)
    return rounded if bool((rounded == 1).all()) or bool((rounded == 0).all()) else None


def _could_be(tensor: torch.Tensor, names: list[str], weights: dict, tolerance: dict[str, float]) -> bool:
    """Is one of the file's weights `names` of the tensor's shape within its tolerance of it?"""
    shape = _shape_key(tensor.shape)
    candidates = [n for n in names if _shape_key(weights[n].shape) == shape]
    if not candidates:
        return False
    a = _as_stored(tensor)[None, :]
    b = np.stack([np.asarray(weights[n], np.float64).reshape(-1) for n in candidates])
    return bool((relative_diffs(a, b)[0] <= np.array([tolerance[n] for n in candidates])).any())


def _assign(tensors: dict, keys: list[str], weights: dict[str, np.ndarray], names: list[str],
            tolerance: dict[str, float]) -> tuple[dict, list, set]:
    """match_weights' pairing of `tensors` (in graph order `keys`) with the file's `weights` (in program order
    `names`, each within its `tolerance`): the file's value per matched key, the rows left unmatched, and the
    names taken."""
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
        a = np.stack([_as_stored(state[k]) for k in ours])
        b = np.stack([np.asarray(weights[n], np.float64).reshape(-1) for n in theirs])
        diffs = relative_diffs(a, b)
        position = np.abs(np.array([key_pos[k] for k in ours])[:, None] - np.array([name_pos[n] for n in theirs])[None, :])
        allowed = diffs <= np.array([tolerance[n] for n in theirs])[None, :]
        # the position only breaks near-ties; a pair out of tolerance is taken only when nothing else is left
        rows, cols = linear_sum_assignment(diffs + 1e-6 * position + 10.0 * ~allowed)
        paired = {i: j for i, j in zip(rows.tolist(), cols.tolist()) if allowed[i, j]}
        shared = diffs <= np.array([SHARED_DIFF if tolerance[n] > DENSE_DIFF else SHARED_DENSE_DIFF
                                    for n in theirs])[None, :]
        for i, k in enumerate(ours):
            j = paired.get(i)
            if j is None and shared[i].any():  # equal tensors (two heads' BatchNorm statistics): Core ML keeps one const
                j = int(np.where(shared[i], diffs[i], np.inf).argmin())
            if j is None:
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
