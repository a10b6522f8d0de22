import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from core import data
from core.data import DataError


def test_mnist_5k_is_a_fixed_stratified_4000_1000_split():
    a = data.load("mnist-5k", "unused", channels=1, size=28)
    b = data.load("mnist-5k", "unused", channels=1, size=28)
    assert (len(a.train_labels), len(a.test_labels)) == (4000, 1000)
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.train_labels, b.train_labels)
    assert torch.bincount(a.test_labels).tolist() == [100] * 10
    assert a.test_images.dtype == torch.uint8 and a.test_images.shape[1:] == (1, 28, 28)
    assert 0.05 < a.mean[0] < 0.3 and 0.2 < a.std[0] < 0.5  # MNIST-like statistics, measured on train


def test_adapt_changes_channels_and_size():
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    out = data.adapt(images, channels=3, size=32)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0], out[:, 2])


def test_batches_are_normalized_and_seeded():
    bundle = data.load("mnist-5k", "unused", 1, 28, limit_train=256, limit_test=64)
    x1, _ = next(bundle.batches("train", 32, shuffle_seed=3))
    x2, _ = next(bundle.batches("train", 32, shuffle_seed=3))
    x3, _ = next(bundle.batches("train", 32, shuffle_seed=4))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert x1.dtype == torch.float32 and abs(float(x1.mean())) < 1.0


def _write_idx(path, array):
    dims = array.shape
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_local_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "idx"
    src.mkdir()
    _write_idx(src / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (50, 28, 28)))
    _write_idx(src / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, (50,)))
    _write_idx(src / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    _write_idx(src / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, (20,)))
    bundle = data.load("fashion-mnist", src, 1, 28)
    assert (len(bundle.train_labels), len(bundle.test_labels)) == (50, 20)
    assert bundle.source == f"idx:{src}" and bundle.labels[0] == "T-shirt/top"
    assert (src / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")
    bundle = data.load(f"imagefolder:{tmp_path}", "unused", 3, 32)
    assert bundle.labels == ["cat", "dog"] and bundle.train_images.shape == (6, 3, 32, 32)


def test_mnist_falls_back_to_mnist_5k_loudly(monkeypatch, tmp_path, capsys):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    bundle = data.load("mnist", tmp_path, 1, 28)
    out = capsys.readouterr().out
    assert out.count("FALLING BACK to mnist-5k") == 1 and len(out.splitlines()) == 1
    assert bundle.name == "mnist-5k" and "no network" in bundle.note and data.mnist_fallback_recorded(bundle.note)


@pytest.mark.parametrize("name, message", [
    ("svhn", "unknown dataset 'svhn'"),
    ("imagefolder:/no/such/folder", "needs /no/such/folder/train"),
])
def test_bad_dataset_names_say_what_to_do(name, message):
    with pytest.raises(DataError, match=message):
        data.load(name, "unused", 1, 28)


def test_missing_cifar10_says_what_to_do(monkeypatch, tmp_path):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        data.load("cifar10", tmp_path, 3, 32)


def _folder(root, classes=("cat", "dog"), per_class=3, save=None):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(20, 90, (16, 16), dtype=np.uint8)
                (save or (lambda p, a: Image.fromarray(a).save(p)))(d / f"{i}.png", pixels)
    return root


def test_16_bit_pngs_are_scaled_not_saturated(tmp_path):
    eight = data.load(f"imagefolder:{_folder(tmp_path / 'u8')}", "unused", 1, 16)
    sixteen = data.load(f"imagefolder:{_folder(tmp_path / 'u16', save=lambda p, a: Image.fromarray(a.astype(np.uint16) * 257).save(p))}",
                        "unused", 1, 16)
    assert Image.open(next((tmp_path / "u16" / "train" / "cat").iterdir())).mode.startswith("I")
    assert abs(sixteen.mean[0] - eight.mean[0]) < 0.01  # saturated, the mean was 0.99
    assert torch.equal(sixteen.train_images, eight.train_images)


def test_a_one_class_dataset_is_refused(tmp_path):
    with pytest.raises(DataError, match="holds 1 class.*needs at least 2"):
        data.load(f"imagefolder:{_folder(tmp_path, classes=('only',))}", "unused", 1, 16)


def test_negative_limits_are_refused():
    with pytest.raises(DataError, match="must be >= 0"):
        data.load("mnist-5k", "unused", 1, 28, limit_train=-1)


def test_unreadable_images_are_named(tmp_path):
    root = _folder(tmp_path)
    fake = root / "train" / "cat" / "notes.png"
    fake.write_text("not an image")
    with pytest.raises(DataError, match=r"cannot read image .*notes\.png.*Fix or remove"):
        data.load(f"imagefolder:{root}", "unused", 1, 16)
    fake.unlink()
    jpeg = root / "test" / "dog" / "cut.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[:300])  # truncated
    with pytest.raises(DataError, match=r"cannot read image .*cut\.jpg"):
        data.load(f"imagefolder:{root}", "unused", 3, 16)


def test_class_folders_without_images_are_refused(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        data.load(f"imagefolder:{tmp_path}", "unused", 1, 16)


def test_each_mnist_5k_load_owns_its_tensors():
    """The parsed digits are kept for the process (core.data._mnist_5k_split); a bundle changed in place (a caller
    relabelling or normalizing its own copy) must not change the next load."""
    first = data.load("mnist-5k", "unused", 1, 28)
    expected_image, expected_label = first.train_images[0].clone(), int(first.train_labels[0])
    first.train_images += 1
    first.train_labels[0] = (expected_label + 1) % 10
    second = data.load("mnist-5k", "unused", 1, 28)
    assert torch.equal(second.train_images[0], expected_image) and int(second.train_labels[0]) == expected_label
