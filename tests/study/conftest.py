"""One study over a copy of the session's exported tiny ConvNet; each test file checks one section of it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

# Small settings: few pruning steps and latency calls, one batch of activations, three palettization
# widths, and fc2 kept float by name (the automatic choice is tested on its own, with known accuracies). With 300 test images one
# image is 0.33 pp: 4-bit LUTs on a network pruned with 6 fine-tuning steps flip 2, so the accuracy
# allowance against each file's own reference is 1 pp here, not the default 0.5.
STUDY = dict(keep_float="fc2", prune_steps=6, study_batches=1, sweep_bits="4,2,1", bench_warmup=2, bench_iterations=10,
             sparsity=0.75, channel_ratio=0.5, max_acc_drop=1.0)


@pytest.fixture(scope="session")
def studied(exported, tmp_path_factory):
    """(config, OUT, results.json as a dict, whether the study passed)."""
    from study.run import study

    out = tmp_path_factory.mktemp("studied") / "out"
    shutil.copytree(exported.out, out)
    cfg = dataclasses.replace(exported.cfg, out=str(out), **STUDY).validate()
    passed = study(cfg)
    results = json.loads((out / "study" / "results.json").read_text())
    return cfg, out, results, passed


@pytest.fixture
def section(studied):
    def get(name: str) -> dict:
        sec = studied[2]["sections"][name]
        assert sec["status"] == "done", sec["error"]
        return sec["result"]

    return get
