"""torchrun with 2 CPU processes (gloo): training, rank-0-only writes, resume after a rank died,
and QAT observers and BatchNorm statistics that end identical on both ranks.

Each test starts real `torchrun` jobs (`python -m torch.distributed.run`) of tests/core/ddp_worker.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow  # real torchrun jobs of 2 processes each

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
SETTINGS = ["--batch-size", "32", "--device", "cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def quadrants(tmp_path_factory) -> list[str]:
    """A small imagefolder: 4 classes, each a noisy 28x28 image bright in its own quadrant (64 train, 16 test each).

    It streams (the imagefolder default) and loads in a moment, where mnist-5k costs each process
    seconds of imports: these jobs start 2 processes, 3 times.
    """
    root = tmp_path_factory.mktemp("quadrants")
    rng = np.random.default_rng(0)
    for split, count in (("train", 64), ("test", 16)):
        for c in range(4):
            (root / split / f"q{c}").mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 120, (28, 28))
                pixels[14 * (c // 2):14 * (c // 2) + 14, 14 * (c % 2):14 * (c % 2) + 14] += 100
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / f"q{c}" / f"{i}.png")
    return ["--dataset", f"imagefolder:{root}", *SETTINGS]


def torchrun(*args, env=None, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def writes(logdir: Path, rank: int) -> list[str]:
    log = logdir / f"writes-rank{rank}.txt"
    return [Path(line).name for line in log.read_text().split()] if log.exists() else []


def test_two_processes_train_write_once_resume_after_a_rank_died_and_learn(tmp_path, quadrants):
    """Two jobs: rank 1 is killed in epoch 2 of the first; the second resumes and finishes (a third,
    uninterrupted job would show the same weights bit for bit, but costs another 2-process start)."""
    out = tmp_path / "out"
    # Rank 1 dies in the second epoch: torchrun stops the job; rank 0's epoch-1 checkpoint is intact.
    died = torchrun("cli", str(tmp_path), "train", *quadrants, "--epochs", "2", "--out", str(out),
                    env={"CRASH_RANK": "1", "CRASH_EPOCH": "2"})
    assert died.returncode != 0
    ckpt = out / "checkpoints" / "fp32.pt"
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
    assert writes(tmp_path, 1) == []  # rank 1 wrote nothing; rank 0 wrote the manifest and one checkpoint
    assert writes(tmp_path, 0) == ["manifest.json", "report.md", "fp32.pt"]

    resumed = torchrun("cli", str(tmp_path), "train", *quadrants, "--epochs", "2", "--resume", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    stage = manifest["stages"]["train"]
    compute = stage["compute"]
    assert (compute["world_size"], compute["backend"], compute["global_batch_size"]) == (2, "gloo", 64)
    assert compute["loader"] == "stream" and manifest["dataset"]["n_train"] == 256
    assert [h["epoch"] for h in stage["history"]] == [1, 2] and torch.load(ckpt, weights_only=False)["epoch"] == 2
    assert [h["images"] for h in stage["history"]] == [256, 256]  # both shards counted
    assert stage["history"][1]["loss"] < stage["history"][0]["loss"]
    assert manifest["accuracy"]["fp32"] > 0.6  # chance is 0.25
    assert writes(tmp_path, 1) == []
    assert writes(tmp_path, 0)[3:] == ["manifest.json", "report.md", "fp32.pt", "manifest.json", "report.md"]


def test_distilled_qat_under_ddp_runs_the_teacher_per_rank_and_ends_in_sync(tmp_path):
    """--distill under torchrun: each rank's teacher answers its own shard; the ranks still end identical."""
    plain, taught = tmp_path / "plain.json", tmp_path / "taught.json"
    for result, env in ((plain, {}), (taught, {"DISTILL": "1"})):
        done = torchrun("qat-sync", str(result), env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    plain, taught = (json.loads(p.read_text())["with_sync"] for p in (plain, taught))
    assert plain["distill"] is None and taught["distill"]["temperature"] == 4.0 and taught["distill"]["weight"] == 0.5
    assert taught["differ"] == [] and taught["steps"] == 4
    assert taught["loss"] != plain["loss"]  # the loss the ranks summed is the distillation loss


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
