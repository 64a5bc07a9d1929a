"""DIRT-T: refining an adapted model on the target domain alone."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transmodal.builtin.adaptation.params import DIRTTParams
from transmodal.builtin.adaptation.self_training import TeacherStrategy
from transmodal.builtin.adaptation.smoothness import kl_divergence
from transmodal.model import TransmodalModel
from transmodal.strategy import StepData


class DIRTT(TeacherStrategy):
    """DIRT-T (Shu et al., 2018, "A DIRT-T Approach to Unsupervised Domain Adaptation"), the refinement after VADA.
    Started from a VADA-trained model (``model.init_from``), training leaves the source labels behind
    (``task_weight`` 0) and follows the target data's own cluster structure: conditional entropy and virtual
    adversarial training on target inputs (``entropy-min`` with ``diversity: 0`` and ``vat`` with ``source_weight:
    0``, both at their 0.01, beside this strategy) push the decision boundary out of dense target regions, and this
    strategy's term, ``weight`` x KL(teacher || model) on each target batch, keeps every step near a teacher: a copy
    of the model refreshed every ``teacher_every`` steps, their approximation of a natural-gradient step that stays
    close to the previous iterate. Shu et al. refresh the teacher from the exponential moving average of the
    weights; here it is copied from the model as it trains (with ``trainer.ema_decay`` the average is what is
    evaluated and saved). The teacher sees each target batch as the model does in training, its BatchNorm on the
    batch's own statistics, but without dropout."""

    name = "dirt-t"
    needs_unlabelled_target = True
    needs_init_from = True
    task_weight = 0.0

    def __init__(self, params: DIRTTParams) -> None:
        super().__init__()
        self.params = params

    def _prepare_teacher(self, teacher: TransmodalModel) -> None:
        for module in teacher.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()  # the target batch's own statistics, as the model normalises it in training

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        assert step.target is not None and step.target_output is not None
        with torch.no_grad():
            reference = torch.softmax(self._teacher()(step.target).logits.float(), dim=1)
        divergence = kl_divergence(reference, step.target_output.logits).mean()
        return {"teacher": self.params.factor(step.progress) * divergence}

    def on_step_end(self, step: int) -> None:
        if step % self.params.teacher_every == 0 and self.student is not None:
            self._teacher().load_state_dict(self.student.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self._teacher().state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._teacher().load_state_dict(state["teacher"])


def build_dirt_t(params: DIRTTParams) -> DIRTT:
    return DIRTT(params)
