"""An output folder (OUT) as the stages left it: its manifest, data, fp32 checkpoint and QAT programs.

`Workspace` is the read side of OUT. The pipeline's stages write it; the converters, the
host benchmark and the study read from it, without importing the orchestration on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from . import data as datasets
from . import loaders
from . import manifest as mf
from . import models, qat, train
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
        self.manifest = mf.load(self.out)
        self.shape = models.input_shape(cfg.model, cfg.image_size)
        self._data: datasets.DataBundle | None = None

    @property
    def data(self) -> datasets.DataBundle | loaders.StreamingData:
        if self._data is None:
            c, size, _ = self.shape
            cfg = self.cfg
            if loaders.streams(cfg.dataset, cfg.loader):
                self._data = loaders.open_imagefolder(Path(cfg.dataset.split(":", 1)[1]), c, size,
                                                      limit_train=cfg.limit_train, limit_test=cfg.limit_test,
                                                      workers=cfg.workers, stats_images=cfg.stats_images, seed=cfg.seed)
            else:
                self._data = datasets.load(cfg.dataset, cfg.data_dir, c, size, cfg.limit_train, cfg.limit_test)
        return self._data

    def fp32_model(self) -> nn.Module:
        state = train.load_checkpoint(self.out / CHECKPOINT)
        model = models.build(self.cfg.model, len(state["meta"]["labels"]))
        model.load_state_dict(state["model"])
        return model.eval()

    def qat_folded(self) -> nn.Module:
        return qat.load_program(self.out / qat.QAT_FOLDED)

    def export_source(self) -> ExportSource:
        data, acc = self.data, self.manifest.get("accuracy", {})
        qat_float = models.build(self.cfg.model, len(data.labels))
        qat_float.load_state_dict(qat.load_float_weights(self.out / qat.QAT_FLOAT))
        return ExportSource(
            model_name=self.cfg.model, input_shape=self.shape, labels=data.labels, mean=data.mean, std=data.std,
            qat_folded=self.qat_folded(),
            qat_unfolded=qat.load_program(self.out / qat.QAT_UNFOLDED),
            fp32_model=self.fp32_model(), qat_float_model=qat_float.eval(),
            metadata={"dataset": data.name, "qat_float_accuracy": acc.get("qat_float"),
                      "run_id": self.manifest.get("run_id")})
