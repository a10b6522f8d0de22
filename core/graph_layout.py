"""Graph preparation steps that move data without arithmetic (core/graph_prep.py runs them): no-op slices,
aliases, expands and pools removed; an expand that arithmetic broadcasts anyway dropped; a batched matmul as
bmm; permutations of rank >= 5 at the lowest rank; nearest upsampling as concatenations and reshapes; and, for
export with frozen weights, weight tables read by constant indices stored once (`fold_constant_lookups`).
Each returns how many places it rewrote; every one computes bit-identical values."""

from __future__ import annotations

import torch

from .fx_nodes import calls as _call, is_int as _is_int, shape as _shape, with_meta as _meta, reshape_sizes as _sizes, product as _product

aten = torch.ops.aten

ALIASES = (aten.alias.default,)
SLICES = (aten.slice.Tensor,)
EXPANDS = (aten.expand.default,)
MATMULS = (aten.matmul.default,)
SAME_SIZE_POOLS = (aten.adaptive_avg_pool2d.default,)
PERMUTES = (aten.permute.default, aten.transpose.int)
BROADCASTING = (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor)
RESHAPES = (aten.view.default, aten.reshape.default)
SOFTMAXES = (aten.softmax.int, aten._softmax.default)
NEAREST = (aten.upsample_nearest2d.vec, aten.upsample_nearest2d.default)
LOOKUPS = (aten.index.Tensor, aten.select.int, aten.slice.Tensor, aten.view.default, aten.reshape.default,
           aten.permute.default, aten.transpose.int, aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default,
           aten.flatten.using_ints, aten.t.default, aten.clone.default, aten.contiguous.default)


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


def flat_softmax(gm: torch.fx.GraphModule) -> int:
    """Softmax over the last dim of a 4-d tensor as softmax over the last dim of its [-1, W] reshape; returns how
    many. ExecuTorch's XNNPACK program computed the 4-d one over another dim after a conv (the tensor is
    channels-last there): MobileViTv2's attention scores gave an fp32 .pte that agreed with PyTorch on 18.5% of
    images. The 2-d form has no channel dim to confuse."""
    graph, done = gm.graph, 0
    for node in list(graph.nodes):
        if not _call(node, SOFTMAXES) or _shape(node.args[0]) is None or len(_shape(node.args[0])) != 4:
            continue
        x, dim = node.args[0], node.args[1]
        shape = _shape(x)
        if dim % 4 != 3 or not _is_int(shape[-1]) or (len(node.args) > 2 and node.args[2] not in (None, False)):
            continue
        sizes = _sizes(shape)
        if sizes is None:
            continue
        with graph.inserting_before(node):
            flat = _reshape(graph, x, [-1, shape[-1]], node)
            soft = _meta(graph.call_function(aten.softmax.int, (flat, -1)), node, None)
            back = _meta(graph.call_function(aten.reshape.default, (soft, sizes)), node, node.meta.get("val"))
        node.replace_all_uses_with(back)
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
                # reshape, not view: heads split off by a permute (LeViT's q.permute(0, 2, 1, 3)) cannot be viewed
                flat_a, flat_b = _reshape(graph, a, [-1, *sa[-2:]], node), _reshape(graph, b, [-1, *sb[-2:]], node)
                product = _meta(graph.call_function(aten.bmm.default, (flat_a, flat_b)), node, None)
                bmm = _meta(graph.call_function(aten.reshape.default, (product, [-1, *out[1:]])), node,
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


def _reshape(graph, x, shape, like):
    value = x.meta.get("val")
    return _meta(graph.call_function(aten.reshape.default, (x, shape)), like,
                 value.reshape(shape) if isinstance(value, torch.Tensor) else None)


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
