"""Folding before Core ML conversion, the same on both sides of the Linux read-back: BatchNorm (and BatchNorm
subclasses that are plain batch norm then their own modules, timm's BatchNormAct2d) into the conv before it, and
a per-channel scale after a conv (timm's layer scale) into that conv. Core ML's converter folds these itself;
folding them first keeps the file's weights equal to the folded network's, which the read-back matches
(converters/coreml_weights.py)."""

from __future__ import annotations

import copy
import operator
from collections import OrderedDict

import torch
import torch.nn as nn


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
