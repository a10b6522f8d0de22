"""torchrun and DistributedDataParallel, kept out of the training loop.

Rank, world size and device are decided once, at start-up, from torchrun's environment
(`RANK`, `LOCAL_RANK`, `WORLD_SIZE`); the process group uses gloo on the CPU and nccl on CUDA.
Without torchrun (or with one process) nothing is initialised and every helper here is a
no-op, so `mobile-pipeline train` computes exactly what it computed before DDP existed.

QAT under DDP: `DistributedDataParallel` keeps the parameters identical on every rank, but
not the state that fake quantization and BatchNorm keep in buffers. Each rank's observers
see only its own shard, and DDP's buffer broadcast (rank 0's buffers, copied at the start of
every forward) leaves the last step's update different on every rank. `sync_quantization_state`
makes them identical: observer ranges are all-reduced (min of the minima, max of the maxima)
and the scale and zero point are recomputed from them; BatchNorm running statistics are
averaged. The QAT loop calls it before BatchNorm freezes, before the observers freeze and at
the end, so the ranges convert_pt2e bakes in cover every rank's data.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from . import device as devices
from .config import ConfigError

# Rank 0 evaluates and writes while the others wait at a barrier: give it time.
TIMEOUT = datetime.timedelta(hours=2)
BATCHNORM_OPS = ("batch_norm.default", "_native_batch_norm_legit.default", "_native_batch_norm_legit_no_training.default",
                 "cudnn_batch_norm.default")


@dataclass(frozen=True)
class Context:
    """This process's place in the job: rank, world size, device and process-group backend."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict:
        nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1")) if self.distributed else 1
        return {"device": devices.describe(self.device), "world_size": self.world_size, "nodes": nodes,
                "backend": self.backend}


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's global rank as torchrun set it (0 without torchrun), readable before `setup`:
    e.g. for work only one process of the job may do before training starts, such as locking OUT."""
    return int(os.environ.get("RANK", "0"))


def env_local_rank() -> int:
    """This process's rank on its node (its GPU) as torchrun set it (0 without torchrun), readable before `setup`."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def env_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), readable before `setup`."""
    return max(int(os.environ.get("WORLD_SIZE", "1")), 1)


def setup(device_name: str = "auto") -> Context:
    """Read torchrun's environment, pick the device and start the process group (once per process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = devices.resolve(device_name, local_rank)
    if world <= 1:
        return Context(device=device)
    if device.type == "mps":
        raise devices.DeviceError("torchrun with --device mps: PyTorch has no process-group backend for MPS; "
                                  "train on one process (no torchrun), or use --device cpu or cuda")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    elif dist.get_backend() != backend:
        raise ConfigError(f"the process group already uses {dist.get_backend()}, but --device {device.type} needs {backend}")
    return Context(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(), device=device,
                   backend=backend)


def local(device: torch.device | str = "cpu") -> Context:
    """One process, no process group."""
    return Context(device=torch.device(device))


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: Context, sync_bn: bool = False) -> nn.Module:
    """The module the training loop calls: the model itself, or DistributedDataParallel around it."""
    if sync_bn:
        if ctx.distributed and ctx.device.type != "cuda":
            raise ConfigError("--sync-bn: PyTorch's SyncBatchNorm synchronises CUDA tensors only; "
                              "drop --sync-bn on the CPU (BatchNorm statistics are averaged across ranks at the end instead)")
        if isinstance(model, torch.fx.GraphModule):
            raise ConfigError("--sync-bn applies to fp32 training; the QAT graph's BatchNorm statistics are "
                              "averaged across ranks at the freeze points and at the end instead")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(values: list[float], ctx: Context) -> list[float]:
    """Sum plain numbers over the ranks (epoch statistics); returned unchanged with one process."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: float, ctx: Context) -> float:
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def check_same(value: int, what: str, ctx: Context) -> None:
    """Fail loudly if the ranks disagree on `value` (e.g. the epoch a resumed checkpoint holds)."""
    if not ctx.distributed:
        return
    t = torch.tensor([value, -value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != -int(t[1]):
        raise RuntimeError(f"ranks disagree on {what}: from {-int(t[1])} to {int(t[0])}; "
                           "every rank must see the same OUT folder (a shared file system on several nodes)")


# ---- observers and BatchNorm statistics across ranks ---------------------------------------
def observers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, fake-quantize module) for every fake quantizer whose observer tracks a min/max range."""
    found = []
    for name, module in model.named_modules():
        obs = getattr(module, "activation_post_process", None)
        if hasattr(module, "scale") and hasattr(module, "zero_point") and hasattr(obs, "min_val") and hasattr(obs, "max_val"):
            found.append((name, module))
    return found


def batchnorm_statistics(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every BatchNorm running mean and variance, in eager modules and in exported graphs."""
    stats: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            stats[f"{name}.running_mean"], stats[f"{name}.running_var"] = module.running_mean, module.running_var
    if isinstance(model, torch.fx.GraphModule):
        for node in model.graph.nodes:
            if node.op == "call_function" and any(str(node.target).endswith(op) for op in BATCHNORM_OPS):
                for arg in node.args[3:5]:  # running_mean, running_var
                    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
                        stats[arg.target] = _attr(model, arg.target)
    return sorted(stats.items())


def _attr(model: nn.Module, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, name)


def sync_observers(model: nn.Module, ctx: Context) -> int:
    """Give every rank the union of all ranks' observed ranges, and the scale/zero point that follow from it."""
    if not ctx.distributed:
        return 0
    found = observers(model)
    with torch.no_grad():
        for _, fq in found:
            obs = fq.activation_post_process
            if obs.min_val.numel() == 0:  # a per-channel observer that never ran (the ranks run the same steps)
                continue
            dist.all_reduce(obs.min_val, op=dist.ReduceOp.MIN)
            dist.all_reduce(obs.max_val, op=dist.ReduceOp.MAX)
            scale, zero_point = fq.calculate_qparams()
            if fq.scale.shape != scale.shape:
                fq.scale.resize_(scale.shape)
                fq.zero_point.resize_(zero_point.shape)
            fq.scale.copy_(scale)
            fq.zero_point.copy_(zero_point)
    return len(found)


def sync_batchnorm(model: nn.Module, ctx: Context) -> int:
    """Average BatchNorm running means and variances over the ranks."""
    if not ctx.distributed:
        return 0
    stats = batchnorm_statistics(model)
    with torch.no_grad():
        for _, t in stats:
            dist.all_reduce(t)
            t.div_(ctx.world_size)
    return len(stats)


def sync_quantization_state(model: nn.Module, ctx: Context) -> dict:
    """Observers, then BatchNorm statistics: identical on every rank afterwards (no-op with one process)."""
    return {"observers": sync_observers(model, ctx), "batchnorm_tensors": sync_batchnorm(model, ctx)}
