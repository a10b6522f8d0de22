"""Seeded fp32 training with atomic per-epoch checkpoints and resume."""

from __future__ import annotations

import io
import itertools
import math
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import distributed
from . import io as atomic
from .console import StageClock, say, terminal
from .device import Precision
from .errors import BadInput
from .loaders import TrainLoader
from .recipe import Recipe


class CheckpointError(BadInput, RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to other settings."""


@dataclass
class TrainResult:
    model: nn.Module
    epochs_done: int
    history: list[dict] = field(default_factory=list)
    bn_recalibration: dict | None = None  # what recalibrate_batchnorm did after the last epoch (None: not run)

    @property
    def images_per_s(self) -> float:
        images = sum(h["images"] for h in self.history)
        seconds = sum(h["seconds"] for h in self.history)
        return images / seconds if seconds else 0.0


def shuffle_seed(seed: int) -> int:
    """fp32 epoch e shuffles with randperm seeded by shuffle_seed(seed) + e."""
    return seed * 1000


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint of state dicts, tensors (RNG states too) and plain values only: what
    torch.load(weights_only=True) reads back. Anything that would need pickled code is refused here."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"checkpoint {path} would hold objects that need code to load; only state dicts, "
                              f"tensors and plain values belong in it ({_needs_code(exc) or exc})") from exc
    atomic.write_bytes(path, buffer.getvalue())


def _needs_code(exc: BaseException) -> str | None:
    """The line of torch's weights_only refusal that names the global (code) a pickle asked for; None: not that."""
    return next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with torch.load(weights_only=True): tensors and plain values only, so a crafted file
    (an OUT from a CI cache or a colleague) cannot run code here; one that needs more is refused, not loaded."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; run `train` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _needs_code(exc):
            raise CheckpointError(
                f"checkpoint {path} needs pickled code to load ({_needs_code(exc)}); it was not loaded, since loading "
                "it could run that code. Checkpoints this pipeline writes hold only tensors and plain values: "
                "this one was written by something else, or by an older version. Rerun `train --force` to train "
                "again (the file is kept aside in OUT/stale/)") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                              "delete it or rerun with --force to train again") from exc
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                              "delete it or rerun with --force to train again") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} holds no model state; delete it or rerun with --force")
    return state


EXPLODED_LOSS_FACTOR = 10.0  # an epoch's mean loss this many times a uniform guess's (ln classes): diverged


def divergence(history: list[dict], classes: int) -> str | None:
    """Why the fp32 training loss diverged (a non-finite or exploding epoch loss), or None when it did not.

    A network that guesses uniformly scores ln(classes); an epoch whose mean loss is many times that
    (or inf/nan) has left any useful region, whatever the test accuracy then happens to be."""
    limit = EXPLODED_LOSS_FACTOR * math.log(max(classes, 2))
    for h in history:
        loss = h.get("loss")
        if loss is None:
            continue
        if not math.isfinite(loss):
            return f"the training loss of epoch {h['epoch']} is {loss}"
        if loss > limit:
            return (f"the training loss exploded: epoch {h['epoch']} averaged {loss:.4g}, more than {limit:.3g} "
                    f"({EXPLODED_LOSS_FACTOR:g} x ln {classes}, the loss of a uniform guess)")
    return None


def resumable(checkpoint: Path, key: str) -> dict:
    """The checkpoint `--resume` continues, or CheckpointError when it is corrupt or of other settings."""
    state = load_checkpoint(checkpoint)
    if state.get("key") != key:
        raise CheckpointError(f"checkpoint {checkpoint} was trained with other settings "
                              "(dataset, model, batch size, lr, recipe or seed differ); drop --resume or use another --out")
    return state


def run_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: TrainLoader, epoch: int, desc: str,
              max_steps: int = 0, on_step=None, *, loss_fn=F.cross_entropy, precision: Precision | None = None,
              clock: StageClock | None = None) -> dict:
    """One pass over this process's shard of the shuffled training set; returns loss, accuracy and images/s.

    Under torchrun the figures are summed over all processes (images/s is the job's throughput).
    """
    model.train()
    ctx = loader.ctx
    precision = precision or Precision(ctx.device)
    steps = min(loader.steps_per_epoch, max_steps) if max_steps else loader.steps_per_epoch
    total = min(loader.samples_per_epoch, steps * loader.batch_size)
    seen = done = 0
    correct = loss_sum = 0  # kept as tensors on the device: no synchronisation per step
    sum_dtype = torch.float32 if ctx.device.type == "mps" else torch.float64  # MPS has no float64
    start = last_shown = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, mininterval=1.0, disable=None if ctx.is_main else True,
               file=terminal())
    for step, (images, labels) in enumerate(loader.epoch(epoch)):
        if on_step:
            on_step(step)
        with precision.autocast():
            logits = model(images)
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        precision.step(loss, optimizer)
        done += 1
        seen += len(labels)
        correct += (logits.argmax(1) == labels).sum()
        loss_sum += loss.detach().to(sum_dtype) * len(labels)
        bar.update(len(labels))
        if clock is not None and ctx.is_main:
            clock.step()
        if not bar.disable and time.perf_counter() - last_shown >= 1.0:
            last_shown = time.perf_counter()
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{int(correct) / seen:.3f}",
                            img_s=f"{seen / (last_shown - start):.0f}", refresh=False)
        if done == steps:
            break
    bar.close()
    seconds = time.perf_counter() - start
    seen, correct, loss_sum = distributed.all_reduce_sum([seen, int(correct), float(loss_sum)], ctx)
    seconds = distributed.all_reduce_max(seconds, ctx)
    seen, correct = int(seen), int(correct)
    return {"loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "images": seen,
            "steps": done, "seconds": seconds, "images_per_s": seen / seconds if seconds else 0.0}


