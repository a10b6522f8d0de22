"""Model sources: the built-in ConvNets, any torchvision classifier, or the user's own nn.Module.

`--model` takes one of:

- a built-in name: `convnet` (the classic MNIST ConvNet) or `cifarcnn` (a small 3-channel CNN);
- `torchvision:NAME`, any classification builder of `torchvision.models` (`mobilenet_v2`,
  `resnet18`, `efficientnet_b0`, ...), its head sized to the dataset's classes. With
  `--pretrained`, torchvision's default ImageNet weights are loaded and only the head is new;
- `timm:NAME`, any model of `timm.list_models()` (`efficientnet_lite0`, `mobilenetv4_conv_small`,
  ...), built by `timm.create_model` with the dataset's classes and channels (`in_chans`). With
  `--pretrained`, timm's default weights for NAME are loaded (timm adapts the stem to the
  channels and leaves the head new when the classes differ);
- `MODULE:FACTORY` (an importable module) or `path/to/file.py:FACTORY`: a callable
  `FACTORY(num_classes: int, in_channels: int) -> nn.Module` of the user's.

Every source gives an ordinary `nn.Module` that maps a float NCHW batch to logits.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import BadInput

IMAGENET_CLASSES = 1000
# Channels and side of each dataset as it comes, for models that follow the data (user factories).
NATIVE_INPUT = {"mnist": (1, 28), "fashion-mnist": (1, 28), "mnist-5k": (1, 28), "cifar10": (3, 32)}
IMAGEFOLDER_INPUT = (3, 224)
TORCHVISION_SIZE = 224  # what torchvision's classifiers are built for; --image-size picks another
ALIASES = {"mobilenet_v2": "torchvision:mobilenet_v2", "mobilenet_v3_small": "torchvision:mobilenet_v3_small"}


class ModelError(BadInput, ValueError):
    """Unknown model, a factory that fails, or a size or weights file the model cannot take."""


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


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from and what input it takes."""

    name: str  # as the user wrote it
    kind: str  # builtin | torchvision | module | file
    factory: Callable[[int, int], nn.Module]  # (num_classes, in_channels) -> module
    channels: int | None  # None: follows the data
    size: int | None  # default side; None: the dataset's own
    min_size: int = 1
    resizable: bool = True


BUILTINS: dict[str, ModelSource] = {
    "convnet": ModelSource("convnet", "builtin", ConvNet, 1, 28, 28, False),
    "cifarcnn": ModelSource("cifarcnn", "builtin", CifarCNN, 3, 32, 32, False),
}


def source(name: str) -> ModelSource:
    """Resolve `--model` to a ModelSource, or a ModelError that says what is accepted."""
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"--model must name a model, got {name!r}")
    name = ALIASES.get(name, name)
    if name in BUILTINS:
        return BUILTINS[name]
    if name.startswith("torchvision:"):
        return _torchvision(name, name.split(":", 1)[1])
    if name.startswith("timm:"):
        return _timm(name, name.split(":", 1)[1])
    if ":" in name:
        where, _, factory = name.rpartition(":")
        if where.endswith(".py") or "/" in where or "\\" in where:
            return ModelSource(name, "file", _factory_from_file(name, Path(where), factory), None, None)
        return ModelSource(name, "module", _factory_from_module(name, where, factory), None, None)
    raise ModelError(f"unknown model {name!r}; use a built-in ({', '.join(BUILTINS)}), torchvision:NAME "
                     "(e.g. torchvision:mobilenet_v2), timm:NAME (e.g. timm:efficientnet_lite0), MODULE:FACTORY "
                     "or path/to/file.py:FACTORY")


def _torchvision(full: str, arch: str) -> ModelSource:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f"; did you mean {', '.join('torchvision:' + c for c in close)}?" if close else ""
        raise ModelError(f"{full}: torchvision has no classification model {arch!r}{hint} "
                         f"(see torchvision.models.list_models())")
    min_side = tvm.get_model_weights(arch).DEFAULT.meta.get("min_size", (1, 1))[0]
    extra = {"aux_logits": False, "init_weights": True} if arch in ("googlenet", "inception_v3") else {}

    def build(num_classes: int, in_channels: int) -> nn.Module:
        return tvm.get_model(arch, weights=None, num_classes=num_classes, **extra)

    return ModelSource(full, "torchvision", build, 3, TORCHVISION_SIZE, min_side, True)


