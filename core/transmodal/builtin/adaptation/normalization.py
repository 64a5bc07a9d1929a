"""AdaBN (Li et al., 2016): evaluate with BatchNorm statistics of the target domain instead of the source's."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn

from transmodal.builtin.adaptation.params import AdaBNParams
from transmodal.errors import ConfigError, DataError
from transmodal.model import TransmodalModel
from transmodal.strategy import Strategy, TrainingContext


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class _Moments:
    """Per-channel sum and sum of squares of a BatchNorm's input, over every sample and position seen."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].float()
        dims = [d for d in range(x.dim()) if d != 1]  # every dimension but the channels
        total, squares = x.sum(dims), x.pow(2).sum(dims)
        self.count += x.numel() // x.shape[1]
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.total is not None and self.squares is not None
        mean = self.total / self.count
        var = (self.squares - self.count * mean.pow(2)) / max(1, self.count - 1)  # unbiased, as BatchNorm keeps
        return mean, var.clamp(min=0)


class AdaBN(Strategy):
    """Before each evaluation, every BatchNorm's running mean and variance become the mean and (unbiased)
    variance of its input over the unlabelled target samples; after it, the source statistics come back so
    that training goes on unchanged. The target pass normalises each batch by its own statistics, as training
    does, so a layer's input statistics are those of the target domain all the way down; with the whole
    target set in one batch they are exact at every layer. The validator scores, and ``best.pt`` is chosen,
    with the target statistics in place.
    """

    name = "adabn"

    def __init__(self, params: AdaBNParams) -> None:
        self.params = params
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def check(self, model: TransmodalModel, strategies: list[Strategy]) -> None:
        if not batchnorms(model):
            raise ConfigError("adaptation: adabn re-estimates BatchNorm statistics, but this model has no BatchNorm "
                              "layer (with running statistics); remove adabn or use an encoder with BatchNorm")

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        if not context.has_unlabelled_target:
            raise ConfigError("adaptation: adabn needs unlabelled target data to estimate BatchNorm statistics, but "
                              "the dataset provides none; remove adabn or use a dataset with a target split")

    def before_evaluate(self, model: TransmodalModel, target_batches: Iterable[dict[str, torch.Tensor]]) -> None:
        self.after_evaluate(model)  # evaluated twice in a row: start again from the source statistics
        layers = batchnorms(model)
        moments = [_Moments() for _ in layers]
        handles = [layer.register_forward_pre_hook(m) for layer, m in zip(layers, moments)]
        self.saved = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]
        tracked = [layer.num_batches_tracked.clone() for layer in layers]
        try:
            for layer in layers:
                layer.train()
            with torch.no_grad():
                for batch in itertools.islice(target_batches, self.params.max_batches):
                    model(batch)
        finally:
            for handle in handles:
                handle.remove()
            for layer in layers:
                layer.eval()
        if moments and moments[0].count == 0:
            raise DataError("adabn: the unlabelled target data gave no batch to estimate statistics from")
        for layer, moment, count in zip(layers, moments, tracked):
            mean, var = moment.mean_var()
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            layer.num_batches_tracked.copy_(count)

    def after_evaluate(self, model: TransmodalModel) -> None:
        if self.saved is None:
            return
        for layer, (mean, var) in zip(batchnorms(model), self.saved):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
        self.saved = None


def build_adabn(params: AdaBNParams) -> AdaBN:
    return AdaBN(params)
