"""Where training runs: `--device auto|cpu|cuda|mps`, and mixed precision (`--amp`) on CUDA.

`auto` picks CUDA, then Apple's MPS, then the CPU. Asking for a device this machine lacks is
bad input (`DeviceError`, CLI exit 2), never a silent fallback. Under torchrun each process
takes the CUDA device of its local rank. Export and verification always run on the CPU,
where the mobile runtimes run; only fp32 training, QAT fine-tuning, PTQ calibration and
PyTorch evaluation use the device chosen here.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .config import DEVICES, ConfigError
from .console import say


class DeviceError(ConfigError):
    """The asked device or precision is not available here; the message says what to do."""


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve(name: str, local_rank: int = 0) -> torch.device:
    """The torch.device for `--device name`; `local_rank` picks the GPU of a torchrun process."""
    if name not in DEVICES:
        raise DeviceError(f"unknown --device {name!r}; choose one of: {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if cuda_available() else "mps" if mps_available() else "cpu"
    if name == "cuda":
        if not cuda_available():
            built = torch.version.cuda
            why = (f"this torch build has CUDA {built} but finds no usable GPU (driver, CUDA_VISIBLE_DEVICES?)" if built
                   else "this torch build has no CUDA support")
            raise DeviceError(f"--device cuda: CUDA is not available ({why}); "
                              "use --device cpu, or --device auto to take what this machine has")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DeviceError(f"--device cuda: this process has local rank {local_rank} but the node shows only "
                              f"{count} GPU(s); start at most {count} processes per node (--nproc-per-node)")
        return torch.device("cuda", local_rank)
    if name == "mps":
        if not mps_available():
            built = getattr(torch.backends, "mps", None) and torch.backends.mps.is_built()
            why = "macOS 12.3+ on Apple silicon is needed" if built else "this torch build has no MPS support"
            raise DeviceError(f"--device mps: Apple's MPS is not available ({why}); use --device cpu or --device auto")
        return torch.device("mps")
    return torch.device("cpu")


def check_amp(amp: bool, device: torch.device) -> None:
    """--amp is mixed precision for fp32 training on CUDA; anywhere else it is refused."""
    if amp and device.type != "cuda":
        raise DeviceError(f"--amp needs a CUDA device (float16 autocast with a GradScaler); this run is on {device.type}. "
                          "Drop --amp, or use --device cuda on a machine with a GPU")


def for_quantization(device: torch.device, requested: str) -> torch.device:
    """Where QAT and PTQ calibration run. PyTorch's fake-quantization kernels exist for the CPU and CUDA
    only, so on MPS: `--device auto` quantizes on the CPU, `--device mps` is refused, unless
    PYTORCH_ENABLE_MPS_FALLBACK=1 lets PyTorch run the missing ops on the CPU itself."""
    if device.type != "mps" or os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK") == "1":
        return device
    if requested == "auto":
        say("qat: PyTorch has no MPS kernels for fake quantization; QAT and PTQ calibration run on the CPU")
        return torch.device("cpu")
    raise DeviceError("--device mps: PyTorch's fake-quantization ops (aten::_fused_moving_avg_obs_fq_helper) have "
                      "no MPS kernels, so QAT cannot run there. Use --device cpu or auto for `qat`, or set "
                      "PYTORCH_ENABLE_MPS_FALLBACK=1 to let PyTorch run those ops on the CPU")


def describe(device: torch.device) -> dict:
    info = {"type": device.type, "name": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                     "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda})
    elif device.type == "cpu":
        info["threads"] = torch.get_num_threads()
    return info


class Precision:
    """How a training step computes: fp32, or float16 autocast with a GradScaler (CUDA, --amp).

    Disabled, it adds nothing to the step: `autocast()` is a null context and `step()` is
    `loss.backward(); optimizer.step()`, so fp32 numbers are exactly those of a plain loop.
    """

    def __init__(self, device: torch.device, amp: bool = False):
        check_amp(amp, device)
        self.device, self.amp = device, amp
        self.scaler = torch.amp.GradScaler("cuda") if amp else None

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)  # unscales; skips the step if gradients overflowed
        self.scaler.update()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def available_memory_bytes() -> int | None:
    """Memory this host can still give (Linux: MemAvailable; elsewhere: physical memory); None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_input_memory(shape: tuple[int, int, int], batch_size: int, available: int | None = None) -> None:
    """Refuse an input size whose float32 training batch alone cannot fit in memory (a lower bound: every layer's
    activations come on top), before any data or model is built. ConfigError names --image-size."""
    available = available_memory_bytes() if available is None else available
    c, h, w = shape
    needed = batch_size * c * h * w * 4
    if available is not None and needed > available:
        raise ConfigError(
            f"--image-size {h} cannot work here: one batch of {batch_size} {c}x{h}x{w} float32 inputs alone needs "
            f"{needed / 2**30:,.1f} GiB and {available / 2**30:,.1f} GiB of memory are available (each layer's "
            "activations come on top); pick a smaller --image-size (or --batch-size)")
