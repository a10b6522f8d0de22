"""Pruning with a gradual schedule and fine-tuning; each method returns an ordinary nn.Module.

- unstructured: global magnitude pruning of every conv/linear weight with torch.nn.utils.prune
  (L1, one threshold across all layers). The masks are made permanent at the end and returned,
  so that QAT can hold the pruned weights at zero.
- structured: whole channels removed with torch-pruning (MagnitudePruner, L2 importance, the
  same ratio in every layer, the classifier's outputs kept). Its dependency graph shrinks the
  layers that consume a pruned layer too, so the network really gets smaller.

Schedule (Zhu and Gupta, 2017): the sparsity rises as s_k = S·(1 - (1 - k/n)³) over n pruning
events spread across the first 3/4 of the fine-tuning steps; the last quarter only fine-tunes.
With no fine-tuning steps, one pruning step reaches S at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from core.config import RunConfig
from core.data import DataBundle
from core.distill import Distillation, WithTeacher, teacher_from
from core.loaders import TrainLoader
from core.models import count_macs
from core.train import run_epoch

from .quant import QUANTIZABLE

METHODS = ("unstructured", "structured")
MAX_EVENTS = 10
PRUNING_PHASE = 0.75


@dataclass
class Pruned:
    model: nn.Module
    method: str
    target: float  # --sparsity or --channel-ratio
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # state_dict name -> bool keep-mask (unstructured)
    stats: dict = field(default_factory=dict)


def cubic_schedule(target: float, events: int) -> list[float]:
    """Sparsity after each of `events` pruning steps (torch-pruning's scheduler signature: index 0 is 0)."""
    return [target * (1 - (1 - k / events) ** 3) for k in range(events + 1)]


def plan(cfg: RunConfig, n_train: int) -> tuple[int, list[int]]:
    """Total fine-tuning steps, and the step at which each pruning event happens."""
    total = math.ceil(cfg.prune_epochs * n_train / cfg.batch_size)
    if cfg.prune_steps:
        total = min(total, cfg.prune_steps)
    events = max(1, min(MAX_EVENTS, int(total * PRUNING_PHASE)))
    if total == 0:
        return 0, [0]
    span = total * PRUNING_PHASE
    return total, [int(k * span / events) for k in range(events)]


def final_layer(model: nn.Module) -> nn.Module:
    """The classifier: the last conv/linear module (its outputs are the classes, so it keeps them)."""
    return [m for m in model.modules() if isinstance(m, QUANTIZABLE)][-1]


def _train(model: nn.Module, data: DataBundle, cfg: RunConfig, steps: int, seed: int, desc: str,
           teacher: nn.Module | None = None) -> list[dict]:
    """`steps` fine-tuning steps with a fresh Adam (after structured pruning the parameters are new tensors);
    with `teacher` (--distill), the loss is the distillation loss against it (core/distill.py)."""
    history = []
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.prune_lr)
    loader, part = TrainLoader(data, cfg.batch_size, seed=seed), 0  # pass `part` shuffles with seed + part
    net, loss = model, {}
    if teacher is not None:
        net = WithTeacher(model, teacher)
        loss = {"loss_fn": net.loss_fn(Distillation.from_config(cfg))}
    while steps > 0:
        stats = run_epoch(net, optimizer, loader, part, desc, max_steps=steps, **loss)
        steps -= math.ceil(stats["images"] / cfg.batch_size)
        history.append(stats)
        part += 1
    return history


def _finetune(model: nn.Module, data: DataBundle, cfg: RunConfig, events: list[int], total: int,
              prune_to, label: str) -> list[dict]:
    """Prune at each event (prune_to(k)), fine-tune up to the next event, then fine-tune to the end."""
    history = []
    bounds = events + [total]
    teacher = teacher_from(model, "cpu") if cfg.distill else None  # the unpruned model teaches (--distill)
    for k, start in enumerate(events):
        prune_to(k + 1)
        steps = bounds[k + 1] - start
        if steps:
            history += _train(model, data, cfg, steps, cfg.seed * 1000 + 700 + 10 * k, f"{label} {k + 1}/{len(events)}",
                              teacher)
    model.eval()
    return history


