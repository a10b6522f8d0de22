"""An output folder (OUT) as the stages left it: its manifest, data, fp32 checkpoint and QAT programs.

`Workspace` is the read side of OUT. The pipeline's stages write it; the converters, the
host benchmark and the study read from it, without importing the orchestration on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from . import data as datasets
from . import io as atomic
from . import loaders
from . import manifest as mf
from . import models, qat, quantize, rewrites, train
from .config import RunConfig
from .console import say
from .schemes import Scheme
from .weights import load_weights

CHECKPOINT = Path("checkpoints") / "fp32.pt"


@dataclass
class ExportSource:
    """Everything a converter may start from: the fp32 model, and one scheme's quantized reference."""

    model_name: str
    input_shape: tuple[int, int, int]  # C, H, W
    labels: list[str]
    mean: list[float]
    std: list[float]
    fp32_model: nn.Module  # the fp32 checkpoint, for the float baselines
    scheme: Scheme | None = None
    program: nn.Module | None = None  # the scheme's quantized reference (PT2E folded, torchao, or rounded weights)
    unfolded: nn.Module | None = None  # the PT2E graph with fold_quantize=False, for litert-torch (static schemes)
    float_model: nn.Module | None = None  # the float weights the scheme was made from (QAT-trained, or fp32)
    metadata: dict = field(default_factory=dict)  # dataset, accuracy, run id


class Workspace:
    """Read access to OUT for one resolved config; data is loaded once, on first use."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.manifest = mf.load(self.out, force=cfg.force)
        self.shape = models.input_shape(cfg.model, cfg.image_size, cfg.dataset)
        self._data: datasets.DataBundle | None = None

    @property
    def data(self) -> datasets.DataBundle | loaders.StreamingData:
        if self._data is None:
            c, size, _ = self.shape
            cfg = self.cfg
            name, recorded = cfg.dataset, self.manifest.get("dataset") or {}
            if name == "mnist" and datasets.mnist_fallback_recorded(recorded.get("note")):
                # Decided once per OUT: the model in OUT was trained on mnist-5k, so every later stage
                # evaluates on mnist-5k too (no download retried, no mixing of datasets).
                say(f"data: mnist-5k, as when {self.out} was trained (MNIST was unavailable then; "
                    "a new --out retries full MNIST)")
                name = "mnist-5k"
            if loaders.streams(name, cfg.loader):
                self._data = loaders.open_imagefolder(Path(name.split(":", 1)[1]), c, size,
                                                      limit_train=cfg.limit_train, limit_test=cfg.limit_test,
                                                      workers=cfg.workers, stats_images=cfg.stats_images, seed=cfg.seed)
            else:
                self._data = datasets.load(name, cfg.data_dir, c, size, cfg.limit_train, cfg.limit_test)
            if name != cfg.dataset:
                self._data.note = recorded["note"]
        return self._data

    def build_model(self, num_classes: int, weights: str | None = None, pretrained: bool = False) -> nn.Module:
        """A fresh network of this run's model source, for this run's input channels."""
        return models.build(self.cfg.model, num_classes, weights, in_channels=self.shape[0], pretrained=pretrained)

    def export_ready(self, model: nn.Module) -> nn.Module:
        """The same network with the exact export rewrites applied (core/rewrites.py), in eval mode."""
        return rewrites.apply(model, self.shape)[0].eval()

    def fp32_model(self) -> nn.Module:
        state = train.load_checkpoint(self.out / CHECKPOINT)
        model = self.build_model(len(state["meta"]["labels"]))
        model.load_state_dict(state["model"])
        return self.export_ready(model)

    def quantized_folder(self, tag: str) -> Path:
        return quantize.folder(self.out, tag)

    def quant_stage(self, tag: str) -> dict:
        """What the `qat` stage recorded for scheme `tag` (status, key, sha256 of its files); empty if it never ran."""
        return self.manifest["stages"].get("quantize", {}).get(tag, {})

    def quantized_damaged(self, tag: str) -> list[str]:
        """Files of scheme `tag` that are missing or differ from what the `qat` stage recorded ("(none)": no record)."""
        folder, recorded = self.quantized_folder(tag), self.quant_stage(tag).get("sha256")
        if not recorded:
            return ["(none)"]
        return [f for f, digest in recorded.items() if not atomic.intact(folder / f, digest)]

    def quantized_program(self, tag: str) -> nn.Module:
        return quantize.load_program(self.quantized_folder(tag) / quantize.PROGRAM)

    def export_source(self, scheme: Scheme | None = None) -> ExportSource:
        """The converters' input: the fp32 model, plus `scheme`'s quantized reference when one is given."""
        data = self.data
        source = ExportSource(model_name=self.model_file_name(), input_shape=self.shape, labels=data.labels,
                              mean=data.mean, std=data.std, fp32_model=self.fp32_model(),
                              metadata={"dataset": data.name, "run_id": self.manifest.get("run_id"),
                                        "accuracy": self.manifest.get("accuracy", {}).get("fp32"),
                                        "weights_from": "fp32 weights"})
        if scheme is None:
            return source
        folder = self.quantized_folder(scheme.tag)
        # the QAT weights are keyed as the rewritten network the QAT graph came from (core/rewrites.py: a lone
        # BatchNorm became a conv), so they load into that structure
        float_model = self.export_ready(self.build_model(len(data.labels)))
        load_weights(float_model, qat.load_float_weights(folder / quantize.FLOAT))
        unfolded = folder / quantize.UNFOLDED
        entry = self.manifest.get("accuracy", {}).get(scheme.tag, {})
        source.scheme, source.program = scheme, self.quantized_program(scheme.tag)
        source.unfolded = quantize.load_program(unfolded) if unfolded.exists() else None
        source.float_model = float_model.eval()  # already rewritten (export_ready above)
        source.metadata.update({"accuracy": entry.get("quantized"),
                                "weights_from": "QAT-trained weights" if entry.get("chosen") == "qat" else "fp32 weights"})
        return source

    def model_file_name(self) -> str:
        """The model's name as it goes into file names: `convnet`, `mobilenet_v2`, `tiny-build` for nets/tiny.py:build."""
        name = self.cfg.model.split(":", 1)[1] if self.cfg.model.startswith(("torchvision:", "timm:")) else self.cfg.model
        if ":" in name:
            where, _, factory = name.rpartition(":")
            name = f"{Path(where).stem}-{factory}"
        return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
