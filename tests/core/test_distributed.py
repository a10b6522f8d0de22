"""torchrun with 2 CPU processes (gloo): training, rank-0-only writes, resume after a rank died,
and QAT observers and BatchNorm statistics that end identical on both ranks.

Each test starts real `torchrun` jobs (`python -m torch.distributed.run`) of tests/core/ddp_worker.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
TINY = ["--dataset", "mnist-5k", "--limit-train", "256", "--limit-test", "200", "--batch-size", "32", "--device", "cpu"]


def torchrun(*args, env=None, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def writes(logdir: Path, rank: int) -> list[str]:
    log = logdir / f"writes-rank{rank}.txt"
    return [Path(line).name for line in log.read_text().split()] if log.exists() else []


def test_two_processes_train_write_once_resume_after_a_rank_died_and_learn(tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    for d in (straight, crashed):
        d.mkdir()
    done = torchrun("cli", str(straight), "train", *TINY, "--epochs", "2", "--out", str(straight / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((straight / "out" / "manifest.json").read_text())
    compute = manifest["stages"]["train"]["compute"]
    assert (compute["world_size"], compute["backend"], compute["global_batch_size"]) == (2, "gloo", 64)
    assert [h["images"] for h in manifest["stages"]["train"]["history"]] == [256, 256]  # both shards counted
    assert manifest["accuracy"]["fp32"] > 0.5  # chance is 0.1
    assert writes(straight, 1) == []  # rank 1 wrote nothing; rank 0 wrote each epoch's checkpoint and the manifest
    assert writes(straight, 0) == ["fp32.pt", "fp32.pt", "manifest.json"]

    # Rank 1 dies in the second epoch: torchrun stops the job; rank 0's epoch-1 checkpoint is intact.
    died = torchrun("cli", str(crashed), "train", *TINY, "--epochs", "2", "--out", str(crashed / "out"),
                    env={"CRASH_RANK": "1", "CRASH_EPOCH": "2"})
    assert died.returncode != 0
    ckpt = crashed / "out" / "checkpoints" / "fp32.pt"
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
    resumed = torchrun("cli", str(crashed), "train", *TINY, "--epochs", "2", "--resume", "--out", str(crashed / "out"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = json.loads((crashed / "out" / "manifest.json").read_text())["stages"]["train"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert writes(crashed, 1) == []
    a = torch.load(straight / "out" / "checkpoints" / "fp32.pt", weights_only=False)["model"]
    b = torch.load(ckpt, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resumed run ends where the straight run did, bit for bit


def test_qat_under_ddp_ends_with_the_same_observers_and_batchnorm_on_both_ranks(tmp_path):
    result = tmp_path / "qat.json"
    done = torchrun("qat-sync", str(result))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(result.read_text())
    plain, synced = report["without_sync"], report["with_sync"]
    assert plain["observers"] >= 5 and plain["batchnorm"] == 4  # 2 BatchNorm layers: running mean and var each
    # Plain DDP: each rank's last step leaves its own observer ranges and BatchNorm statistics.
    assert any(k.startswith("bn:") for k in plain["differ"]) and any(k.endswith((".min", ".max")) for k in plain["differ"])
    assert synced["differ"] == [], synced["differ"]
    assert synced["qparams_match"]  # scale and zero point are those the synced ranges give
    assert synced["synced"] == {"observers": synced["observers"], "batchnorm_tensors": 4}
