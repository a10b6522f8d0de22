"""Graph preparation before quantization and export: exact rewrites of a torch.export graph.

Each step computes the same values as the graph it replaces, in a form the int8 runtimes delegate:

- arithmetic with an identity scalar (`x + 0`, `x * 1`, `x / 1`) is removed first
  (core/identity_arithmetic.py);

- no-op slices (`x[:, :C]` where C is already the full size, as GhostNet writes `out[:, :self.out_chs]`)
  and `alias` ops are removed: ExecuTorch turns them into `alias_copy`, which XNNPACK does not take,
  and Core ML has no `alias`; so are expands to the shape a tensor already has;
- an expand read only by elementwise arithmetic that broadcasts to the same shape anyway (MobileViTv2's
  `relu(v) * context.expand_as(v)`) is dropped: XNNPACK did not take the expand, and LiteRT's converter
  failed on the BROADCAST_TO it became;
- a sum over the trailing dims of a 4-d tensor becomes a mean over the last two dims of a reshape, times the
  count (XNNPACK takes mean in that form only, and no sum: MobileViTv2's context vector);
- group norm becomes its arithmetic: mean and variance over each group (as such a mean), the normalization
  with rsqrt, and the per-channel weight and bias (XNNPACK has no group norm: MobileViTv2's 21);
- a batched matrix product `a @ b` of tensors with the same batch dims (EfficientViT's attention)
  becomes `bmm` (reshaped to 3-d and back where it has more dims): ExecuTorch decomposes `matmul` into
  expand + bmm, and in an int8 program each expand stayed an `expand_copy` outside XNNPACK;
- a permutation of a tensor of rank 5 or more is written at the lowest rank that holds it: size-1 dims
  dropped and dims that stay neighbours merged (EfficientViT's window partition and MobileViT's patch
  unfolding reshape to rank 6; Core ML allows rank 5 at most, and its int8 conversion failed on them);
- nearest upsampling by an integer factor becomes concatenations and reshapes (XNNPACK has no
  nearest resize; `cat` and `view` it delegates, in float and int8, without new rounding);
- `silu(x)` becomes `x * sigmoid(x)`: LiteRT has no int8 SiLU (it ran as float ops in the `.tflite`);
- division by a constant (`x / 2`, RepViT's `(a + b) / 2` head) becomes multiplication by its
  reciprocal: the int8 quantizers annotate mul and leave div float, so the division stayed a float MUL
  between a DEQUANTIZE and a QUANTIZE in the `.tflite` (exact for powers of two, else within an ulp);
- integer scalars in float arithmetic (`(a + b) / 2`, RepViT's distillation head) become float
  scalars: ExecuTorch lifts an int scalar to an int64 constant and casts it to float with a
  `_to_dim_order_copy` that XNNPACK refuses (a dtype conversion), outside the delegate.

`prepare(gm)` runs them all and checks the result against the original graph in float.

`fold_constant_lookups(gm)`, for a graph whose weights are frozen (export, not QAT): a table read by
constant indices (EfficientViT's `attention_biases[:, idxs]`, then one head's row of it) is computed
once and stored; XNNPACK takes neither `index` nor `select` on weights.
"""

from __future__ import annotations

import copy

import torch

from .fx_nodes import calls as _call, is_int as _is_int, is_number as _number, shape as _shape, tensor_value
from .fx_nodes import with_meta as _meta
from .identity_arithmetic import STEP as IDENTITY_ARITHMETIC

aten = torch.ops.aten
FLOAT_TOLERANCE = 1e-5  # these steps move no arithmetic: only float noise may differ

ALIASES = (aten.alias.default,)
SLICES = (aten.slice.Tensor,)
EXPANDS = (aten.expand.default,)
MATMULS = (aten.matmul.default,)
SAME_SIZE_POOLS = (aten.adaptive_avg_pool2d.default,)
PERMUTES = (aten.permute.default, aten.transpose.int)
BROADCASTING = (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor)
SUMS = (aten.sum.dim_IntList,)
GROUP_NORMS = (aten.group_norm.default,)
RESHAPES = (aten.view.default, aten.reshape.default)
LOOKUPS = (aten.index.Tensor, aten.select.int, aten.slice.Tensor, aten.view.default, aten.reshape.default,
           aten.permute.default, aten.transpose.int, aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default,
           aten.flatten.using_ints, aten.t.default, aten.clone.default, aten.contiguous.default)
