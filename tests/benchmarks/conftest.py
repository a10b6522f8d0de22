"""A tiny exported model and one short bench run over it, shared by the benchmark tests."""

from pathlib import Path

import pytest

from pipeline.cli import main
from core.config import resolve

DATA = Path(__file__).resolve().parent / "data"
TINY = ["--dataset", "mnist-5k", "--epochs", "1", "--limit-train", "512", "--limit-test", "200",
        "--qat-max-steps", "10", "--calib-batches", "2", "--backends", "executorch,tflite,coreml",
        # 200 test images: one flipped image is 0.5 pp, so loosen the export checks for this undertrained model
        "--max-acc-drop", "2", "--min-agreement", "0.98"]
# Few iterations: these tests check that the scripts run and what they write, never how fast anything is.
QUICK = {"bench_warmup": 2, "bench_iterations": 10, "bench_train_steps": 3}


def tiny_config(out: Path):
    cfg = resolve(flag_values={"out": str(out), "dataset": "mnist-5k", "limit_train": 512, "limit_test": 200,
                               "qat_max_steps": 10})
    for name, value in QUICK.items():
        setattr(cfg, name, value)
    return cfg


@pytest.fixture(scope="session")
def config_for():
    """config_for(out) -> the RunConfig of the tiny run, with short bench settings."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "out"
    for command in ("train", "qat", "export"):
        assert main([command, *TINY, "--out", str(out)]) == 0, f"`{command}` of the tiny model failed"
    return out


@pytest.fixture(scope="session")
def benched(tiny_out) -> Path:
    """OUT after one `bench` run; tests that change files work on copies (see `report_copy`)."""
    from benchmarks import host

    assert host.bench(tiny_config(tiny_out)) is True
    return tiny_out
