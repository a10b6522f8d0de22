"""The training recipe: optimizer, learning-rate schedule with warm-up, label smoothing, augmentation.

The defaults are the recipe the pipeline always had for the MNIST ConvNet: Adam, the learning
rate times 0.7 after every epoch (StepLR), plain cross-entropy, no augmentation. Real networks
on real images usually want SGD or AdamW with weight decay, a cosine schedule after a few
warm-up epochs, label smoothing, and random-resized-crop plus flip augmentation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import ConfigError
WARMUP_START = 0.01  # warm-up starts at 1% of --lr and reaches it linearly after --warmup-epochs


@dataclass(frozen=True)
class Recipe:
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "step"
    lr_gamma: float = 0.7
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    augment: bool = False
    augment_min_scale: float = 0.08

    @classmethod
    def from_config(cls, cfg) -> "Recipe":
        """The recipe part of a RunConfig (RunConfig.validate has checked the values)."""
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})

    # ---- the pieces the loops use ---------------------------------------------------------
    def make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        """Stepped once per epoch. Warm-up (if any) ramps linearly, then the main schedule takes over."""
        from torch.optim import lr_scheduler as lrs

        warmup = min(self.warmup_epochs, epochs)
        if self.lr_schedule == "step":
            main = lrs.StepLR(optimizer, step_size=1, gamma=self.lr_gamma)
        elif self.lr_schedule == "cosine":
            main = lrs.CosineAnnealingLR(optimizer, T_max=max(epochs - warmup, 1))
        else:
            main = lrs.ConstantLR(optimizer, factor=1.0, total_iters=0)
        if not warmup:
            return main
        ramp = lrs.LinearLR(optimizer, start_factor=WARMUP_START, end_factor=1.0, total_iters=warmup)
        return lrs.SequentialLR(optimizer, [ramp, main], milestones=[warmup])

    def loss_fn(self):
        if not self.label_smoothing:
            return F.cross_entropy
        return functools.partial(F.cross_entropy, label_smoothing=self.label_smoothing)

    def check_augmentation(self, channels: int) -> None:
        if self.augment and channels != 3:
            raise ConfigError(f"--augment (random resized crop and flip) is for 3-channel images; this model takes "
                              f"{channels}-channel input. Drop --augment")

    def augmentation(self, size: int):
        """Per-image random resized crop (back to `size`) and horizontal flip, on uint8 CHW tensors; None when off."""
        if not self.augment:
            return None
        from torchvision.transforms import v2

        return v2.Compose([v2.RandomResizedCrop(size, scale=(self.augment_min_scale, 1.0), antialias=True),
                           v2.RandomHorizontalFlip()])
