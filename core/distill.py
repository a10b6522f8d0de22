"""Knowledge distillation for fine-tuning: the trained fp32 model teaches the network being quantized.

The loss is Hinton's: the KL divergence between the teacher's and the student's class
distributions, both softened by a temperature T, times T² (so its gradients keep their scale as T
changes), mixed with the ordinary cross-entropy on the labels:

    loss = weight * T² * KL(softmax(teacher / T) || softmax(student / T)) + (1 - weight) * CE(student, labels)

weight 0 is plain cross-entropy. The teacher runs in eval mode without gradients on the same
batch as the student; under torchrun every process computes its teacher's answers on its own shard.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class Distillation:
    temperature: float = 4.0
    weight: float = 0.5

    @classmethod
    def from_config(cls, cfg) -> "Distillation | None":
        """The distillation --distill asks for (None: off)."""
        return cls(cfg.distill_temperature, cfg.distill_weight) if cfg.distill else None

    def describe(self) -> dict:
        return {"teacher": "the fp32 checkpoint (eval mode, no gradient)", "temperature": self.temperature,
                "weight": self.weight, "loss": "weight * T^2 * KL(teacher_T || student_T) + (1 - weight) * CE"}


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                      weight: float, hard_loss=F.cross_entropy) -> torch.Tensor:
    """weight * T² * KL(teacher/T || student/T) (batch mean) + (1 - weight) * hard_loss(student, labels)."""
    hard = hard_loss(student, labels)
    if weight == 0:
        return hard
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher.float().detach() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return weight * soft + (1 - weight) * hard


class WithTeacher(nn.Module):
    """The student (what trains, possibly inside DistributedDataParallel) beside a frozen teacher.

    forward returns the student's logits, and keeps the teacher's logits of the same batch for the
    loss. The teacher is held outside the module tree, so .train(), .parameters() and the optimizer
    never see it: it stays in eval mode, with its own BatchNorm statistics, and never changes.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.student = student
        self._teacher = (teacher,)  # a tuple: not registered as a submodule
        self.teacher_logits: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.teacher_logits = self._teacher[0](images)
        return self.student(images)

    def loss_fn(self, settings: Distillation, hard_loss=F.cross_entropy):
        """The loss for run_epoch: (student logits, labels) -> the distillation loss against this batch's teacher."""
        def loss(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return distillation_loss(student, self.teacher_logits, labels, settings.temperature, settings.weight,
                                     hard_loss)
        return loss


def teacher_from(model: nn.Module, device: torch.device | str) -> nn.Module:
    """A frozen copy of the fp32 model on `device`: eval mode, no gradients."""
    teacher = copy.deepcopy(model).eval().to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
