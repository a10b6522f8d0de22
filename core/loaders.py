"""Training batches: from memory for small sets, streamed from disk for `imagefolder:` sets.

`TrainLoader` gives one process its batches for one epoch: the shard a `DistributedSampler`
assigns it (all of the data at world size 1), reshuffled every epoch with `set_epoch`,
moved to the training device and normalized there. The permutation at world size 1 is the
one the pipeline always used (`randperm` seeded with seed + epoch), so one-process runs
compute exactly what they computed before.

`StreamingData` stands in for `core.data.DataBundle` when a dataset is too large to hold in
RAM: it keeps only file paths and labels; `DataLoader` workers decode the images
(`core.data.read_image`, the same decoder as the in-memory path) and, on CUDA, hand over
pinned memory. Mean and std are measured on a seeded sample of the training images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from . import data as datasets
from .distributed import Context

STATS_BATCH = 256


def decoded(loader: DataLoader) -> Iterator:
    """Iterate a DataLoader whose workers decode image files: a file they cannot read ends in the one-line
    DataError that names it (as on the in-memory path), not in the worker's wrapped traceback."""
    try:
        yield from loader
    except datasets.DataError as exc:
        text = str(exc)
        if "Traceback" not in text:
            raise
        found = [line for line in text.splitlines() if line.startswith(("core.data.DataError: ", "DataError: "))]
        raise datasets.DataError(found[-1].split(": ", 1)[1] if found else text.strip().splitlines()[-1]) from None


class FolderDataset(Dataset):
    """(uint8 CxHxW image, label) pairs decoded from image files on demand."""

    def __init__(self, samples: list[tuple[str, int]], channels: int, size: int,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.samples, self.channels, self.size, self.transform = samples, channels, size, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        array = datasets.read_image(Path(path), self.channels, self.size)
        image = torch.from_numpy(np.array(array))  # a writable copy of PIL's read-only buffer
        image = image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1).contiguous()
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def with_transform(self, transform) -> "FolderDataset":
        return FolderDataset(self.samples, self.channels, self.size, transform)


