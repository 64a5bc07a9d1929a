"""AdaBN (Li et al., 2016): evaluate with BatchNorm statistics of the target domain instead of the source's."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn

from transmodal.builtin.adaptation.params import AdaBNParams
from transmodal.domain_norm import batchnorm_layers
from transmodal.errors import ConfigError, DataError
from transmodal.model import TransmodalModel
from transmodal.strategy import Strategy, TrainingContext


class _Moments:
    """Per-channel count, mean and sum of squared deviations of a BatchNorm's input, over every sample and
    position seen. The one-pass sum of squares minus n mean^2 cancels catastrophically in float32 when the
    input sits far from zero; instead each batch's moments are merged as in Chan et al. (1979), about the
    first batch's mean so that the merged means are small and exact."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None  # of the input minus shift
        self.deviations: torch.Tensor | None = None  # sum of (x - mean)^2

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].float()
        dims = [d for d in range(x.dim()) if d != 1]  # every dimension but the channels
        if self.shift is None:
            self.shift = x.mean(dims)
        count = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x - self.shift.view(-1, *[1] * (x.dim() - 2)), dim=dims, correction=0)
        if self.mean is None or self.deviations is None:
            self.count, self.mean, self.deviations = count, mean, var * count
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.deviations = self.deviations + var * count + delta.pow(2) * (self.count * count / total)
        self.count = total

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.shift is not None and self.mean is not None and self.deviations is not None
        return self.shift + self.mean, self.deviations / max(1, self.count - 1)  # unbiased, as BatchNorm keeps


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
        if not batchnorm_layers(model):
            raise ConfigError("adaptation: adabn re-estimates BatchNorm statistics, but this model has no BatchNorm "
                              "layer (with running statistics); remove adabn or use an encoder with BatchNorm")

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        if not context.has_unlabelled_target:
            raise ConfigError("adaptation: adabn needs unlabelled target data to estimate BatchNorm statistics, but "
                              "the dataset provides none; remove adabn or use a dataset with a target split")

    def before_evaluate(self, model: TransmodalModel, target_batches: Iterable[dict[str, torch.Tensor]]) -> None:
        self.after_evaluate(model)  # evaluated twice in a row: start again from the source statistics
        layers = batchnorm_layers(model)
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
        for layer, (mean, var) in zip(batchnorm_layers(model), self.saved):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
        self.saved = None


def build_adabn(params: AdaBNParams) -> AdaBN:
    return AdaBN(params)