NEAREST = (aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default)
ARITHMETIC = (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.rsub.Scalar,
              aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar)


def remove_noop_slices(gm: torch.fx.GraphModule) -> int:
    """`x[..., 0:n:1]` where n covers the whole dim, `alias(x)`, and `x.expand(s)` or an adaptive average pool
    whose output has x's own shape, replaced by `x`; returns how many."""
    removed = 0
    for node in list(gm.graph.nodes):
        if _call(node, ALIASES + EXPANDS + SAME_SIZE_POOLS):
            noop = True  # an expand or a pool only when its output has its input's shape (checked below)
        elif _call(node, SLICES):
            x, args = node.args[0], list(node.args[1:]) + [None] * (5 - len(node.args))  # (dim, start, end, step)
            dim, start, end, step = (args[0] if args[0] is not None else node.kwargs.get("dim", 0)), *args[1:4]
            start = node.kwargs.get("start", start)
            end, step = node.kwargs.get("end", end), node.kwargs.get("step", step if step is not None else 1)
            shape = _shape(x)
            size = shape[dim] if shape is not None else None
            noop = (start in (None, 0) and step == 1 and (end is None or (_is_int(end) and _is_int(size) and end >= size)))
        else:
            continue
        if noop and _shape(node) is not None and _shape(node) == _shape(node.args[0]):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
    return removed


def _view(graph, x, shape, like):
    value = x.meta.get("val")
    return _meta(graph.call_function(aten.view.default, (x, shape)), like,
                 value.view(shape) if isinstance(value, torch.Tensor) else None)


def _cat(graph, pieces, dim, like):
    values = [p.meta.get("val") for p in pieces]
    value = torch.cat(values, dim) if all(isinstance(v, torch.Tensor) for v in values) else None
    return _meta(graph.call_function(aten.cat.default, (pieces, dim)), like, value)