@contextlib.contextmanager
def user_code(full: str, what: str):
    """Run the user's model code: an error it raises, or an exit it takes (sys.exit, or argparse rejecting the
    pipeline's command line at import), becomes a ModelError that names the model and what it did."""
    try:
        yield
    except (ModelError, KeyboardInterrupt, GeneratorExit):
        raise
    except SystemExit as exc:
        frames, tb = [], exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        how = ("parsed the command line with argparse, which rejected the pipeline's own arguments and exited"
               if any(Path(f).name == "argparse.py" for f in frames) else "called sys.exit()")
        raise ModelError(f"{full}: {what} {how} (exit code {exc.code!r}), stopping the pipeline; the pipeline imports "
                         "this file and calls its factory, so keep command-line handling and exits under "
                         "`if __name__ == \"__main__\":`") from None
    except BaseException as exc:
        raise ModelError(f"{full}: {what} raised {type(exc).__name__}: {exc}") from exc


def _timm(full: str, arch: str) -> ModelSource:
    import timm

    if not arch or not timm.is_model(arch):
        stem = arch.split("_")[0].rstrip("0123456789") or arch
        candidates = timm.list_models(f"*{stem}*") or timm.list_models()
        close = difflib.get_close_matches(arch, candidates, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ModelError(f"{full}: timm has no model {arch!r}{hint} (see timm.list_models('*{stem}*'))")
    cfg = timm.models.get_pretrained_cfg(arch)
    size = cfg.input_size[-1] if cfg is not None and cfg.input_size else TORCHVISION_SIZE

    def build(num_classes: int, in_channels: int) -> nn.Module:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)

    return ModelSource(full, "timm", build, None, size, 1, True)


def _check_factory(full: str, obj, what: str) -> Callable:
    if not callable(obj):
        raise ModelError(f"{full}: {what} is a {type(obj).__name__}, not a callable; the factory must be "
                         "FACTORY(num_classes, in_channels) -> nn.Module")
    return obj


def _factory_from_module(full: str, module_name: str, attr: str) -> Callable:
    try:
        with user_code(full, f"importing module {module_name!r}"):
            module = importlib.import_module(module_name)
    except ModelError as exc:
        if not isinstance(exc.__cause__, ImportError):
            raise
        raise ModelError(f"{full}: cannot import module {module_name!r} ({type(exc.__cause__).__name__}: "
                         f"{exc.__cause__}); check the name and that it is on PYTHONPATH") from exc.__cause__
    if not hasattr(module, attr):
        raise ModelError(f"{full}: module {module_name!r} has no {attr!r}")
    return _check_factory(full, getattr(module, attr), f"{module_name}.{attr}")


def _factory_from_file(full: str, path: Path, attr: str) -> Callable:
    if not path.is_file():
        raise ModelError(f"{full}: file {path} not found")
    module_name = f"_user_model_{abs(hash(str(path.resolve())))}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        with user_code(full, f"running {path}"):
            spec.loader.exec_module(module)
        sys.modules[module_name] = module
    module = sys.modules[module_name]
    if not hasattr(module, attr):
        raise ModelError(f"{full}: {path} defines no {attr!r}")
    return _check_factory(full, getattr(module, attr), f"{path}:{attr}")


def input_shape(name: str, image_size: int | None = None, dataset: str = "mnist") -> tuple[int, int, int]:
    """(channels, height, width) the model takes: its own, or the dataset's for models that follow the data."""
    src = source(name)
    native_c, native_size = NATIVE_INPUT.get(dataset, IMAGEFOLDER_INPUT)
    channels = src.channels or native_c
    default = src.size or native_size
    if image_size and image_size != default and not src.resizable:
        raise ModelError(f"{name} takes {default}x{default} input; drop --image-size or pick a resizable model "
                         "(a torchvision:NAME model or your own)")
    size = image_size or default
    if size < src.min_size:
        raise ModelError(f"{name} needs an input of at least {src.min_size}x{src.min_size} pixels; "
                         f"--image-size {size} is too small")
    return channels, size, size


def build(name: str, num_classes: int, weights: str | Path | None = None, *, in_channels: int | None = None,
          pretrained: bool = False) -> nn.Module:
    """A fresh model from its source; `weights` (a state_dict file) or `pretrained` then initialise it."""
    src = source(name)
    channels = src.channels or in_channels or 3
    if pretrained:
        model = _timm_pretrained(src, num_classes, channels) if src.kind == "timm" else _pretrained(src, num_classes)
    else:
        with user_code(name, "the model factory"):
            model = src.factory(num_classes, channels)
        if not isinstance(model, nn.Module):
            raise ModelError(f"{name}: the model factory returned a {type(model).__name__}, not a torch.nn.Module")
    if weights:
        load_weights(model, name, Path(weights))
    return model


