"""Which axes each dim of a tensor holds, so that one layer's tensors in two runtimes can be read in one order.

PyTorch and the .tflite hold a layer's values in different dim orders: the .tflite's convs compute NHWC where
PyTorch's compute NCHW, and litert-torch folds PyTorch's own permutes and reshapes into (or out of) its layout
transposes. So neither runtime's order can be taken for the other's: a tensor PyTorch permuted channels-last is the
.tflite's NHWC tensor as it is, and a flatten of NCHW in PyTorch may be a reshape of NHWC (its transpose) in the .tflite.

A *frame* says, for each dim of a tensor, which digits of which named axes it holds: a tuple (one per dim) of
factors `(axis, size, stride)`, outermost first, where `stride` is the factor's place value within its axis (H of
size 12 split into 3 × 4 is ('H', 3, 4), ('H', 4, 1)). Axes are named where a tensor is laid out afresh: a conv's
output (N, C, H, W, in whichever order its runtime holds them), the input, a matmul's output (named by position from
the last dim). Each graph is walked with the same rules (`permute`, `reshape`, `keep`); two tensors made of the same
factors are the same values, and `reading` gives the reshape and transpose that put one in the other's order.
A dim of size 1 keeps its axis name where the tensor was laid out (a 1 × 1 map padded to 4 × 4 is H and W),
and holds no factor after a reshape; size-1 factors are not compared (they hold no values).
"""

from __future__ import annotations

import math

import numpy as np

Factor = tuple[str, int, int]
Frame = tuple[tuple[Factor, ...], ...]
NCHW, NHWC = "NCHW", "NHWC"


def named(names: str, shape) -> Frame:
    """A tensor laid out afresh: dim i is the whole axis names[i]."""
    return tuple(((n, int(s), 1),) for n, s in zip(names, shape))


def fresh(shape) -> Frame:
    """A tensor with new axes (a matmul's output), named by their position from the last dim."""
    return named([f"a{i - len(shape)}" for i in range(len(shape))], shape)


def size(dim: tuple[Factor, ...]) -> int:
    return math.prod(f[1] for f in dim)


def permute(frame: Frame, dims) -> Frame:
    rank = len(frame)
    return tuple(frame[int(d) % rank] for d in dims)


def reshape(frame: Frame, shape) -> Frame | None:
    """The frame after a row-major reshape to `shape`: its factors regrouped in order, split where a new dim ends
    inside one; None where a dim would end between digits of a factor that its size does not divide."""
    queue = [f for dim in frame for f in dim if f[1] > 1]
    out = []
    for s in shape:
        dim, rest = [], int(s)
        while rest > 1:
            if not queue:
                return None
            axis, n, stride = queue[0]
            if rest % n == 0:
                dim.append(queue.pop(0))
                rest //= n
            elif n % rest == 0:  # the dim ends inside this factor: its outer digits here, the inner ones next
                dim.append((axis, rest, stride * (n // rest)))
                queue[0] = (axis, n // rest, stride)
                rest = 1
            else:
                return None
        out.append(tuple(dim))
    return None if queue else tuple(out)


def keep(frame: Frame, shape) -> Frame:
    """The frame of an op that keeps its input's dims (elementwise, pad, slice, concatenation, pooling): a dim
    whose size the op changed is one factor of its axis (pad and slice of H are still H), or a new one."""
    out = []
    for dim, s in zip(frame, shape):
        if size(dim) == s:
            out.append(dim)
        else:
            label = dim[0][0] if len(dim) == 1 else "+".join(f[0] for f in dim) + "'"
            out.append(((label, int(s), 1),))
    return tuple(out)


def follow(inputs: list[Frame], shape) -> Frame:
    """The frame of an op that keeps its inputs' dims (elementwise, pad, slice, concatenation, pooling, quantize), from
    an input of the output's own shape (not a broadcast one: squeeze-excitation's MUL takes a [1, 1, 1, C] scale and
    a feature map, in either order), else the first of its rank; new axes where no input has its rank."""
    same_rank = [f for f in inputs if len(f) == len(shape)]
    same_shape = [f for f in same_rank if [size(d) for d in f] == [int(s) for s in shape]]
    return keep((same_shape or same_rank)[0], shape) if same_rank else fresh(shape)


def reading(theirs: Frame, their_shape, ours: Frame, our_shape) -> tuple[list[int], list[int]] | None:
    """How to read a tensor with frame `theirs` in the order of one with frame `ours`: (shape, axes) for
    `values.reshape(shape).transpose(axes)`, after which a reshape to `our_shape` gives ours. None where the two
    are not made of the same factors (or the frames do not fit their shapes)."""
    if [size(d) for d in theirs] != [int(s) for s in their_shape] or [size(d) for d in ours] != [int(s) for s in our_shape]:
        return None
    cuts: dict[str, set[int]] = {}
    for frame in (theirs, ours):
        for dim in frame:
            for axis, n, stride in dim:
                cuts.setdefault(axis, set()).update((stride, stride * n))

    def atoms(frame: Frame) -> list[Factor]:
        out = []
        for dim in frame:
            for axis, n, stride in dim:
                inside = sorted((c for c in cuts[axis] if stride <= c <= stride * n), reverse=True)
                out += [(axis, hi // lo, lo) for hi, lo in zip(inside, inside[1:]) if hi > lo]
        return out

    a, b = atoms(theirs), atoms(ours)
    if sorted(a) != sorted(b) or len(set(a)) != len(a):
        return None
    return [f[1] for f in a] or [1], [a.index(f) for f in b] or [0]


def transpose(theirs: Frame, ours: Frame) -> list[int] | None:
    """Where one tensor is the other's transpose (each dim the same factors): the dims of `theirs` that hold `ours`'
    dims in turn (numpy's transpose axes); None where it is not."""
    if len(theirs) != len(ours):
        return None
    a, b = ([tuple(f for f in dim if f[1] > 1) for dim in frame] for frame in (theirs, ours))
    if sorted(a) != sorted(b):
        return None
    axes: list[int] = []
    for dim in b:
        axes.append(next(i for i, d in enumerate(a) if d == dim and i not in axes))
    return axes


def read(values: np.ndarray, how: tuple[list[int], list[int]] | None) -> np.ndarray:
    """One image's tensor in the other's order (`reading`), flat after a batch dim of 1; as it is where there is
    no reading."""
    return values.reshape(1, -1) if how is None else values.reshape(how[0]).transpose(how[1]).reshape(1, -1)
