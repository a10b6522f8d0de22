"""BatchNorm layers that follow no convolution, rewritten into ops the int8 runtimes quantize.

The int8 quantizers fold a BatchNorm into the convolution before it (conv → BN is one int8 conv).
A BatchNorm with no such convolution — on a residual sum (RepViT's `bn(conv(x) + conv1(x) + x)`),
as the identity branch of a re-parameterizable block (MobileOne, FastViT), after an activation, or
after a convolution whose output other ops also read — has no int8 pattern: it stays float between
a dequantize and a quantize, outside XNNPACK and as float ops in the `.tflite`.

In eval mode such a BatchNorm is a per-channel affine map, y = a·x + b with a = γ/√(σ²+ε) and
b = β − a·μ. Rewritten here, exactly:

- BatchNorm2d → a depthwise 1×1 convolution with weight a and bias b (each runtime quantizes and
  delegates a depthwise conv). For timm's BatchNormAct2d, its dropout and activation follow the conv.
- BatchNorm1d read only by one Linear (a classifier head's `bn → dropout → linear`) → folded into
  that Linear: W' = W·diag(a), b' = W·b + bias (no padding to break the fold, unlike a conv).

Which BatchNorms are standalone is read from the network's own export graph (torch.export, eval
mode), so nothing depends on class names. The rewritten network computes the same function in
eval mode (checked by core.rewrites.apply); during QAT the new conv trains as a free affine map.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

CONVS = ("conv2d", "convolution", "conv1d")
PASS_THROUGH = ("dropout", "clone", "alias", "contiguous", "detach")
_CACHE: dict = {}


def _op(node) -> str:
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return ""
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def _innermost(node: torch.fx.Node) -> str | None:
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    return stack[-1][0] if stack else None


def _structure(model: nn.Module, shape: tuple) -> tuple:
    return (type(model).__qualname__, tuple(shape),
            tuple((n, type(m).__qualname__) for n, m in model.named_modules()))


def find(model: nn.Module, shape: tuple[int, ...]) -> dict[str, str | None]:
    """{module path of each standalone BatchNorm: the Linear it folds into (BatchNorm1d) or None (→ conv)}."""
    key = _structure(model, shape)
    if key in _CACHE:
        return _CACHE[key]
    probe = copy.deepcopy(model).eval()
    try:
        graph = torch.export.export(probe, (torch.zeros(1, *shape),), strict=False).graph
    except Exception:  # not exportable: the export stage reports that itself, with its own explanation
        return {}
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        path = _innermost(node)
        if path is not None and _op(node) in ("linear",):
            calls[path] = calls.get(path, 0) + 1
    found: dict[str, str | None] = {}
    for node in graph.nodes:
        if "batch_norm" not in _op(node):
            continue
        path = _innermost(node)
        module = modules.get(path) if path is not None else None
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.running_mean is None:
            continue
        source = node.args[0]
        if _op(source) in CONVS and len(source.users) == 1:
            continue  # conv → BN: the quantizers fold it
        if isinstance(module, nn.BatchNorm2d) and not _has_unknown_parts(module):
            found[path] = None
        elif isinstance(module, nn.BatchNorm1d) and type(module) is nn.BatchNorm1d:
            linear = _sole_linear(node)
            if linear is not None and calls.get(_innermost(linear)) == 1 \
                    and isinstance(modules.get(_innermost(linear)), nn.Linear):
                found[path] = _innermost(linear)
    _CACHE[key] = found
    return found


def _sole_linear(node: torch.fx.Node) -> torch.fx.Node | None:
    """The one Linear that alone reads the node's values (through dropout-like pass-through ops), if any."""
    users = list(node.users)
    while len(users) == 1 and _op(users[0]) in PASS_THROUGH:
        users = list(users[0].users)
    return users[0] if len(users) == 1 and _op(users[0]) == "linear" else None


def _has_unknown_parts(bn: nn.Module) -> bool:
    """A BatchNorm subclass whose forward may do more than normalize, drop and activate (timm's NormAct)."""
    if type(bn) is nn.BatchNorm2d:
        return False
    extra = {n for n, _ in bn.named_children()} - {"drop", "act"}
    return bool(extra) or not (hasattr(bn, "act") and hasattr(bn, "drop"))


def _affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.detach().double()
    b = -a * bn.running_mean.detach().double()
    if bn.bias is not None:
        b = b + bn.bias.detach().double()
    return a, b


def as_conv(bn: nn.BatchNorm2d) -> nn.Module:
    """The BatchNorm2d (eval mode) as a depthwise 1×1 conv; a NormAct's dropout and activation kept after it."""
    a, b = _affine(bn)
    c = bn.num_features
    conv = nn.Conv2d(c, c, 1, groups=c, bias=True)
    with torch.no_grad():
        conv.weight.copy_(a.reshape(c, 1, 1, 1).to(conv.weight.dtype))
        conv.bias.copy_(b.to(conv.bias.dtype))
    if type(bn) is nn.BatchNorm2d:
        return conv
    return nn.Sequential(conv, bn.drop, bn.act)


def fold_into_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> None:
    a, b = _affine(bn)
    with torch.no_grad():
        w = linear.weight.detach().double()
        bias = w @ b + (linear.bias.detach().double() if linear.bias is not None else 0.0)
        linear.weight.copy_((w * a.unsqueeze(0)).to(linear.weight.dtype))
        if linear.bias is None:
            linear.bias = nn.Parameter(bias.to(linear.weight.dtype))
        else:
            linear.bias.copy_(bias.to(linear.bias.dtype))


def rewrite(model: nn.Module, shape: tuple[int, ...]) -> list[dict]:
    """Rewrite `model`'s standalone BatchNorms in place; returns what was replaced (module, from, to, why)."""
    done = []
    for path, linear in find(model, shape).items():
        bn = model.get_submodule(path)
        if linear is None:
            model.set_submodule(path, as_conv(bn))
            done.append({"module": path, "from": type(bn).__name__, "to": "depthwise 1x1 Conv2d" + ("" if type(bn) is nn.BatchNorm2d else " (+ its dropout, activation)"),
                         "why": "a BatchNorm after no conv has no int8 pattern; as a depthwise conv it quantizes"})
        else:
            fold_into_linear(bn, model.get_submodule(linear))
            model.set_submodule(path, nn.Identity())
            done.append({"module": f"{path} -> {linear}", "from": type(bn).__name__, "to": "folded into the Linear after it",
                         "why": "a BatchNorm1d before a Linear folds into its weights exactly"})
    return done
