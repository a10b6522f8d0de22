"""The graph Core ML is given, and what is said when it fails: buffer updates no output reads are dropped,
any other model state is refused with its layer named, and a coremltools failure is located (layer, op).

Why the buffer updates: a QAT graph captured in training mode carries BatchNorm's `num_batches_tracked.add_(1)`
(timm's BatchNormAct2d writes it out in its forward) into the converted int8 graph. ct.convert turns each
updated buffer into Core ML model *state*; the saved program then has a scalar fp16 state input that
coremltools itself cannot load back (`type object 'fp16' has no attribute 'get_shape'`), and a state that
counts inferences has no place in an inference model.
"""

from __future__ import annotations

import copy
import traceback
from contextlib import contextmanager
from typing import Iterator

import torch

from core.io import OutputDirError

from .base import ConversionError

SHOWN = 3  # names on the console; the log has them all


def layer_of(node) -> str | None:
    """The module path a graph node came from (its nn_module_stack's innermost entry), if recorded."""
    stack = (getattr(node, "meta", None) or {}).get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values() if path]
    return paths[-1] if paths else None


def _listed(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more (all in the log)" if len(names) > SHOWN else "")


def drop_dead_buffer_updates(program: torch.nn.Module) -> tuple[torch.nn.Module, list[dict]]:
    """A copy of a graph module without its in-place updates of buffers whose value nothing else reads (a
    BatchNorm counter incremented at every call): no output depends on them, so dropping them is exact.
    Returns the copy and one row per dropped update (buffer, layer, op); the graph itself if there are none."""
    def dead_updates(attr) -> list:
        users = list(attr.users)
        ok = users and all(u.op == "call_function" and isinstance(u.target, torch._ops.OpOverload)
                           and u.target._schema.is_mutable and u.args and u.args[0] is attr and not u.users
                           for u in users)
        return users if ok else []

    graph = getattr(program, "graph", None)
    if graph is None or not any(dead_updates(n) for n in graph.nodes if n.op == "get_attr"):
        return program, []
    program = copy.deepcopy(program)
    dropped = []
    for attr in [n for n in program.graph.nodes if n.op == "get_attr"]:
        updates = dead_updates(attr)
        for update in updates:
            dropped.append({"buffer": attr.target, "layer": layer_of(update), "op": str(update.target)})
            program.graph.erase_node(update)
        if updates:
            program.graph.erase_node(attr)
    program.graph.lint()
    program.recompile()
    print(f"coreml: dropped {len(dropped)} buffer update(s) that no output reads: "
          + ", ".join(f"{r['op']} of {r['buffer']} ({r['layer']})" for r in dropped))
    return program, dropped


def refuse_state(exported, file: str) -> None:
    """Refuse an exported program that still updates buffers: Core ML would make them model state."""
    mutated = list(exported.graph_signature.buffers_to_mutate.values())
    if not mutated:
        return
    nodes = {n.name: n for n in exported.graph.nodes}
    ops = sorted({str(nodes[out].target) for out in exported.graph_signature.buffers_to_mutate if out in nodes})
    names = [m.removeprefix("net.") for m in mutated]
    print(f"{file}: buffers the graph updates: {names}")
    raise ConversionError(
        f"{file}: the graph updates {len(mutated)} buffer(s) at every inference ({', '.join(ops[:SHOWN])} on "
        f"{_listed(names)}), which Core ML would keep as model state. Compute them outside the model's forward "
        "(or register them as constants), then export again")


def _failing_node(exc: BaseException):
    """The graph node coremltools was converting when `exc` was raised, found in the traceback's frames."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if node is not None and (isinstance(node, torch.fx.Node) or hasattr(node, "kind")):
            found = node  # the innermost wins
        tb = tb.tb_next
    return found


def failure(file: str, step: str, exc: BaseException, program: torch.nn.Module | None = None,
            hint: str = "") -> ConversionError:
    """A ConversionError for a library exception raised while making or checking `file`: the file, the step, the
    layer and op being converted when it can be found, the library's own first line, and what to do. The full
    traceback goes to the log (stdout, which the CLI captures)."""
    if isinstance(exc, ConversionError):
        return exc
    traceback.print_exception(exc)
    node = _failing_node(exc)
    where = ""
    if node is not None:
        op = getattr(node, "kind", None) or str(getattr(node, "target", ""))
        layer = layer_of(node)
        if (layer in (None, "net") and program is not None):  # re-exported: look the node up in the source graph
            same = next((n for n in program.graph.nodes if n.name == getattr(node, "name", None)), None)
            layer = layer_of(same) if same is not None else layer
        layer = (layer or "").removeprefix("net.")
        where = f" at layer `{layer}`" if layer and layer != "net" else ""
        where += f" (op {op}, graph node {getattr(node, 'name', '?')})"
    said = (str(exc).strip().splitlines() or [""])[0]
    said = said if len(said) <= 200 else said[:200] + "…"
    return ConversionError(f"{file}: {step} failed{where}: {type(exc).__name__}: {said}. "
                           f"{hint + '; ' if hint else ''}the full traceback is in the log")


@contextmanager
def explained(file: str, step: str, hint: str = "", program: torch.nn.Module | None = None) -> Iterator[None]:
    """Turn a library exception raised inside the block into `failure(...)`; ConversionError and a full or
    read-only OUT (OutputDirError) pass as they are."""
    try:
        yield
    except (ConversionError, OutputDirError):
        raise
    except Exception as exc:  # noqa: BLE001 - coremltools raises anything; it is explained, never swallowed
        raise failure(file, step, exc, program, hint) from exc
