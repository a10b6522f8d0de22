"""A tiny exported model and one short bench run over it, shared by the benchmark tests."""

from pathlib import Path

import pytest

from core.config import resolve

DATA = Path(__file__).resolve().parent / "data"
# Few iterations: these tests check that the scripts run and what they write, never how fast anything is.
QUICK = {"bench_warmup": 2, "bench_iterations": 10, "bench_train_steps": 3, "bench_seconds": 0.25}


def tiny_config(out: Path):
    # the settings of the session's `exported` fixture (tests/conftest.py), whose OUT the bench runs over
    cfg = resolve(flag_values={"out": str(out), "dataset": "mnist-5k", "limit_train": 1024, "limit_test": 300,
                               "qat_max_steps": 20, "calib_batches": 4, "sample_size": 20, "min_agreement": 0.98})
    for name, value in QUICK.items():
        setattr(cfg, name, value)
    return cfg


@pytest.fixture(scope="session")
def config_for():
    """config_for(out) -> the RunConfig of the tiny run, with short bench settings."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_out(tmp_path_factory, exported) -> Path:
    """A copy of the session's exported OUT (all three backends), so the bench tests train nothing."""
    import shutil

    assert exported.export_ok
    out = tmp_path_factory.mktemp("bench") / "out"
    shutil.copytree(exported.out, out, ignore=shutil.ignore_patterns(".lock"))
    return out


@pytest.fixture(scope="session")
def benched(tiny_out) -> Path:
    """OUT after one `bench` run; tests that change files work on copies (see `report_copy`)."""
    from benchmarks import host

    assert host.bench(tiny_config(tiny_out)) is True
    return tiny_out
