"""--device, --amp and --sync-bn: selection and refusals, checked on the CPU by pretending devices exist or not.
The CUDA and MPS paths themselves do not run here (no GPU): only their selection logic and error handling do."""

import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from core import device, distributed
from core.config import ConfigError


@pytest.fixture
def machine(monkeypatch):
    """Pretend this machine has CUDA (with N GPUs) and/or MPS, or neither."""
    def set_up(cuda: int = 0, mps: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_up


def test_auto_prefers_cuda_then_mps_then_cpu(machine):
    machine(cuda=2, mps=True)
    assert device.resolve("auto") == torch.device("cuda", 0)
    assert device.resolve("auto", local_rank=1) == torch.device("cuda", 1)
    machine(cuda=0, mps=True)
    assert device.resolve("auto") == torch.device("mps")
    machine(cuda=0, mps=False)
    assert device.resolve("auto") == torch.device("cpu")
    assert device.resolve("cpu") == torch.device("cpu")


def test_missing_devices_are_refused_clearly(machine):
    machine(cuda=0, mps=False)
    with pytest.raises(device.DeviceError, match="--device cuda: CUDA is not available"):
        device.resolve("cuda")
    with pytest.raises(device.DeviceError, match="--device mps: Apple's MPS is not available"):
        device.resolve("mps")
    with pytest.raises(device.DeviceError, match="unknown --device 'tpu'"):
        device.resolve("tpu")
    machine(cuda=1)
    with pytest.raises(device.DeviceError, match="local rank 1 but the node shows only 1 GPU"):
        device.resolve("cuda", local_rank=1)
    assert issubclass(device.DeviceError, ConfigError)  # the CLI's exit 2


def test_amp_is_cuda_only():
    with pytest.raises(device.DeviceError, match="--amp needs a CUDA device"):
        device.Precision(torch.device("cpu"), amp=True)
    with pytest.raises(device.DeviceError, match="--amp needs a CUDA device"):
        device.check_amp(True, torch.device("mps"))
    device.check_amp(True, torch.device("cuda", 0))  # accepted: what runs there is not exercised here


def test_fp32_precision_is_a_plain_step():
    torch.manual_seed(0)
    a = nn.Linear(4, 3)
    b = nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    opt_a, opt_b = torch.optim.Adam(a.parameters()), torch.optim.Adam(b.parameters())
    nn.functional.cross_entropy(a(x), y).backward()
    opt_a.step()
    precision = device.Precision(torch.device("cpu"))
    with precision.autocast():
        loss = nn.functional.cross_entropy(b(x), y)
    precision.step(loss, opt_b)
    assert torch.equal(a.weight, b.weight) and precision.state_dict() is None


def test_torchrun_with_mps_is_refused(machine, monkeypatch):
    machine(cuda=0, mps=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(device.DeviceError, match="no process-group backend for MPS"):
        distributed.setup("mps")


def test_sync_bn_converts_batchnorm_and_is_refused_where_it_cannot_sync():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    wrapped = distributed.wrap(model, distributed.local(), sync_bn=True)
    assert isinstance(wrapped[1], nn.SyncBatchNorm)
    two_cpu_ranks = distributed.Context(rank=0, world_size=2, backend="gloo")
    with pytest.raises(ConfigError, match="SyncBatchNorm synchronises CUDA tensors only"):
        distributed.wrap(nn.Sequential(nn.BatchNorm2d(4)), two_cpu_ranks, sync_bn=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda would run")
@pytest.mark.parametrize("args, message", [
    (["--device", "cuda"], "--device cuda: CUDA is not available"),
    (["--amp"], "--amp needs a CUDA device"),
    (["--device", "gpu"], "unknown --device 'gpu'"),
])
def test_cli_device_errors_exit_2(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--dataset", "mnist-5k", "--limit-train", "64", "--batch-size", "16",
                             "--epochs", "1", "--device", "cpu", "--out", str(tmp_path), *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was trained or written


def test_quantization_on_mps_runs_on_the_cpu_or_is_refused(monkeypatch, capsys):
    mps = torch.device("mps")
    monkeypatch.delenv("PYTORCH_ENABLE_MPS_FALLBACK", raising=False)
    assert device.for_quantization(mps, "auto") == torch.device("cpu")
    assert "no MPS kernels for fake quantization" in capsys.readouterr().out
    with pytest.raises(device.DeviceError, match="no MPS kernels, so QAT cannot run there"):
        device.for_quantization(mps, "mps")
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    assert device.for_quantization(mps, "mps") == mps
    assert device.for_quantization(torch.device("cuda", 1), "cuda") == torch.device("cuda", 1)
