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

`prepare(gm)` runs them all and checks the result against the original graph in float. The steps that
move data live in core/graph_layout.py, those that write arithmetic another way in core/graph_arithmetic.py.

`graph_layout.fold_constant_lookups(gm)`, for a graph whose weights are frozen (export, not QAT): a table
read by constant indices (EfficientViT's `attention_biases[:, idxs]`, then one head's row of it) is
computed once and stored; XNNPACK takes neither `index` nor `select` on weights. `graph_layout.flat_softmax`,
for the ExecuTorch program only: softmax over the last dim of a 4-d tensor as softmax of its [-1, W] reshape
(ExecuTorch's XNNPACK program computed the 4-d one over another dim after a conv: MobileViTv2's fp32 .pte
agreed with PyTorch on 18.5% of images). In the QAT graph that form made an observer fail, so it is applied
where the program is lowered.
"""

from __future__ import annotations

import copy

import torch

from .fx_nodes import is_int as _is_int, shape as _shape
from .graph_arithmetic import division_as_multiplication, float_scalars, group_norm_arithmetic, silu_as_sigmoid_mul, sum_as_mean
from .graph_layout import (batched_matmul_as_bmm, broadcast_expands, low_rank_permutes, nearest_as_concat,
                           remove_noop_slices)
from .identity_arithmetic import STEP as IDENTITY_ARITHMETIC

FLOAT_TOLERANCE = 1e-5  # these steps move no arithmetic: only float noise may differ


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