def nearest_as_concat(gm: torch.fx.GraphModule) -> int:
    """Nearest upsampling of NCHW by integer factors (kh, kw), as concatenations and reshapes; returns how many.

    Width: each pixel is its own row ([N, C, H*W, 1]), kw copies side by side, back to [N, C, H, W*kw].
    Height: kh copies of each (upsampled) row side by side ([N, C, H, kh*W*kw]) read as kh rows. Every
    copy is its own reshape node: XNNPACK's concatenation needs distinct inputs.
    """
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if not _call(node, NEAREST):
            continue
        x = node.args[0]
        before, after = _shape(x), _shape(node)
        if before is None or after is None or len(before) != 4 or not all(_is_int(s) for s in (*before[1:], *after[1:])):
            continue
        _, c, h, w = before
        oh, ow = after[2:]
        if oh % h or ow % w or (oh // h, ow // w) == (1, 1):
            continue
        kh, kw = oh // h, ow // w
        with graph.inserting_before(node):
            y = x
            if kw > 1:
                pixels = [_view(graph, x, [-1, c, h * w, 1], node) for _ in range(kw)]
                y = _cat(graph, pixels, 3, node)
            rows = [_view(graph, y, [-1, c, h, w * kw], node) for _ in range(max(kh, 1))]
            if kh > 1:
                out = _view(graph, _cat(graph, rows, 3, node), [-1, c, oh, ow], node)
            else:
                out = rows[0]
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        done += 1
    return done


def broadcast_expands(gm: torch.fx.GraphModule) -> int:
    """`a * b.expand(s)` (or +, -, /) as `a * b` where broadcasting `b` against the other operand gives the same
    shape; returns how many expands were dropped."""
    done = 0
    for node in list(gm.graph.nodes):
        if not _call(node, EXPANDS + (aten.expand_as.default,)) or not node.users or _shape(node.args[0]) is None:
            continue
        source, expanded = node.args[0], _shape(node)
        uses = []
        for user in node.users:
            if not _call(user, BROADCASTING) or len(user.args) != 2 or user.kwargs:
                break
            other = user.args[1] if user.args[0] is node else user.args[0]
            other_shape = _shape(other) if isinstance(other, torch.fx.Node) else ()
            if other is node or other_shape is None or _shape(user) != expanded:
                break
            try:
                same = tuple(torch.broadcast_shapes(_shape(source), other_shape)) == tuple(expanded)
            except RuntimeError:
                same = False
            if not same:
                break
            uses.append(user)
        else:
            for user in uses:
                user.replace_input_with(node, source)
            gm.graph.erase_node(node)
            done += 1
    return done


def _call_op(graph, target, args, like, value=None):
    """A new call of `target`, with `like`'s metadata and, unless given, the example value computed from its
    arguments' (later steps read shapes from it)."""
    if value is None:
        try:
            value = target(*torch.fx.node.map_arg(args, lambda n: n.meta.get("val")))
        except Exception:  # noqa: BLE001 - no example value: later steps skip the node
            value = None
    return _meta(graph.call_function(target, args), like, value)


def _plane_mean(graph, x, rows: int, count: int, like):
    """mean over `count` trailing values of each of `rows` leading groups: x as [-1, rows, count, 1], then
    mean over dims (2, 3) kept: [-1, rows, 1, 1]."""
    flat = _call_op(graph, aten.reshape.default, (x, [-1, rows, count, 1]), like)
    return flat, _call_op(graph, aten.mean.dim, (flat, [2, 3], True), like)


def sum_as_mean(gm: torch.fx.GraphModule) -> int:
    """`x.sum(dims, keepdim)` over the trailing dims of a 4-d x of known sizes (but the batch), as
    `mean` over dims (2, 3) of x reshaped to [-1, leading, reduced, 1], times the count; returns how many."""
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if not _call(node, SUMS) or node.kwargs.get("dtype") is not None or len(node.args) < 2:
            continue
        x, shape, out = node.args[0], _shape(node.args[0]), _shape(node)
        if shape is None or out is None or len(shape) != 4 or not all(_is_int(s) for s in shape[1:]):
            continue
        dims = sorted(d % 4 for d in node.args[1])
        if not dims or dims != list(range(4 - len(dims), 4)) or dims[0] == 0:
            continue  # not the trailing dims only
        count = _product(shape[d] for d in dims)
        rows = _product(shape[d] for d in range(1, dims[0]))
        sizes = _sizes(out)
        if sizes is None:
            continue
        with graph.inserting_before(node):
            _, mean = _plane_mean(graph, x, rows, count, node)
            total = _call_op(graph, aten.mul.Tensor, (mean, float(count)), node)
            back = _call_op(graph, aten.reshape.default, (total, sizes), node, node.meta.get("val"))
        node.replace_all_uses_with(back)
        graph.erase_node(node)
        done += 1
    return done


def group_norm_arithmetic(gm: torch.fx.GraphModule) -> int:
    """`group_norm(x, G, weight, bias, eps)` of a 4-d x of known sizes (but the batch) as its arithmetic:
    each group's mean and (biased) variance as plane means, (x - mean) * rsqrt(var + eps), then the
    per-channel weight and bias; returns how many."""
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if not _call(node, GROUP_NORMS):
            continue
        x, groups, weight, bias, eps = (list(node.args) + [None] * 6)[:5]
        shape = _shape(x)
        if shape is None or len(shape) != 4 or not all(_is_int(s) for s in shape[1:]) or not _is_int(groups):
            continue
        _, c, h, w = shape
        if c % groups:
            continue
        eps = 1e-5 if eps is None else float(eps)
        count = c // groups * h * w
        with graph.inserting_before(node):
            flat, mean = _plane_mean(graph, x, groups, count, node)
            centred = _call_op(graph, aten.sub.Tensor, (flat, mean), node)
            square = _call_op(graph, aten.mul.Tensor, (centred, centred), node)
            var = _call_op(graph, aten.mean.dim, (square, [2, 3], True), node)
            scale = _call_op(graph, aten.rsqrt.default, (_call_op(graph, aten.add.Tensor, (var, eps), node),), node)
            y = _call_op(graph, aten.reshape.default, (_call_op(graph, aten.mul.Tensor, (centred, scale), node),
                                                       [-1, c, h, w]), node)
            if weight is not None:
                y = _call_op(graph, aten.mul.Tensor,
                             (y, _call_op(graph, aten.reshape.default, (weight, [1, c, 1, 1]), node)), node)
            if bias is not None:
                y = _call_op(graph, aten.add.Tensor,
                             (y, _call_op(graph, aten.reshape.default, (bias, [1, c, 1, 1]), node)), node)
        y.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(y)
        graph.erase_node(node)
        done += 1
    return done


def batched_matmul_as_bmm(gm: torch.fx.GraphModule) -> int:
    """`matmul(a, b)` of two tensors of rank r >= 3 with the same batch dims as `bmm` (rank 3) or as
    reshapes to [-1, n, k] and [-1, k, m], `bmm` and a reshape back; returns how many. The batch may be
    dynamic in its first dim only; every other size must be known."""
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if not _call(node, MATMULS) or len(node.args) != 2:
            continue
        a, b = node.args
        sa, sb, out = _shape(a), _shape(b), _shape(node)
        if sa is None or sb is None or out is None or len(sa) != len(sb) or len(sa) < 3:
            continue
        if [str(s) for s in sa[:-2]] != [str(s) for s in sb[:-2]] or not all(_is_int(s) for s in (*sa[1:], *sb[1:])):
            continue
        with graph.inserting_before(node):
            if len(sa) == 3:
                bmm = _meta(graph.call_function(aten.bmm.default, (a, b)), node, node.meta.get("val"))
            else:
                flat_a, flat_b = _view(graph, a, [-1, *sa[-2:]], node), _view(graph, b, [-1, *sb[-2:]], node)
                product = _meta(graph.call_function(aten.bmm.default, (flat_a, flat_b)), node, None)
                bmm = _meta(graph.call_function(aten.view.default, (product, [-1, *out[1:]])), node,
                            node.meta.get("val"))
        node.replace_all_uses_with(bmm)
        graph.erase_node(node)
        done += 1
    return done


def _permutation(node) -> list[int] | None:
    rank = len(_shape(node.args[0]))
    if _call(node, (aten.transpose.int,)):
        perm, (a, b) = list(range(rank)), (d % rank for d in node.args[1:3])
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    return [d % rank for d in node.args[1]]


def _sizes(shape) -> list | None:
    """`shape` as reshape sizes: a symbolic size (the dynamic batch) as -1, at most one of them."""
    dynamic = [i for i, s in enumerate(shape) if not _is_int(s)]
    return None if len(dynamic) > 1 else [s if _is_int(s) else -1 for s in shape]


def low_rank_permutes(gm: torch.fx.GraphModule) -> int:
    """Permutations of rank >= 5 as reshape -> permute at the lowest rank -> reshape; returns how many.

    Size-1 dims carry no order, and input dims that stay neighbours, in order, in the output move as one:
    (B, nH, ws, nW, ws, C).transpose(2, 3) is (B*nH, ws, nW, ws*C).transpose(1, 2). A reshape read from
    another reshape reads that one's input, and a reshape of the result reads the lower-rank permute."""
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if not _call(node, PERMUTES) or _shape(node.args[0]) is None or len(_shape(node.args[0])) < 5:
            continue
        x, shape, out = node.args[0], _shape(node.args[0]), _shape(node)
        kept = [d for d in range(len(shape)) if not (_is_int(shape[d]) and shape[d] == 1)]
        order = {d: i for i, d in enumerate(kept)}
        groups: list[list[int]] = []
        for d in (d for d in _permutation(node) if d in order):
            if groups and order[d] == order[groups[-1][-1]] + 1:
                groups[-1].append(d)
            else:
                groups.append([d])
        if len(groups) >= len(shape):  # no lower rank holds it: leave it
            continue
        by_input = sorted(groups, key=lambda g: g[0])
        merged = [_product(shape[d] for d in g) for g in by_input]
        sizes_in, sizes_out = _sizes(merged), _sizes(out)
        if sizes_in is None or sizes_out is None:
            continue
        source = x.args[0] if _call(x, RESHAPES) else x
        with graph.inserting_before(node):
            flat = _meta(graph.call_function(aten.reshape.default, (source, sizes_in)), node, None)
            moved = flat
            if len(groups) > 1:
                moved = _meta(graph.call_function(aten.permute.default, (flat, [by_input.index(g) for g in groups])),
                              node, None)
        for user in [u for u in node.users if _call(u, RESHAPES)]:  # a reshape reads the moved tensor itself
            user.replace_input_with(node, moved)
        if node.users:
            with graph.inserting_before(node):
                back = _meta(graph.call_function(aten.reshape.default, (moved, sizes_out)), node,
                             node.meta.get("val"))
            node.replace_all_uses_with(back)
        graph.erase_node(node)
        if _call(x, RESHAPES) and not x.users:
            graph.erase_node(x)
        done += 1
    return done


def _product(sizes):
    total = 1
    for s in sizes:
        total = total * s
    return total


def float_scalars(gm: torch.fx.GraphModule) -> int:
    """Integer scalar operands of float arithmetic made float (`x / 2` -> `x / 2.0`); returns how many."""
    done = 0
    for node in gm.graph.nodes:
        if not _call(node, ARITHMETIC):
            continue
        tensor = next((a for a in node.args if isinstance(a, torch.fx.Node)), None)
        value = tensor_value(tensor)
        if value is None or not value.dtype.is_floating_point:
            continue
        if any(_is_int(a) for a in node.args):
            node.args = tuple(float(a) if _is_int(a) else a for a in node.args)
            done += 1
    return done


DIVISIONS = (aten.div.Tensor, aten.div.Scalar)


def division_as_multiplication(gm: torch.fx.GraphModule) -> int:
    """`x / c` for a constant number c (not 0) as `x * (1 / c)`; returns how many.

    Only true division of a float tensor: a `rounding_mode` (floor, trunc) is left alone.
    """
    done = 0
    for node in list(gm.graph.nodes):
        if not _call(node, DIVISIONS) or node.kwargs.get("rounding_mode") is not None or len(node.args) != 2:
            continue
        x, c = node.args
        value = tensor_value(x)
        if not _number(c) or c == 0 or value is None or not value.dtype.is_floating_point:
            continue
        with gm.graph.inserting_before(node):
            product = _meta(gm.graph.call_function(aten.mul.Tensor, (x, 1.0 / float(c))), node, node.meta.get("val"))
        node.replace_all_uses_with(product)
        gm.graph.erase_node(node)
        done += 1
    return done


SILU = (aten.silu.default, aten.silu_.default)


def silu_as_sigmoid_mul(gm: torch.fx.GraphModule) -> int:
    """`silu(x)` as `x * sigmoid(x)` (its definition); returns how many.

    LiteRT has no int8 SiLU: a quantized graph's silu reached the `.tflite` as a float LOGISTIC and MUL between a
    DEQUANTIZE and a QUANTIZE. As sigmoid and mul, both quantize: the sigmoid on its fixed output grid
    (core/int8_constraints.py), the product as any int8 mul, in the `.pte`, the `.tflite` and Core ML alike.
    """
    done = 0
    for node in list(gm.graph.nodes):
        if not _call(node, SILU):
            continue
        x = node.args[0]
        value = x.meta.get("val")
        with gm.graph.inserting_before(node):
            gate = _meta(gm.graph.call_function(aten.sigmoid.default, (x,)), node,
                         torch.sigmoid(value) if isinstance(value, torch.Tensor) else None)
            product = _meta(gm.graph.call_function(aten.mul.Tensor, (x, gate)), node, node.meta.get("val"))
        node.replace_all_uses_with(product)
        gm.graph.erase_node(node)
        done += 1
    return done


STEPS = (
    IDENTITY_ARITHMETIC,  # first: `x / 1` and `x * 1` go here, in one step, before the division step sees them
    ("no-op slice / alias", "removed", remove_noop_slices,
     "selects (or expands to) the whole tensor; ExecuTorch makes it an alias_copy or expand_copy that XNNPACK "
     "(int8) and Core ML do not take"),
    ("expand before broadcasting arithmetic", "removed", broadcast_expands,
     "the arithmetic broadcasts to the same shape; XNNPACK and LiteRT did not take the expand"),
    ("sum over trailing dims", "mean over a reshape x count", sum_as_mean,
     "XNNPACK takes mean over the last two dims of a 4-d tensor, and no sum"),
    ("group_norm", "mean, variance, rsqrt, weight and bias", group_norm_arithmetic,
     "XNNPACK has no group norm; it takes each of these ops"),
    ("batched matmul", "bmm", batched_matmul_as_bmm,
     "the same batch dims; ExecuTorch decomposes matmul into expand + bmm, and XNNPACK refuses the int8 expand"),
    ("permute of rank >= 5", "reshape + lower-rank permute", low_rank_permutes,
     "size-1 dims dropped and neighbours merged; Core ML allows rank 5 at most"),
    ("upsample_nearest2d", "cat + reshape", nearest_as_concat,
     "integer factor; XNNPACK has no nearest resize, and delegates cat and reshape"),
    ("silu", "sigmoid + mul", silu_as_sigmoid_mul,
     "its definition; LiteRT has no int8 SiLU, and int8 sigmoid and mul it has"),
    ("division by a constant", "multiplication by its reciprocal", division_as_multiplication,
     "the int8 quantizers annotate mul, not div: the division stayed a float MUL in the .tflite"),
    ("int scalar in float arithmetic", "float scalar", float_scalars,
     "an int scalar becomes an int64 constant cast by a _to_dim_order_copy XNNPACK refuses"),
)


def _example(gm: torch.fx.GraphModule) -> tuple | None:
    inputs = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        shape = _shape(node)
        if shape is None or not all(_is_int(s) for s in shape[1:]):
            return None
        batch = shape[0] if shape and _is_int(shape[0]) else 2  # a graph exported with a fixed batch keeps it
        inputs.append(torch.randn(batch, *shape[1:], generator=torch.Generator().manual_seed(len(inputs))))
    return tuple(inputs)


def _run(gm: torch.fx.GraphModule, inputs: tuple, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    torch.manual_seed(0)  # dropout in a training graph draws the same masks in both runs
    gm = copy.deepcopy(gm).to(dtype)  # floating parameters and buffers only; counters stay integers
    with torch.no_grad():
        out = gm(*(i.to(dtype) for i in inputs))
    return out[0] if isinstance(out, (tuple, list)) else out


def float_difference(original: torch.fx.GraphModule, prepared: torch.fx.GraphModule, inputs: tuple) -> float:
    """Max |original - prepared| relative to the largest output, computed in float64 where the graph runs in it.

    A training graph normalizes each BatchNorm by the statistics of the batch; on a deep network with small
    feature maps that amplifies float32 rounding (SiLU as x * sigmoid(x) rounds differently) to 1e-5..1e-3 of
    the output, a false alarm. In float64 that noise is ~1e-12, so a real change still shows at its own size."""
    try:
        a, b = _run(original, inputs, torch.float64), _run(prepared, inputs, torch.float64)
    except (RuntimeError, TypeError, AssertionError):  # an op that takes float32 only (a quantize op asserts it)
        a, b = _run(original, inputs), _run(prepared, inputs)
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def prepare(gm: torch.fx.GraphModule) -> list[dict]:
    """Apply STEPS to `gm` in place and check it against the original in float; returns (from, to, count, why)."""
    inputs = _example(gm)
    original = copy.deepcopy(gm) if inputs is not None else None
    done = []
    for name, to, step, why in STEPS:
        count = step(gm)
        if count:
            done.append({"from": name, "to": to, "count": count, "why": why})
    if not done:
        return done
    gm.graph.lint()
    gm.recompile()
    if original is not None:
        diff = float_difference(original, gm, inputs)
        if diff > FLOAT_TOLERANCE:
            raise AssertionError(f"graph preparation changed the network's float output by {diff:.2e} (relative); "
                                 f"steps: {done}")
    return done


def fold_constant_lookups(gm: torch.fx.GraphModule) -> int:
    """Data-movement ops (LOOKUPS) whose every tensor input is a weight, a buffer or such an op, computed once
    and stored as a buffer; returns how many stored tensors replace them. Only for frozen weights: in QAT the
    table is trained."""
    graph, values = gm.graph, {}
    for node in graph.nodes:
        if node.op == "get_attr":
            values[node] = _attr(gm, node.target)
            continue
        if not _call(node, LOOKUPS):
            continue
        needed = []
        torch.fx.node.map_arg((node.args, node.kwargs), needed.append)
        if needed and all(n in values and isinstance(values[n], torch.Tensor) for n in needed):
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
            with torch.no_grad():
                values[node] = node.target(*args, **kwargs)
    frontier = [n for n in values if n.op == "call_function" and any(u not in values for u in n.users)]
    for i, node in enumerate(frontier):
        name = f"_folded_lookup_{i}"
        while hasattr(gm, name):
            name += "_"
        gm.register_buffer(name, values[node].detach().clone().contiguous())
        with graph.inserting_before(node):
            stored = _meta(graph.get_attr(name), node, node.meta.get("val"))
        node.replace_all_uses_with(stored, delete_user_cb=lambda user: user not in values)
    for node in reversed(list(graph.nodes)):
        if node in values and node.op == "call_function" and not node.users:
            graph.erase_node(node)
    if frontier:
        graph.lint()
        gm.recompile()
    return len(frontier)


def _attr(gm: torch.fx.GraphModule, target: str):
    value = gm
    for part in target.split("."):
        value = getattr(value, part, None)
    return value