def train_fp32(model: nn.Module, loader: TrainLoader, *, epochs: int, lr: float, checkpoint: Path, key: str, meta: dict,
               resume: bool = False, recipe: Recipe = Recipe(), amp: bool = False, sync_bn: bool = False,
               bn_batches: int = 0) -> TrainResult:
    """Train for `epochs` epochs, checkpointing atomically after each; resume continues a matching checkpoint.

    Every process of a torchrun job calls this: they all load the same checkpoint, train their
    shards under DistributedDataParallel, and only rank 0 writes the checkpoint.
    """
    ctx = loader.ctx
    model.to(ctx.device)
    optimizer = recipe.make_optimizer(model.parameters(), lr)
    scheduler = recipe.make_scheduler(optimizer, epochs)
    precision = Precision(ctx.device, amp)
    start_epoch, history = 0, []
    if resume and Path(checkpoint).exists():
        state = resumable(checkpoint, key)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        precision.load_state_dict(state.get("scaler"))
        torch.set_rng_state(state["rng"])
        if ctx.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], ctx.device)
        start_epoch, history = state["epoch"], state["history"]
    distributed.check_same(start_epoch, "the epoch to resume from", ctx)
    net = distributed.wrap(model, ctx, sync_bn)
    model = distributed.unwrap(net)
    loss_fn = recipe.loss_fn()
    recalibrated = None
    clock = StageClock("train", (epochs - start_epoch) * loader.steps_per_epoch,
                       f"check --epochs ({epochs:,} of {loader.steps_per_epoch:,} steps each)")
    for epoch in range(start_epoch, epochs):
        stats = run_epoch(net, optimizer, loader, epoch, desc=f"fp32 epoch {epoch + 1}/{epochs}", loss_fn=loss_fn,
                          precision=precision, clock=clock)
        scheduler.step()
        history.append({"epoch": epoch + 1, **stats})
        if epoch + 1 == epochs:
            recalibrated = recalibrate_batchnorm(model, loader, bn_batches, epoch + 1)
            distributed.sync_batchnorm(model, ctx)  # every rank ends with the same running statistics
            if recalibrated and ctx.is_main:
                say(f"fp32: BatchNorm statistics of {recalibrated['layers']} layers re-estimated over "
                    f"{recalibrated['batches']} training batches (--bn-recalibration)")
        if not ctx.is_main:
            continue
        say(f"fp32 epoch {epoch + 1}/{epochs}: loss {stats['loss']:.4f}, train acc {stats['train_accuracy']:.4f}, "
              f"{stats['images_per_s']:.0f} img/s")
        save_checkpoint(checkpoint, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(), "epoch": epoch + 1, "key": key, "history": history, "meta": meta,
            **({"cuda_rng": torch.cuda.get_rng_state(ctx.device)} if ctx.device.type == "cuda" else {}),
            **({"scaler": precision.state_dict()} if amp else {}),
        })
    return TrainResult(model, max(epochs, start_epoch), history, recalibrated)


def recalibrate_batchnorm(model: nn.Module, loader: TrainLoader, batches: int, epoch: int) -> dict | None:
    """Replace every BatchNorm's running mean and variance by their plain average over `batches` training
    batches, computed with the final weights (torch.optim.swa_utils.update_bn: forward passes in train
    mode, no gradient step).

    The running averages lag the weights: with BatchNorm momentum m they forget their start as
    (1 - m)^steps, and torchvision's MobileNetV3 uses m = 0.01, so a run of a few hundred steps
    evaluates at chance level. `epoch` picks the shuffle. Returns None when there is nothing to do.
    """
    from torch.optim.swa_utils import update_bn

    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if batches <= 0 or not layers:
        return None
    seen = [0]

    def images():  # one batch at a time: 50 batches of 224 px images would be gigabytes
        for x, _ in itertools.islice(loader.epoch(epoch), batches):
            seen[0] += 1
            yield x

    with torch.no_grad():  # update_bn itself keeps the autograd graph of every forward
        update_bn(images(), model)
    return {"layers": len(layers), "batches": seen[0]}
