"""Build each of torchao's PT2E rewrite patterns once per process, not once per call.

torchao's `prepare_qat_pt2e` and `convert_pt2e` find conv+BatchNorm (and dropout, batchnorm-mode) subgraphs by
matching them against small pattern graphs, and they make every pattern graph anew with `torch.export` on each
call: 96 exports for one `convert_pt2e` of a network with BatchNorms, about 30 s on a 2-core host, whatever the
size of the network. A pattern graph depends only on the pattern function (its code and the values it closes
over: conv kind, bias, per-channel, training mode) and on the types, shapes and dtypes of its example inputs (never
on their values: the patterns have no data-dependent branches). So the graph is kept under that key, and each
caller gets its own deep copy of it, as if it had been exported for that call.

`install()` wraps `torchao.quantization.pt2e.utils._get_aten_graph_module_for_pattern`: in that module (so modules
imported later bind the wrapper) and in every module already imported that bound the original by name (torchao's
QAT utilities, the XNNPACK and Core ML quantizers of ExecuTorch, litert-torch's quantizer). It is idempotent. A
pattern whose key cannot be formed is exported every time, as torchao does: a value it closes over that is not
hashable, or a callable other than a plain function or torchao's `WrapperModule` of one (an object's identity is
no key: a freed object's id is reused).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import sys
from typing import Any, Callable

_HOME = "torchao.quantization.pt2e.utils"
_NAME = "_get_aten_graph_module_for_pattern"

_cache: dict = {}
stats = {"built": 0, "reused": 0, "uncached": 0}
_enabled = [True]


class _Unkeyable(Exception):
    pass


def _key_of(value: Any):
    import torch

    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type, value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_key_of(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _key_of(v)) for k, v in value.items())))
    try:
        hash(value)
    except TypeError as exc:
        raise _Unkeyable from exc
    return value


def _pattern_key(pattern: Callable) -> tuple:
    import torch

    if isinstance(pattern, torch.nn.Module):  # torchao's WrapperModule(fn): a module holding only a function
        fn = getattr(pattern, "fn", None)
        if fn is None or list(pattern.parameters()) or list(pattern.buffers()) or list(pattern.children()):
            raise _Unkeyable
        pattern = fn
    code = getattr(pattern, "__code__", None)
    if code is None:
        raise _Unkeyable
    cells = tuple(_key_of(cell.cell_contents) for cell in (pattern.__closure__ or ()))
    return ("function", code, cells, _key_of(pattern.__defaults__ or ()),
            _key_of(dict(pattern.__kwdefaults__ or {})))


def _cached(build: Callable) -> Callable:
    @functools.wraps(build)
    def get(pattern, example_inputs, is_cuda: bool = False, **kwargs):
        if not _enabled[0]:
            return build(pattern, example_inputs, is_cuda, **kwargs)
        try:
            key = (_pattern_key(pattern), _key_of(tuple(example_inputs)), bool(is_cuda), _key_of(kwargs))
        except _Unkeyable:
            stats["uncached"] += 1
            return build(pattern, example_inputs, is_cuda, **kwargs)
        if key not in _cache:
            _cache[key] = build(pattern, example_inputs, is_cuda, **kwargs)
            stats["built"] += 1
        else:
            stats["reused"] += 1
        return copy.deepcopy(_cache[key])

    get.__wrapped_by_pattern_cache__ = True
    get.uncached = build
    return get


def torchao_builder() -> Callable:
    """The pattern builder torchao's modules call now (the cached one once `install()` ran)."""
    return getattr(importlib.import_module(_HOME), _NAME)


def install() -> None:
    """Route torchao's pattern building through the cache (every module that reads it); safe to call again."""
    utils = importlib.import_module(_HOME)
    original = getattr(utils, _NAME)
    if getattr(original, "__wrapped_by_pattern_cache__", False):
        return
    importlib.import_module("torchao.quantization.pt2e.qat_utils")  # binds it by name at import: patch it too
    wrapped = _cached(original)
    for module in list(sys.modules.values()):
        if getattr(module, _NAME, None) is original:
            setattr(module, _NAME, wrapped)


@contextlib.contextmanager
def bypassed():
    """Within it, every pattern is exported anew, as torchao does without the cache (to compare against)."""
    _enabled[0] = False
    try:
        yield
    finally:
        _enabled[0] = True


def clear() -> None:
    _cache.clear()
    for k in stats:
        stats[k] = 0
