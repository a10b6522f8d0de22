"""The pipeline's training loop against a bare PyTorch loop, at the same settings.

A bare loop is forward, loss, backward, optimizer step over batches already normalized in
memory: no sampler, normalization, progress bar or metric bookkeeping. The pipeline's loop
is `core.train.run_epoch` over a `core.loaders.TrainLoader`, exactly as the stages run it.
Their ratio is what the pipeline costs on top of PyTorch.

How the two are compared, and why. Each loop trains its own copy of the same model (same
weights, same fake-quant observers, a fresh optimizer), both are warmed up alike, and they are
timed in alternating rounds (bare first, then pipeline first, ...): a 2-core host shared with
other jobs drifts by tens of percent within a minute, and timing one loop after the other once,
as this comparison first did, charged that drift, and any warm-up still under way, to
whichever loop ran second. The medians over the rounds are compared, and the CPU time per
image (the process's user+system time) is kept beside the wall-clock rate, since it does not
count the time the host's other jobs take.

A time budget (`seconds`) bounds the timed rounds: the first warm-up step of the bare loop is
timed, and the steps per round, then the rounds (never below 2, so each loop still goes first
once), then the warm-up are cut until both loops fit. On a large input (mobilenet_v2 at 224 px
on 2 cores, about 16 s a step of 64 images) 30 steps x 6 rounds x 2 loops would take hours.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import qat
from core.data import DataBundle
from core.loaders import TrainLoader
from core.train import run_epoch

WARMUP_STEPS = 3
ROUNDS = 6  # even: each loop goes first equally often


def training_batches(data: DataBundle, batch_size: int, count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` full, normalized training batches, cycling over the set if it is small."""
    full = [(x, y) for x, y in data.batches("train", batch_size, shuffle_seed=seed) if len(y) == batch_size]
    if not full:
        raise ValueError(f"the training set ({len(data.train_labels)} images) holds no full batch of {batch_size}")
    return list(itertools.islice(itertools.cycle(full), count))


def _timed(run) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    images = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"images": images, "seconds": wall, "images_per_s": images / wall, "cpu_ms_per_image": 1e3 * cpu / images}


def bare_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> dict:
    """Images/s of a plain training loop over all `batches`."""
    model.train()

    def run() -> int:
        for images, labels in batches:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return sum(len(y) for _, y in batches)

    return _timed(run)


def pipeline_loop(model: nn.Module, optimizer: torch.optim.Optimizer, loader: TrainLoader, steps: int, epoch: int) -> dict:
    """Images/s of the pipeline's own loop (`run_epoch`) over `steps` steps."""
    return _timed(lambda: run_epoch(model, optimizer, loader, epoch, desc="pipeline loop", max_steps=steps)["images"])


def fit(step_seconds: float, budget: float | None, steps: int, rounds: int) -> tuple[int, int, int]:
    """(steps per round, rounds, warm-up steps) whose timed rounds of both loops take at most about `budget`
    seconds, at `step_seconds` a step; at least 1 step and 2 rounds, whatever the budget. No budget: as asked."""
    if not budget:
        return steps, rounds, WARMUP_STEPS
    per_step = 2 * step_seconds  # one step of each loop
    fitting = int(budget // (per_step * rounds))
    if fitting < 1:
        steps, rounds = 1, max(2, min(rounds, int(budget // per_step) // 2 * 2))
    else:
        steps = min(steps, fitting)
    warmup = WARMUP_STEPS if per_step * WARMUP_STEPS <= budget / 4 else 1
    return steps, rounds, warmup


def compare(model: nn.Module, data: DataBundle, batch_size: int, lr: float, steps: int, seed: int,
            rounds: int = ROUNDS, seconds: float | None = None) -> tuple[dict, dict]:
    """(bare, pipeline): medians over `rounds` alternating rounds of `steps` steps, each loop on its own copy;
    with `seconds`, fewer steps and rounds where a step is slow (`fit`)."""
    batches = training_batches(data, batch_size, max(steps, WARMUP_STEPS), seed)
    loader = TrainLoader(data, batch_size, seed=seed)
    bare_model, piped_model = copy.deepcopy(model), copy.deepcopy(model)
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=lr)
    piped_opt = torch.optim.Adam(piped_model.parameters(), lr=lr)
    first = bare_loop(bare_model, bare_opt, batches[:1])  # the first warm-up step, timed to fit the budget
    pipeline_loop(piped_model, piped_opt, loader, 1, epoch=0)
    asked = steps, rounds
    steps, rounds, warmup = fit(first["seconds"], seconds, steps, rounds)
    if warmup > 1:
        bare_loop(bare_model, bare_opt, batches[1:warmup])
        pipeline_loop(piped_model, piped_opt, loader, warmup - 1, epoch=0)
    batches = batches[:steps]
    bare, piped = [], []
    for r in range(rounds):
        runs = [lambda: bare.append(bare_loop(bare_model, bare_opt, batches)),
                lambda: piped.append(pipeline_loop(piped_model, piped_opt, loader, steps, epoch=r + 1))]
        for run in (runs if r % 2 == 0 else runs[::-1]):
            run()
    budget = {"budget_s": seconds, "first_step_s": first["seconds"], "asked": {"steps": asked[0], "rounds": asked[1]},
              "warmup_steps": warmup}
    return summary(bare, steps, budget), summary(piped, steps, budget)


def summary(runs: list[dict], steps: int, budget: dict | None = None) -> dict:
    return {"images_per_s": statistics.median(r["images_per_s"] for r in runs),
            "cpu_ms_per_image": statistics.median(r["cpu_ms_per_image"] for r in runs),
            "rounds": [round(r["images_per_s"], 2) for r in runs], "steps": steps, **(budget or {})}


def fp32_loops(model: nn.Module, data: DataBundle, batch_size: int, lr: float, steps: int, seed: int,
               rounds: int = ROUNDS, seconds: float | None = None) -> tuple[dict, dict]:
    return compare(model, data, batch_size, lr, steps, seed, rounds, seconds)


def qat_loops(model: nn.Module, shape: tuple[int, ...], data: DataBundle, batch_size: int, lr: float, steps: int,
              seed: int, rounds: int = ROUNDS, seconds: float | None = None) -> tuple[dict, dict]:
    """As fp32_loops, on the model prepared for QAT as `core.qat` prepares it."""
    return compare(qat.prepare(model, shape), data, batch_size, lr, steps, seed, rounds, seconds)


def entry(bare: dict | None, piped: dict | None) -> dict:
    """The comparison as the host benchmark and bench-train record it."""
    if not (bare and piped):
        return {"pipeline_loop_images_per_s": None, "bare_images_per_s": None, "pipeline_vs_bare": None,
                "bare_steps": None}
    return {"pipeline_loop_images_per_s": piped["images_per_s"], "bare_images_per_s": bare["images_per_s"],
            "pipeline_vs_bare": piped["images_per_s"] / bare["images_per_s"],
            "pipeline_vs_bare_cpu_time": bare["cpu_ms_per_image"] / piped["cpu_ms_per_image"],
            "pipeline_cpu_ms_per_image": piped["cpu_ms_per_image"], "bare_cpu_ms_per_image": bare["cpu_ms_per_image"],
            "pipeline_rounds_images_per_s": piped["rounds"], "bare_rounds_images_per_s": bare["rounds"],
            "bare_steps": bare["steps"], "rounds": len(bare["rounds"]),
            **{k: bare[k] for k in ("budget_s", "first_step_s", "asked", "warmup_steps") if k in bare}}