class FolderImages:
    """A lazy, read-only view of a FolderDataset's images, indexable like the uint8 [N, C, H, W] tensor
    of a DataBundle (`images[:n]`, `images[i]`, `.shape`); decoding happens on access."""

    def __init__(self, dataset: FolderDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def shape(self) -> torch.Size:
        return torch.Size([len(self.dataset), self.dataset.channels, self.dataset.size, self.dataset.size])

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self.dataset[index][0]
        indices = range(len(self.dataset))[index] if isinstance(index, slice) else torch.as_tensor(index).tolist()
        if not len(indices):
            return torch.empty(0, *self.shape[1:], dtype=torch.uint8)
        return torch.stack([self.dataset[i][0] for i in indices])


@dataclass
class StreamingData:
    """An imagefolder: dataset read from disk batch by batch; duck-types the parts of DataBundle the stages use."""

    name: str
    source: str
    train: FolderDataset
    test: FolderDataset
    labels: list[str]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    normalization: dict = field(default_factory=dict)  # how mean/std were measured
    workers: int = 2
    note: str | None = None
    streamed: bool = True

    def __post_init__(self):
        self.train_labels = torch.as_tensor([y for _, y in self.train.samples], dtype=torch.int64)
        self.test_labels = torch.as_tensor([y for _, y in self.test.samples], dtype=torch.int64)
        self.train_images, self.test_images = FolderImages(self.train), FolderImages(self.test)

    normalize = datasets.DataBundle.normalize  # the very same arithmetic as the in-memory path

    def info(self) -> dict:
        return {"name": self.name, "source": self.source, "n_train": len(self.train), "n_test": len(self.test),
                "input_shape": list(self.test_images.shape[1:]), "labels": self.labels, "mean": self.mean,
                "std": self.std, "note": self.note, "loader": "stream", "normalization": self.normalization}

    def batches(self, split: str, batch_size: int, shuffle_seed: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalized float batches on the CPU, decoded by `workers` processes; as DataBundle.batches."""
        dataset = self.train if split == "train" else self.test
        order = range(len(dataset))
        if shuffle_seed is not None:
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
        loader = DataLoader(dataset, batch_sampler=BatchSampler(order, batch_size, drop_last=False),
                            num_workers=self.workers)
        for images, labels in decoded(loader):
            yield self.normalize(images), labels

    def check_readable(self, split: str = "test", batch_size: int = STATS_BATCH) -> int:
        """Decode every image of `split` once (DataError naming the first file that cannot be read); the test set
        is checked before training, since it is read only after the last epoch. Returns how many were read."""
        return sum(len(labels) for _, labels in self.batches(split, batch_size))


def streams(dataset: str, loader: str) -> bool:
    """Whether `--dataset` is read through the streaming path under `--loader auto|memory|stream`."""
    if loader == "stream" and not dataset.startswith("imagefolder:"):
        raise datasets.DataError(f"--loader stream reads imagefolder: datasets; {dataset} is loaded into memory. "
                                 "Use --loader auto or memory")
    return dataset.startswith("imagefolder:") and loader in ("auto", "stream")


def open_imagefolder(root: Path, channels: int, size: int, *, limit_train: int = 0, limit_test: int = 0,
                     workers: int = 2, stats_images: int = 2000, seed: int = 0) -> StreamingData:
    """Index `root/train` and `root/test` (or val/) without decoding them; measure mean/std on a sample."""
    root = Path(root)
    train_dir, test_dir = datasets.imagefolder_splits(root)
    train, test = datasets.index_imagefolder(train_dir), datasets.index_imagefolder(test_dir)
    if test.classes != train.classes:
        raise datasets.DataError(f"{root}: train classes {train.classes} differ from test classes {test.classes}")
    if limit_train < 0 or limit_test < 0:
        raise datasets.DataError(f"--limit-train and --limit-test must be >= 0 (0 = all), got {limit_train} and {limit_test}")
    train_samples = train.samples[:limit_train] if limit_train else train.samples
    test_samples = test.samples[:limit_test] if limit_test else test.samples
    bundle = StreamingData("imagefolder", f"imagefolder:{root}", FolderDataset(train_samples, channels, size),
                           FolderDataset(test_samples, channels, size), list(train.classes), workers=workers)
    datasets.check_labels(bundle)  # the same refusals as the in-memory path
    bundle.mean, bundle.std, bundle.normalization = measure_normalization(bundle.train, stats_images, seed, workers)
    return bundle


def measure_normalization(dataset: FolderDataset, sample: int, seed: int, workers: int) -> tuple[list, list, dict]:
    """Per-channel mean and std (n-1) of the pixels in [0, 1], over a seeded random sample of the images.

    Sums of pixel values and of their squares are kept as exact integers, so the result does not
    depend on the batch size or on the order the workers deliver the images in.
    """
    n = len(dataset)
    if sample and sample < n:
        indices = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:sample].sort().values.tolist()
    else:
        indices = list(range(n))
    total = squares = None
    count = 0
    loader = DataLoader(dataset, batch_sampler=BatchSampler(indices, STATS_BATCH, drop_last=False), num_workers=workers)
    for images, _ in decoded(loader):
        x = images.to(torch.int64)
        s, q = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, squares = (s, q) if total is None else (total + s, squares + q)
        count += x.numel() // x.shape[1]
    mean = total.double() / count
    var = (squares.double() - total.double() ** 2 / count) / max(count - 1, 1)
    means = [round(v / 255.0, 6) for v in mean.tolist()]
    stds = [round(max(math.sqrt(max(v, 0.0)) / 255.0, 1e-3), 6) for v in var.tolist()]
    how = {"images": len(indices), "of": n, "seed": seed if len(indices) < n else None,
           "method": ("per-channel mean and std (n-1) of the pixels scaled to [0, 1], over "
                      + (f"a seeded random sample of {len(indices)} of the {n} training images" if len(indices) < n
                         else f"all {n} training images")
                      + ", decoded and resized as for training, before any augmentation")}
    return means, stds, how


class TrainLoader:
    """One process's training batches: a seeded DistributedSampler shard, on the device, normalized.

    `seed` is the base of the shuffle: epoch e uses randperm(N) seeded with seed + e, which at
    world size 1 is the order `DataBundle.batches(shuffle_seed=seed + e)` gives. In-memory data
    is copied to the device once; streamed data is decoded by `workers` DataLoader processes
    (with pinned memory on CUDA). `augment`, if given, transforms each uint8 CxHxW image.
    """

    def __init__(self, data, batch_size: int, *, seed: int, ctx: Context | None = None, workers: int = 0,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.ctx = ctx or Context()
        self.augment = augment
        n = len(data.train_labels)
        # DistributedSampler reads only len() of the dataset; the indices are what it shards.
        self.sampler = DistributedSampler(range(n), num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                          shuffle=True, seed=seed, drop_last=False)
        self.streamed = bool(getattr(data, "streamed", False))
        device = self.ctx.device
        self.mean = torch.tensor(data.mean).view(1, -1, 1, 1).to(device)
        self.std = torch.tensor(data.std).view(1, -1, 1, 1).to(device)
        if self.streamed:
            self.workers = workers
            self.loader = DataLoader(data.train.with_transform(augment), batch_sampler=BatchSampler(self.sampler, batch_size, False),
                                     num_workers=workers, pin_memory=device.type == "cuda",
                                     generator=torch.Generator())
        else:
            self.workers = 0
            self.images = data.train_images.to(device)
            self.labels = data.train_labels.to(device)

    @property
    def samples_per_epoch(self) -> int:
        """Images this process sees in one epoch (the sampler pads the shards to equal length)."""
        return self.sampler.num_samples

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.samples_per_epoch / self.batch_size)

    def describe(self) -> dict:
        return {"loader": "stream" if self.streamed else "memory", "workers": self.workers,
                "pin_memory": self.streamed and self.ctx.device.type == "cuda",
                "batch_size_per_process": self.batch_size, "global_batch_size": self.batch_size * self.ctx.world_size,
                "augment": self.augment is not None}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        # DataBundle.normalize's arithmetic, in place on the one float copy: the same values, fewer allocations.
        return images.float().div_(255.0).sub_(self.mean).div_(self.std)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        if self.streamed:
            self.loader.generator.manual_seed(self.seed + epoch)  # worker seeds: a function of seed and epoch
            device = self.ctx.device
            for images, labels in decoded(self.loader):
                images = images.to(device, non_blocking=True)
                yield self.normalize(images), labels.to(device, non_blocking=True)
            return
        order = list(self.sampler)
        for start in range(0, len(order), self.batch_size):
            idx = torch.tensor(order[start:start + self.batch_size], device=self.images.device)
            images = self.images[idx]
            if self.augment is not None:
                images = torch.stack([self.augment(image) for image in images])
            yield self.normalize(images), self.labels[idx]
