"""Bare PyTorch training loops, to set the pipeline's training throughput against.

A bare loop is forward, loss, backward, optimizer step over batches already normalized in
memory: no data pipeline, progress bar or metric bookkeeping. The pipeline's own loop
(`core.train.run_epoch`) is timed on the same model in the same run, so the ratio of the
two is what the pipeline costs on top of PyTorch, free of the machine's drift since training.
"""

from __future__ import annotations

import copy
import itertools
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import qat
from core.data import DataBundle
from core.train import run_epoch

WARMUP_STEPS = 3


def training_batches(data: DataBundle, batch_size: int, count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` full, normalized training batches, cycling over the set if it is small."""
    full = [(x, y) for x, y in data.batches("train", batch_size, shuffle_seed=seed) if len(y) == batch_size]
    if not full:
        raise ValueError(f"the training set ({len(data.train_labels)} images) holds no full batch of {batch_size}")
    return list(itertools.islice(itertools.cycle(full), count))


def bare_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> dict:
    """Images/s of a plain training loop; the first WARMUP_STEPS batches are not timed."""
    model.train()
    for step, (images, labels) in enumerate(batches):
        if step == WARMUP_STEPS:
            start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    images = sum(len(y) for _, y in batches[WARMUP_STEPS:])
    return {"images_per_s": images / seconds, "steps": len(batches) - WARMUP_STEPS, "seconds": seconds}


def pipeline_loop(model: nn.Module, optimizer: torch.optim.Optimizer, data: DataBundle, batch_size: int,
                  steps: int, seed: int) -> dict:
    """Images/s of the pipeline's own training loop over `steps` steps, after WARMUP_STEPS untimed ones."""
    run_epoch(model, optimizer, data, batch_size, seed=seed, desc="warm-up", max_steps=WARMUP_STEPS)
    stats = run_epoch(model, optimizer, data, batch_size, seed=seed + 1, desc="pipeline loop", max_steps=steps)
    return {"images_per_s": stats["images_per_s"], "steps": -(-stats["images"] // batch_size), "seconds": stats["seconds"]}


def fp32_loops(model: nn.Module, data: DataBundle, batches: list, lr: float, seed: int) -> tuple[dict, dict]:
    """(bare loop, pipeline loop) on one copy of the fp32 model, one loop after the other."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return (bare_loop(model, optimizer, batches),
            pipeline_loop(model, optimizer, data, len(batches[0][1]), len(batches) - WARMUP_STEPS, seed))


def qat_loops(model: nn.Module, shape: tuple[int, ...], data: DataBundle, batches: list, lr: float,
              seed: int) -> tuple[dict, dict]:
    """(bare loop, pipeline loop) on one QAT-prepared copy of the fp32 model, one loop after the other."""
    prepared = qat.prepare(model, shape)
    optimizer = torch.optim.Adam(prepared.parameters(), lr=lr)
    return (bare_loop(prepared, optimizer, batches),
            pipeline_loop(prepared, optimizer, data, len(batches[0][1]), len(batches) - WARMUP_STEPS, seed))