def unstructured(model: nn.Module, data: DataBundle, shape: tuple[int, ...], cfg: RunConfig) -> Pruned:
    targets = [(m, "weight") for m in model.modules() if isinstance(m, QUANTIZABLE)]
    total, events = plan(cfg, len(data.train_labels))
    schedule = cubic_schedule(cfg.sparsity, len(events))
    done = {"sparsity": 0.0}

    def prune_to(k: int) -> None:
        # global_unstructured prunes `amount` of the weights still unpruned: ask for the step to s_k.
        amount = (schedule[k] - done["sparsity"]) / (1 - done["sparsity"]) if done["sparsity"] < 1 else 0.0
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(amount))
        done["sparsity"] = schedule[k]

    history = _finetune(model, data, cfg, events, total, prune_to, "prune (unstructured)")
    names = {m: n for n, m in model.named_modules()}
    masks = {}
    for module, attr in targets:
        masks[f"{names[module]}.{attr}"] = module.weight_mask.detach().bool().clone()
        prune.remove(module, attr)  # weight = weight_orig * mask, made permanent
    pruned = Pruned(model.eval(), "unstructured", cfg.sparsity, masks)
    pruned.stats = {**sparsity(model, masks), "fine_tune_steps": total, "pruning_events": len(events),
                    "schedule": schedule[1:], "history": history}
    return pruned


def structured(model: nn.Module, data: DataBundle, shape: tuple[int, ...], cfg: RunConfig) -> Pruned:
    import torch_pruning as tp

    before = {"parameters": sum(p.numel() for p in model.parameters()), "macs": count_macs(model, shape)}
    total, events = plan(cfg, len(data.train_labels))
    model.eval()
    pruner = tp.pruner.MagnitudePruner(
        model, torch.zeros(1, *shape), importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=cfg.channel_ratio, iterative_steps=len(events), iterative_pruning_ratio_scheduler=cubic_schedule,
        ignored_layers=[final_layer(model)])
    history = _finetune(model, data, cfg, events, total, lambda k: pruner.step(), "prune (structured)")
    after = {"parameters": sum(p.numel() for p in model.parameters()), "macs": count_macs(model, shape)}
    pruned = Pruned(model.eval(), "structured", cfg.channel_ratio)
    pruned.stats = {"parameters_before": before["parameters"], "parameters_after": after["parameters"],
                    "macs_before": before["macs"], "macs_after": after["macs"],
                    "channels": {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
                                 for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)},
                    "fine_tune_steps": total, "pruning_events": len(events), "history": history}
    return pruned


def sparsity(model: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> dict:
    """Zero fraction of the pruned weights, and of all parameters."""
    state = model.state_dict()
    names = list(masks) if masks else [n for n, v in state.items() if n.endswith("weight") and v.dim() > 1]
    zeros = sum(int((state[n] == 0).sum()) for n in names)
    count = sum(state[n].numel() for n in names)
    all_zeros = sum(int((v == 0).sum()) for v in state.values() if v.is_floating_point())
    all_count = sum(v.numel() for v in state.values() if v.is_floating_point())
    return {"weight_sparsity": zeros / max(count, 1), "parameter_sparsity": all_zeros / max(all_count, 1),
            "per_layer": {n: float((state[n] == 0).float().mean()) for n in names}}


def hold_masks(masks: dict[str, torch.Tensor]):
    """An each_step hook for core.qat.qat: re-zero the pruned weights of the QAT graph before every step."""
    def apply(prepared: torch.fx.GraphModule) -> None:
        params = dict(prepared.named_parameters())
        missing = [n for n in masks if n not in params]
        if missing:
            raise RuntimeError(f"QAT graph has no parameters {missing}; cannot hold the pruning masks")
        with torch.no_grad():
            for name, mask in masks.items():
                params[name].mul_(mask)

    return apply


PRUNERS = {"unstructured": unstructured, "structured": structured}
