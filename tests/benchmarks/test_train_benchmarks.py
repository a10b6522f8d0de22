"""bench-train and bench-stream pieces on tiny inputs: they run and record what they say, never how fast."""

import sys

import pytest

from benchmarks import distributed as bench_train
from benchmarks import streaming, training
from core import data, models


def test_loop_comparison_alternates_rounds_on_separate_copies():
    bundle = data.load("mnist-5k", "unused", 1, 28, limit_train=256, limit_test=1)
    model = models.build("convnet", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bare, piped = training.fp32_loops(model, bundle, 32, 1e-3, steps=2, seed=0, rounds=2)
    assert all(v.equal(before[k]) for k, v in model.state_dict().items())  # the loops trained copies
    for loop in (bare, piped):
        assert len(loop["rounds"]) == 2 and loop["images_per_s"] > 0 and loop["cpu_ms_per_image"] > 0
    e = training.entry(bare, piped)
    assert e["pipeline_vs_bare"] == pytest.approx(piped["images_per_s"] / bare["images_per_s"])
    assert e["bare_steps"] == 2


def test_two_process_child_measures_the_job(tmp_path):
    args = bench_train.parser().parse_args(["--limit-train", "256", "--batch-size", "16", "--warmup", "1", "--steps", "2"])
    row = bench_train.launch("fp32", "cpu", 2, 1, 16, args, tmp_path)
    assert (row["world_size"], row["global_batch"], row["steps"], row["images"]) == (2, 32, 2, 64)
    assert row["images_per_s"] > 0


def test_gpu_section_says_why_it_is_empty():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    gpu = bench_train.gpu_scaling(bench_train.parser().parse_args([]), None)
    assert "no CUDA device" in gpu["skipped"]


def test_memory_sampler_sees_a_child_allocation():
    peak = streaming.run_sampled([sys.executable, "-c", "import time; b = bytearray(300 * 2**20); time.sleep(1)"], env={})
    assert peak["returncode"] == 0 and peak["tree_mib"] > 250 and peak["main_rss_mib"] > 250


def test_folder_of_small_images(tmp_path):
    root = streaming.make_folder(tmp_path / "f", 30, 10)
    assert len(list((root / "train").rglob("*.png"))) == 30 and len(list((root / "test").rglob("*.png"))) == 10
    allocated, apparent = streaming.disk_bytes(root)
    assert allocated >= apparent > 0
    assert streaming.make_folder(root, 30, 10) == root  # complete: reused, not rewritten


def test_time_budget_cuts_steps_then_rounds_never_below_one_step_and_two_rounds():
    assert training.fit(0.01, None, 30, 6) == (30, 6, training.WARMUP_STEPS)  # no budget: as asked
    assert training.fit(0.01, 60.0, 30, 6) == (30, 6, training.WARMUP_STEPS)  # fits
    assert training.fit(0.5, 60.0, 30, 6) == (10, 6, training.WARMUP_STEPS)  # 60 s / (2 loops × 0.5 s × 6 rounds)
    assert training.fit(16.0, 60.0, 30, 6) == (1, 2, 1)  # mobilenet_v2 at 224 px: the least that still alternates
    assert training.fit(16.0, 200.0, 30, 6) == (1, 6, 1)


def test_loop_comparison_keeps_to_its_budget():
    bundle = data.load("mnist-5k", "unused", 1, 28, limit_train=256, limit_test=1)
    bare, piped = training.fp32_loops(models.build("convnet", 10), bundle, 32, 1e-3, steps=50, seed=0, rounds=4,
                                      seconds=1e-3)
    e = training.entry(bare, piped)
    assert (e["bare_steps"], e["rounds"], e["warmup_steps"]) == (1, 2, 1)
    assert e["asked"] == {"steps": 50, "rounds": 4} and e["budget_s"] == 1e-3 and e["first_step_s"] > 0
    assert len(e["bare_rounds_images_per_s"]) == len(e["pipeline_rounds_images_per_s"]) == 2
