"""The strategy contract: how an adaptation method hooks into training.

Strategies compose as a list. The trainer calls, in order of the list:

* ``check(model, strategies)`` before anything trains: raise ConfigError for a combination that cannot work;
* ``setup(model, context)`` once, before the optimizer exists (freeze, wrap, snapshot pretrained weights);
* ``modules()``: the strategy's own trainable modules (a domain discriminator), optimised and checkpointed;
* ``configure_param_groups(groups)``: change learning-rate scales or drop groups;
* ``loss_terms(step)`` every step: named loss terms added to the task loss (values only logged go in
  ``step.metrics``);
* ``on_step_end``, ``on_epoch_start``, ``on_epoch_end``: schedules, unfreezing;
* ``before_evaluate(model, target_batches)``: e.g. re-estimate BatchNorm statistics on the target domain,
  and ``after_evaluate(model)`` to undo it before training goes on;
* ``state_dict`` / ``load_state_dict``: whatever a resumed run needs to continue exactly.

Besides the hooks, a strategy may set ``task_weight`` (the classification loss is multiplied by the product of
the strategies' factors: 0 trains their own losses alone), ``saved_with_weights`` (its ``modules()`` belong to the
trained model and are kept in ``best.pt`` too, so that an evaluation rebuilds them), and answer
``aligned_space()`` with the shared embedding space of two modalities that it trains, which evaluation uses for
retrieval, zero-shot and cross-modal transfer metrics (``transmodal.cross_modal``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from transmodal.model import ModelOutput, TransmodalModel

if TYPE_CHECKING:
    from transmodal.cross_modal import AlignedSpace


@dataclass
class ParamGroup:
    """A named set of parameters with a learning-rate scale relative to the optimizer's base rate."""

    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0
    weight_decay: float | None = None  # None: the optimizer's default


@dataclass
class TrainingContext:
    """What a strategy may need to know about the run it is part of."""

    num_classes: int
    steps_per_epoch: int
    total_steps: int
    device: torch.device
    has_unlabelled_target: bool


@dataclass
class StepData:
    """One training step as strategies see it."""

    model: TransmodalModel
    source: dict[str, torch.Tensor]
    source_output: ModelOutput
    step: int  # optimizer steps taken before this one
    progress: float  # step / total_steps, in [0, 1]
    target: dict[str, torch.Tensor] | None = None
    target_output: ModelOutput | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # Detached values a strategy reports about this step, logged as "metric/<strategy>.<name>" and averaged over
    # the epoch like the loss terms, but never added to the loss.
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Strategy:
    """Base class: every hook does nothing, so a strategy overrides only what it changes."""

    name: str = "strategy"
    needs_unlabelled_target: bool = False
    adversarial: bool = False  # trains against a domain discriminator; two at once cannot be combined
    decides_trainable: bool = False  # sets which parameters train (freezing); two such strategies would overrule
    task_weight: float = 1.0  # factor on the classification loss ("task"); 0: this strategy's losses train alone
    saved_with_weights: bool = False  # modules() are part of the trained model: best.pt keeps them
    needs_init_from: bool = False  # refines a trained model: refused without model.init_from

    def check(self, model: TransmodalModel, strategies: list[Strategy]) -> None:
        pass

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        pass

    def reshape_model(self, model: TransmodalModel) -> None:
        """Change the model's layers as training did (inject adapters): a saved model is rebuilt with this
        before its weights are loaded, with no training context (``transmodal.load``, predict, export). A
        strategy whose ``setup`` changes the model's layers does it here, and calls this from ``setup``."""

    def modules(self) -> nn.Module | None:
        return None

    def configure_param_groups(self, groups: list[ParamGroup]) -> list[ParamGroup]:
        return groups

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        return {}

    def on_step_end(self, step: int) -> None:
        pass

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def before_evaluate(self, model: TransmodalModel, target_batches: Iterable[dict[str, torch.Tensor]]) -> None:
        pass

    def after_evaluate(self, model: TransmodalModel) -> None:
        pass

    def aligned_space(self) -> AlignedSpace | None:
        """The shared space in which this strategy aligns two modalities, once set up; None for most strategies."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
