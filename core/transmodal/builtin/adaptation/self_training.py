"""Self-training on unlabelled target batches with confidence-thresholded pseudo-labels."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from transmodal.builtin.adaptation.params import PseudoLabelParams
from transmodal.model import TransmodalModel
from transmodal.strategy import StepData, Strategy, TrainingContext


class TeacherStrategy(Strategy):
    """A strategy that learns from a teacher: a copy of the model in eval mode whose parameters take no gradient,
    made on first use, once every strategy's setup (adapters included) has shaped the model."""

    def __init__(self) -> None:
        self.student: TransmodalModel | None = None
        self.teacher: TransmodalModel | None = None

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        self.student = model

    def _teacher(self) -> TransmodalModel:
        if self.teacher is None:
            assert self.student is not None
            self.teacher = copy.deepcopy(self.student).eval()
            for parameter in self.teacher.parameters():
                parameter.requires_grad_(False)
            self._prepare_teacher(self.teacher)
        return self.teacher

    def _prepare_teacher(self, teacher: TransmodalModel) -> None:
        """What a strategy changes in its teacher once it is made (nothing by default)."""


class PseudoLabel(TeacherStrategy):
    """Target predictions at least ``threshold`` confident become labels (Lee, 2013): the loss is the cross-entropy
    on those samples, averaged over the whole target batch, so it grows as more samples pass the threshold.
    The fraction that passes is logged as ``metric/pseudo-label.used``: a threshold that no prediction reaches
    (a small budget, a hard shift) otherwise turns the strategy off without a sign.

    With ``ema``, the labels come from a mean teacher (Tarvainen and Valpola, 2017): a copy of the model, in
    eval mode, whose weights follow the trained ones as an exponential moving average after every step (its
    BatchNorm statistics are copied). The teacher is saved with the strategy for an exact resume."""

    name = "pseudo-label"
    needs_unlabelled_target = True

    def __init__(self, params: PseudoLabelParams) -> None:
        super().__init__()
        self.params = params

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        assert step.target is not None and step.target_output is not None
        if self.params.ema is not None:
            with torch.no_grad():
                reference = self._teacher()(step.target).logits.float()
        else:
            reference = step.target_output.logits.detach().float()
        confidence, labels = torch.softmax(reference, dim=1).max(dim=1)
        mask = (confidence >= self.params.threshold).float()
        step.metrics["used"] = mask.mean().detach()
        losses = nn.functional.cross_entropy(step.target_output.logits.float(), labels, reduction="none")
        return {"pseudo": self.params.factor(step.progress) * (mask * losses).mean()}

    def on_step_end(self, step: int) -> None:
        if self.params.ema is None or self.student is None:
            return
        with torch.no_grad():
            teacher = list(self._teacher().parameters())
            student = [p.detach() for p in self.student.parameters()]
            torch._foreach_lerp_(teacher, student, 1.0 - self.params.ema)
            for mine, theirs in zip(self._teacher().buffers(), self.student.buffers(), strict=True):
                mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self._teacher().state_dict()} if self.params.ema is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.params.ema is not None:
            self._teacher().load_state_dict(state["teacher"])


def build_pseudo_label(params: PseudoLabelParams) -> PseudoLabel:
    return PseudoLabel(params)