def load_weights(model: nn.Module, name: str, path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"weights file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    except Exception as exc:
        raise ModelError(f"cannot load weights {path} into {name}: {exc}") from exc


def _pretrained(src: ModelSource, num_classes: int) -> nn.Module:
    """torchvision's default ImageNet weights, with only the classifier head replaced."""
    if src.kind != "torchvision":
        raise ModelError(f"--pretrained loads torchvision's or timm's published weights, so it needs a "
                         f"torchvision:NAME or timm:NAME model, not {src.name}; for your own weights use --weights FILE")
    import torchvision.models as tvm

    arch = src.name.split(":", 1)[1]
    weights = tvm.get_model_weights(arch).DEFAULT
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        model = tvm.get_model(arch, weights=weights)
    except Exception as exc:
        raise ModelError(
            f"{src.name}: could not load its ImageNet weights ({type(exc).__name__}: {exc}). They download from "
            f"{weights.url}; offline, fetch that file on another machine and put it at {target} "
            "(TORCH_HOME moves that folder), then run again") from exc
    replace_head(model, num_classes, IMAGENET_CLASSES)
    return model


def timm_weights_source(arch: str) -> tuple[str, Path]:
    """(where timm downloads the model's default weights from, the local file looked for first).

    The local file sits under torch's hub folder (TORCH_HOME moves it), named after the model, with
    the download's own extension (.safetensors from the Hugging Face hub, else the URL's)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ModelError(f"timm:{arch}: timm publishes no pretrained weights for {arch!r}; drop --pretrained, or "
                         "give your own with --weights FILE")
    if cfg.hf_hub_id:
        url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{cfg.hf_hub_filename or 'model.safetensors'}"
    else:
        url = cfg.url
    suffix = Path(url.split("?")[0]).suffix or ".pth"
    return url, Path(torch.hub.get_dir()) / "checkpoints" / "timm" / f"{arch}{suffix}"


def _timm_pretrained(src: ModelSource, num_classes: int, in_channels: int) -> nn.Module:
    """timm's default weights for the model: from the local file of `timm_weights_source` when it is there,
    else timm's own download."""
    import timm

    arch = src.name.split(":", 1)[1]
    url, local = timm_weights_source(arch)
    overlay = {"file": str(local)} if local.is_file() else None
    try:
        return timm.create_model(arch, pretrained=True, num_classes=num_classes, in_chans=in_channels,
                                 pretrained_cfg_overlay=overlay)
    except Exception as exc:
        where = f"from {local}" if overlay else f"(they download from {url})"
        raise ModelError(
            f"{src.name}: could not load its pretrained weights {where}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}. Offline, fetch {url} on another "
            f"machine and put it at {local} (TORCH_HOME moves that folder), then run again") from exc


def replace_head(model: nn.Module, num_classes: int, old_classes: int = IMAGENET_CLASSES) -> str:
    """Swap the last layer that outputs `old_classes` (a Linear, or SqueezeNet's 1x1 conv) for a fresh one."""
    head = None
    for name, module in model.named_modules():
        if (isinstance(module, nn.Linear) and module.out_features == old_classes) or (
                isinstance(module, nn.Conv2d) and module.out_channels == old_classes):
            head = (name, module)
    if head is None:
        raise ModelError(f"found no classifier layer with {old_classes} outputs to resize")
    name, old = head
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    return name


def check_forward(model: nn.Module, name: str, shape: tuple[int, int, int], num_classes: int) -> None:
    """The model must map a [2, C, H, W] batch to [2, num_classes] logits."""
    x = torch.zeros(2, *shape)
    try:
        with torch.no_grad(), user_code(name, "the model's forward"):
            y = model.eval()(x)
    except ModelError as exc:
        if exc.__cause__ is None:  # it exited the program: the message says so
            raise
        cause = exc.__cause__
        raise ModelError(f"{name} cannot take a {list(x.shape)} input ({type(cause).__name__}: {cause}); "
                         "check --image-size and the channels your model expects") from cause
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (2, num_classes):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ModelError(f"{name} must return logits of shape (batch, {num_classes}); it returned {got}")


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
