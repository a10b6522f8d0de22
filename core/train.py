"""Seeded fp32 training with atomic per-epoch checkpoints and resume."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import io as atomic
from .data import DataBundle
from .console import say, terminal


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to other settings."""


@dataclass
class TrainResult:
    model: nn.Module
    epochs_done: int
    history: list[dict] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        images = sum(h["images"] for h in self.history)
        seconds = sum(h["seconds"] for h in self.history)
        return images / seconds if seconds else 0.0


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic.write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; run `train` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: {exc}); "
                              "delete it or rerun with --force to train again") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} holds no model state; delete it or rerun with --force")
    return state


def run_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: DataBundle, batch_size: int,
              seed: int, desc: str, max_steps: int = 0, on_step=None) -> dict:
    """One pass over the shuffled training set; returns loss, accuracy and images/s."""
    model.train()
    total = len(data.train_labels) if not max_steps else min(len(data.train_labels), max_steps * batch_size)
    seen = correct = 0
    loss_sum = 0.0
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, mininterval=1.0, disable=None, file=terminal())
    for step, (images, labels) in enumerate(data.batches("train", batch_size, shuffle_seed=seed)):
        if max_steps and step >= max_steps:
            break
        if on_step:
            on_step(step)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        loss_sum += loss.detach().item() * len(labels)
        bar.update(len(labels))
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                        img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "images": seen, "seconds": seconds, "images_per_s": seen / seconds if seconds else 0.0}


def train_fp32(model: nn.Module, data: DataBundle, *, epochs: int, batch_size: int, lr: float, seed: int,
               checkpoint: Path, key: str, meta: dict, resume: bool = False) -> TrainResult:
    """Train for `epochs` epochs, checkpointing atomically after each; resume continues a matching checkpoint."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    start_epoch, history = 0, []
    if resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        if state.get("key") != key:
            raise CheckpointError(f"checkpoint {checkpoint} was trained with other settings "
                                  "(dataset, model, batch size, lr or seed differ); drop --resume or use another --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, history = state["epoch"], state["history"]
    for epoch in range(start_epoch, epochs):
        stats = run_epoch(model, optimizer, data, batch_size, seed=seed * 1000 + epoch, desc=f"fp32 epoch {epoch + 1}/{epochs}")
        scheduler.step()
        history.append({"epoch": epoch + 1, **stats})
        say(f"fp32 epoch {epoch + 1}/{epochs}: loss {stats['loss']:.4f}, train acc {stats['train_accuracy']:.4f}, "
              f"{stats['images_per_s']:.0f} img/s")
        save_checkpoint(checkpoint, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(), "epoch": epoch + 1, "key": key, "history": history, "meta": meta,
        })
    return TrainResult(model, max(epochs, start_epoch), history)
