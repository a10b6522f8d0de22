"""Training batches: the world-size-1 order is the one the pipeline always used, shards split the data,
and the streamed imagefolder path gives the same batches as the in-memory one."""

import numpy as np
import pytest
import torch
from PIL import Image

from core import data, loaders
from core.data import DataError
from core.distributed import Context
from core.loaders import TrainLoader


@pytest.fixture(scope="module")
def mnist():
    return data.load("mnist-5k", "unused", 1, 28, limit_train=300, limit_test=50)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny imagefolder: 3 classes, 12 training and 3 test images each, of mixed sizes and modes."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 3)):
        for c, cls in enumerate(("ant", "bee", "cat")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(20, 50, 2)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                image = Image.fromarray(pixels) if i % 3 else Image.fromarray(pixels[..., 0]).convert("L")
                image.save(d / f"{i}.png")
    return root


def test_world_size_1_order_is_the_pipelines_old_order(mnist):
    loader = TrainLoader(mnist, 32, seed=7000)
    for epoch in range(2):
        ours = list(loader.epoch(epoch))
        old = list(mnist.batches("train", 32, shuffle_seed=7000 + epoch))
        assert len(ours) == len(old) == loader.steps_per_epoch == 10
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(ours, old))
    assert not torch.equal(next(loader.epoch(0))[1], next(loader.epoch(1))[1])  # reshuffled every epoch


def test_two_ranks_split_each_epoch_between_them(mnist):
    shards = [TrainLoader(mnist, 32, seed=5, ctx=Context(rank=r, world_size=2)) for r in (0, 1)]
    assert [s.samples_per_epoch for s in shards] == [150, 150] and shards[0].steps_per_epoch == 5
    for epoch in (0, 1):
        labels = [torch.cat([y for _, y in s.epoch(epoch)]) for s in shards]
        seen = torch.cat(labels)
        assert len(seen) == 300 and torch.equal(seen.sort().values, mnist.train_labels.sort().values)
    first = [next(s.epoch(0))[1] for s in shards]
    assert not torch.equal(first[0], first[1])


def test_streamed_imagefolder_gives_the_in_memory_batches(folder):
    memory = data.load(f"imagefolder:{folder}", "unused", 3, 32)
    streamed = loaders.open_imagefolder(folder, 3, 32, workers=2, stats_images=0)
    assert streamed.labels == memory.labels == ["ant", "bee", "cat"]
    assert torch.equal(streamed.train_labels, memory.train_labels)
    assert streamed.mean == pytest.approx(memory.mean, abs=2e-6) and streamed.std == pytest.approx(memory.std, abs=2e-6)
    assert streamed.normalization["images"] == 36 and "all 36 training images" in streamed.normalization["method"]
    streamed.mean, streamed.std = memory.mean, memory.std  # equal up to the last rounded digit; compare the batches
    for epoch in (0, 1):
        a = list(TrainLoader(memory, 8, seed=3).epoch(epoch))
        b = list(TrainLoader(streamed, 8, seed=3, workers=2).epoch(epoch))
        assert len(a) == len(b) == 5
        assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    test_a, test_b = list(memory.batches("test", 4)), list(streamed.batches("test", 4))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(test_a, test_b))
    assert torch.equal(streamed.test_images[:5], memory.test_images[:5])
    assert streamed.test_images.shape == memory.test_images.shape


def test_streamed_statistics_come_from_a_seeded_sample(folder):
    a = loaders.open_imagefolder(folder, 3, 32, workers=0, stats_images=10, seed=1)
    b = loaders.open_imagefolder(folder, 3, 32, workers=0, stats_images=10, seed=1)
    c = loaders.open_imagefolder(folder, 3, 32, workers=0, stats_images=10, seed=2)
    assert a.mean == b.mean and a.mean != c.mean
    assert a.info()["normalization"]["images"] == 10 and "seeded random sample of 10 of the 36" in a.info()["normalization"]["method"]


def test_loader_choice_and_one_class_folder(folder, tmp_path):
    assert loaders.streams(f"imagefolder:{folder}", "auto") and not loaders.streams(f"imagefolder:{folder}", "memory")
    assert not loaders.streams("mnist-5k", "auto")
    with pytest.raises(DataError, match="--loader stream reads imagefolder: datasets"):
        loaders.streams("mnist-5k", "stream")
    for split in ("train", "test"):
        d = tmp_path / split / "only"
        d.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "0.png")
    with pytest.raises(DataError, match=r"holds 1 class\(es\).*needs at least 2"):
        loaders.open_imagefolder(tmp_path, 3, 32)
