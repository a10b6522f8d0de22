"""An output folder (OUT) as the stages left it: its manifest, data, fp32 checkpoint and QAT programs.

`Workspace` is the read side of OUT. The pipeline's stages write it; the converters, the
host benchmark and the study read from it, without importing the orchestration on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from . import data as datasets
from . import manifest as mf
from . import models, qat, rewrites, train
from .config import RunConfig

CHECKPOINT = Path("checkpoints") / "fp32.pt"


@dataclass
class ExportSource:
    """Everything a converter may start from: the one quantized model, in the forms each runtime needs."""

    model_name: str
    input_shape: tuple[int, int, int]  # C, H, W
    labels: list[str]
    mean: list[float]
    std: list[float]
    qat_folded: nn.Module  # convert_pt2e(fold_quantize=True), for ExecuTorch
    qat_unfolded: nn.Module  # convert_pt2e(fold_quantize=False), for litert-torch
    fp32_model: nn.Module  # the fp32 checkpoint, for the float baselines
    qat_float_model: nn.Module  # the quantization-trained float weights, for Core ML
    metadata: dict = field(default_factory=dict)  # dataset, accuracies, run id


class Workspace:
    """Read access to OUT for one resolved config; data is loaded once, on first use."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.manifest = mf.load(self.out, force=cfg.force)
        self.shape = models.input_shape(cfg.model, cfg.image_size, cfg.dataset)
        self._data: datasets.DataBundle | None = None

    @property
    def data(self) -> datasets.DataBundle:
        if self._data is None:
            c, size, _ = self.shape
            self._data = datasets.load(self.cfg.dataset, self.cfg.data_dir, c, size,
                                       self.cfg.limit_train, self.cfg.limit_test)
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

    def qat_folded(self) -> nn.Module:
        return qat.load_program(self.out / qat.QAT_FOLDED)

    def export_source(self) -> ExportSource:
        data, acc = self.data, self.manifest.get("accuracy", {})
        qat_float = self.build_model(len(data.labels))
        qat_float.load_state_dict(qat.load_float_weights(self.out / qat.QAT_FLOAT))
        qat_float = self.export_ready(qat_float)
        return ExportSource(
            model_name=self.cfg.model, input_shape=self.shape, labels=data.labels, mean=data.mean, std=data.std,
            qat_folded=self.qat_folded(),
            qat_unfolded=qat.load_program(self.out / qat.QAT_UNFOLDED),
            fp32_model=self.fp32_model(), qat_float_model=qat_float.eval(),
            metadata={"dataset": data.name, "qat_float_accuracy": acc.get("qat_float"),
                      "run_id": self.manifest.get("run_id")})
