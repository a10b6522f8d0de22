"""Can torch.export trace this network? If not, which layer and which op stop it.

Every runtime here starts from a `torch.export` graph, so a network it cannot trace is bad
input: found before training, with the layer named. The layer is found by exporting each
submodule alone on the inputs it received in an eager forward pass, descending into the
first one that fails until none of its children fail.
"""

from __future__ import annotations

import re
import traceback

import torch
import torch.nn as nn
from torch.export import Dim

from .models import ModelError

MAX_BATCH = 1024


def export_training_graph(model: nn.Module, shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """The graph QAT and PTQ start from: exported with a dynamic batch (an example batch of 2)."""
    example = torch.zeros(2, *shape)
    return torch.export.export(model, (example,), dynamic_shapes=({0: Dim("batch", min=1, max=MAX_BATCH)},)).module()


def check_exportable(model: nn.Module, name: str, shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """The train-mode export graph of `model`; ModelError naming the layer and the op if torch.export fails."""
    try:
        return export_training_graph(model.train(), shape)
    except Exception as exc:  # torch.export raises many kinds; all mean the same to the user
        layer, op = locate(model, shape, exc)
        where = f"in layer {layer}" if layer else "in the model's own forward()"
        raise ModelError(f"{name} cannot be exported with torch.export {where}"
                         f"{f' (op or call: {op})' if op else ''}: {first_line(exc)}. Every runtime here starts "
                         "from a torch.export graph: make that code traceable (no data-dependent Python control "
                         "flow or .item()/.tolist() on tensors), or replace the layer") from exc
    finally:
        model.eval()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def guess_op(exc: BaseException) -> str | None:
    """The operator or call the error names, or the last source line in user code."""
    text = str(exc)
    for pattern in (r"(aten\.[\w.]+)", r"operator[: ]+([\w.:]+)", r"'([\w.]+)' is not supported", r"call_function ([\w.]+)"):
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename and f.line]
    return frames[-1].line.strip() if frames else None


def locate(model: nn.Module, shape: tuple[int, ...], exc: BaseException) -> tuple[str | None, str | None]:
    """(deepest failing submodule's name, op) for a model whose export failed."""
    inputs: dict[str, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: inputs.setdefault(n, args))
             for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model.train()(torch.zeros(2, *shape))
    except Exception:
        pass  # the eager pass may fail too; the inputs recorded so far still help
    finally:
        for h in hooks:
            h.remove()
    culprit, error = None, exc

    def descend(module: nn.Module, prefix: str) -> None:
        nonlocal culprit, error
        for child_name, child in module.named_children():
            full = f"{prefix}.{child_name}" if prefix else child_name
            args = inputs.get(full)
            if args is None or not all(isinstance(a, torch.Tensor) for a in args):
                continue
            try:
                torch.export.export(child, tuple(args))
            except Exception as child_exc:
                culprit, error = f"{full} ({type(child).__name__})", child_exc
                descend(child, full)
                return

    descend(model, "")
    return culprit, guess_op(error)
