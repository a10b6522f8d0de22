"""The model zoo: export-friendly ConvNets and torchvision's MobileNets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvNet(nn.Module):
    """The classic MNIST ConvNet; returns logits and pools with an explicit stride."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(9216, 128)
        self.dropout2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = self.dropout1(torch.flatten(x, 1))
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc2(x)


class CifarCNN(nn.Module):
    """A small 3-channel 32x32 CNN: conv 3->16->32 with padding and pooling, fc 2048->256->classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 8 * 8, 256)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), kernel_size=2, stride=2)
        x = F.max_pool2d(F.relu(self.conv2(x)), kernel_size=2, stride=2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def _mobilenet(builder_name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        import torchvision

        if in_channels != 3:
            raise ValueError(f"{builder_name} takes 3-channel input")
        return getattr(torchvision.models, builder_name)(weights=None, num_classes=num_classes)

    return build


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[int, int], nn.Module]
    channels: int
    size: int
    resizable: bool  # accepts another --image-size


MODELS: dict[str, ModelSpec] = {
    "convnet": ModelSpec(ConvNet, 1, 28, False),
    "cifarcnn": ModelSpec(CifarCNN, 3, 32, False),
    "mobilenet_v2": ModelSpec(_mobilenet("mobilenet_v2"), 3, 32, True),
    "mobilenet_v3_small": ModelSpec(_mobilenet("mobilenet_v3_small"), 3, 32, True),
}


class ModelError(ValueError):
    """Unknown model, or a size or weights file the model cannot take."""


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def input_shape(name: str, image_size: int | None = None) -> tuple[int, int, int]:
    s = spec(name)
    if image_size and image_size != s.size and not s.resizable:
        raise ModelError(f"{name} takes {s.size}x{s.size} input; drop --image-size or pick a MobileNet")
    return s.channels, image_size or s.size, image_size or s.size


def build(name: str, num_classes: int, weights: str | Path | None = None) -> nn.Module:
    s = spec(name)
    model = s.build(num_classes, s.channels)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise ModelError(f"weights file {path} not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        except Exception as exc:
            raise ModelError(f"cannot load weights {path} into {name}: {exc}") from exc
    return model


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total
