"""Knowledge distillation (Hinton et al., Distilling the Knowledge in a Neural Network, 2015) for MONAI's trainer.

:class:`TeacherStudent` is what the ``SupervisedTrainer`` steps: the student, which also runs the frozen teacher
on the same batch in training; :class:`DistillationLoss` adds ``weight * T^2 * KL(teacher || student)`` over
class probabilities softened by the temperature ``T`` to the task loss on the labels. MONAI has no
distillation loss; these two small classes are the own code (the trainer, loss, data and schedule are MONAI's
and medseg's builders).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class TeacherStudent(nn.Module):
    """The student; in training it also keeps the teacher's logits of the same input (``teacher_logits``).

    The teacher is held outside the module tree: its weights are neither trained, nor in ``state_dict()``, nor
    switched to training mode.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self._teacher = [teacher.eval()]
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher_logits: torch.Tensor | None = None

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def forward(self, x: torch.Tensor) -> Any:
        if self.training:
            with torch.no_grad():
                out = self.teacher(x)
            self.teacher_logits = out[0] if isinstance(out, (list, tuple)) else out
        return self.student(x)


class DistillationLoss(nn.Module):
    """``task(pred, label) + weight * T^2 * mean over voxels of KL(softmax(teacher / T) || softmax(student / T))``."""

    def __init__(self, task_loss: nn.Module, source: TeacherStudent, temperature: float, weight: float) -> None:
        super().__init__()
        self.task_loss, self.source = task_loss, [source]
        self.temperature, self.weight = float(temperature), float(weight)

    def soft_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher.to(student.dtype) / t, dim=1),
                      log_target=True, reduction="none")
        return kl.sum(dim=1).mean() * (t * t)  # T^2: the soft gradients keep their scale as T changes

    def forward(self, pred: Any, label: torch.Tensor) -> torch.Tensor:
        task = self.task_loss(pred, label)
        teacher = self.source[0].teacher_logits
        if teacher is None or self.weight == 0:
            return task
        main = pred[0] if isinstance(pred, (list, tuple)) else pred
        return task + self.weight * self.soft_loss(main, teacher)


__all__ = ["DistillationLoss", "TeacherStudent"]
