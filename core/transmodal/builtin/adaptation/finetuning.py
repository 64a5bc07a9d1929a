"""The fine-tuning family: which layer groups train, when, and how fast.

Frozen parameters stay in the optimizer (the trainer keeps them there) and simply receive no gradient, so
opening a group later needs no new optimizer; AdamW creates its moments for a parameter on its first update.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from transmodal.builtin.adaptation.groups import (
    first_encoder_groups,
    group_levels,
    match_groups,
    set_trainable,
)
from transmodal.builtin.adaptation.params import (
    FreezeParams,
    GradualUnfreezeParams,
    LayerwiseLRParams,
    LPFTParams,
)
from transmodal.errors import ConfigError
from transmodal.model import TransmodalModel
from transmodal.strategy import ParamGroup, Strategy, TrainingContext


class Freeze(Strategy):
    """Chosen layer groups never train (by name pattern, and/or the first k groups of every encoder)."""

    name = "freeze"
    decides_trainable = True

    def __init__(self, params: FreezeParams) -> None:
        self.params = params
        self.frozen: list[nn.Module] = []

    def _chosen(self, model: TransmodalModel) -> list[tuple[str, nn.Module]]:
        chosen = match_groups(model, self.params.groups, "freeze.groups") if self.params.groups else []
        names = {name for name, _ in chosen}
        chosen += [(n, m) for n, m in first_encoder_groups(model, self.params.first) if n not in names]
        return chosen

    def check(self, model: TransmodalModel, strategies: list[Strategy]) -> None:
        self._chosen(model)

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        self.frozen = [module for _, module in self._chosen(model)]
        for module in self.frozen:
            set_trainable(module, False, self.params.freeze_batchnorm)

    def on_epoch_start(self, epoch: int) -> None:
        if self.params.freeze_batchnorm:  # the trainer has just put the whole model in training mode
            for module in self.frozen:
                module.eval()


def build_freeze(params: FreezeParams) -> Freeze:
    return Freeze(params)


class LPFT(Strategy):
    """Linear probing, then fine-tuning (Kumar et al., 2022): only ``probe_groups`` train for the first
    ``probe_epochs``, so the new head fits the pretrained features before they change; then everything trains.
    The phase depends only on the epoch, which a resumed run restores."""

    name = "lp-ft"
    decides_trainable = True

    def __init__(self, params: LPFTParams) -> None:
        self.params = params
        self.others: list[nn.Module] = []

    def check(self, model: TransmodalModel, strategies: list[Strategy]) -> None:
        match_groups(model, self.params.probe_groups, "lp-ft.probe_groups")

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        epochs = context.total_steps // max(1, context.steps_per_epoch)
        if self.params.probe_epochs >= epochs:
            raise ConfigError(f"lp-ft: probe_epochs={self.params.probe_epochs} leaves none of the {epochs} epochs "
                              f"for fine-tuning; lower probe_epochs or raise trainer.epochs")
        probed = {name for name, _ in match_groups(model, self.params.probe_groups, "lp-ft.probe_groups")}
        self.others = [module for name, module in model.layer_groups() if name not in probed]
        self.on_epoch_start(0)

    def on_epoch_start(self, epoch: int) -> None:
        probing = epoch < self.params.probe_epochs
        for module in self.others:
            set_trainable(module, not probing, self.params.freeze_batchnorm)


def build_lp_ft(params: LPFTParams) -> LPFT:
    return LPFT(params)


class GradualUnfreeze(Strategy):
    """ULMFiT's gradual unfreezing (Howard and Ruder, 2018): at first only the top ``start`` levels train, and
    one more level opens every ``every`` epochs or steps (levels: see ``groups.py``). Which levels are open
    follows from the step count, saved with the strategy so that a resumed run reopens the same ones."""

    name = "gradual-unfreeze"
    decides_trainable = True

    def __init__(self, params: GradualUnfreezeParams) -> None:
        self.params = params
        self.levels: list[list[nn.Module]] = []
        self.interval = 1
        self.step = 0

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        levels = group_levels(model)
        self.levels = [[] for _ in range(max(levels.values()) + 1)]
        for name, module in model.layer_groups():
            self.levels[levels[name]].append(module)
        per_epoch = context.steps_per_epoch if self.params.unit == "epoch" else 1
        self.interval = self.params.every * max(1, per_epoch)
        self._apply()

    def open_levels(self, step: int) -> int:
        """How many levels (from the top) train after ``step`` optimizer steps."""
        return min(len(self.levels), self.params.start + step // self.interval)

    def _apply(self) -> None:
        opened = self.open_levels(self.step)
        for level, modules in enumerate(self.levels):
            for module in modules:
                set_trainable(module, level < opened, self.params.freeze_batchnorm)

    def on_step_end(self, step: int) -> None:
        changed = self.open_levels(step) != self.open_levels(self.step)
        self.step = step
        if changed:
            self._apply()

    def on_epoch_start(self, epoch: int) -> None:
        self._apply()  # the trainer has just put every module in training mode

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self._apply()


def build_gradual_unfreeze(params: GradualUnfreezeParams) -> GradualUnfreeze:
    return GradualUnfreeze(params)


class LayerwiseLR(Strategy):
    """Discriminative learning rates (Howard and Ruder, 2018): the group ``d`` levels below the head trains at
    ``decay**d`` times the rate, so layers near the input, which hold the most general features, move least.
    Multiplies whatever scale earlier strategies set; parameters outside the model's groups get the lowest."""

    name = "layerwise-lr"

    def __init__(self, params: LayerwiseLRParams) -> None:
        self.params = params
        self.levels: dict[str, int] = {}

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        self.levels = group_levels(model)

    def configure_param_groups(self, groups: list[ParamGroup]) -> list[ParamGroup]:
        deepest = max(self.levels.values())
        for group in groups:
            if group.name.startswith("strategy."):
                continue
            group.lr_scale *= self.params.decay ** self.levels.get(group.name, deepest)
        return groups


def build_layerwise_lr(params: LayerwiseLRParams) -> LayerwiseLR:
    return LayerwiseLR(params)
