"""Weight regularisers: the ``lambda R(w)`` of the transfer-learning objective min_w sum L(y, f(x; w)) + lambda R(w)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transmodal.builtin.adaptation.groups import match_groups
from transmodal.builtin.adaptation.params import L2Params, L2SPParams
from transmodal.model import TransmodalModel
from transmodal.strategy import ParamGroup, StepData, Strategy, TrainingContext


def squared_norm(parameters: list[nn.Parameter], references: list[torch.Tensor] | None = None) -> torch.Tensor:
    """sum ||p - r||^2 over the (non-empty list of) parameters (r = 0 without references), fused per list."""
    differences = torch._foreach_sub(parameters, references) if references is not None else parameters
    return torch.stack(torch._foreach_norm(differences)).pow(2).sum()


def _unique_parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    seen: set[int] = set()
    parameters = []
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                parameters.append(parameter)
    return parameters


class L2SP(Strategy):
    """L2-SP (Li et al., 2018): alpha/2 * ||w_S - w_S^0||^2 + beta/2 * ||w_new||^2, where w_S are the
    ``pretrained`` groups' weights, w_S^0 their values when training started, and w_new the other groups'.

    The starting weights are saved with the strategy, so a resumed run pulls toward the same point."""

    name = "l2-sp"

    def __init__(self, params: L2SPParams) -> None:
        self.params = params
        self.pretrained: list[nn.Parameter] = []
        self.new: list[nn.Parameter] = []
        self.start: list[torch.Tensor] = []

    def check(self, model: TransmodalModel, strategies: list[Strategy]) -> None:
        match_groups(model, self.params.pretrained, "l2-sp.pretrained")

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        chosen = match_groups(model, self.params.pretrained, "l2-sp.pretrained")
        self.pretrained = _unique_parameters([module for _, module in chosen])
        ids = {id(p) for p in self.pretrained}
        self.new = [p for p in model.parameters() if id(p) not in ids]
        self.start = [p.detach().clone() for p in self.pretrained]

    def configure_param_groups(self, groups: list[ParamGroup]) -> list[ParamGroup]:
        if self.params.disable_weight_decay:
            for group in groups:
                if not group.name.startswith("strategy."):
                    group.weight_decay = 0.0
        return groups

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        terms = {}
        if self.params.alpha > 0 and self.pretrained:
            terms["sp"] = 0.5 * self.params.alpha * squared_norm(self.pretrained, self.start)
        if self.params.beta > 0 and self.new:
            terms["l2"] = 0.5 * self.params.beta * squared_norm(self.new)
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {"start": [tensor.clone() for tensor in self.start]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for tensor, saved in zip(self.start, state["start"], strict=True):
            tensor.copy_(saved)


def build_l2_sp(params: L2SPParams) -> L2SP:
    return L2SP(params)


class L2(Strategy):
    """Plain L2: weight/2 * ||w||^2 over the chosen groups, as a loss term (unlike AdamW's decoupled decay, it
    passes through the optimizer's adaptive scaling, as in the seed's objective)."""

    name = "l2"

    def __init__(self, params: L2Params) -> None:
        self.params = params
        self.parameters: list[nn.Parameter] = []

    def check(self, model: TransmodalModel, strategies: list[Strategy]) -> None:
        match_groups(model, self.params.groups, "l2.groups")

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        self.parameters = _unique_parameters([m for _, m in match_groups(model, self.params.groups, "l2.groups")])

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        if not self.parameters:
            return {}
        return {"l2": 0.5 * self.params.weight * squared_norm(self.parameters)}


def build_l2(params: L2Params) -> L2:
    return L2(params)
