"""The core's adaptation strategies: fine-tuning, linear probing and domain-adversarial training."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel
from torch import nn

from transmodal.builtin.params import DANNParams, FinetuneParams
from transmodal.model import TransmodalModel
from transmodal.strategy import ParamGroup, StepData, Strategy, TrainingContext


class Finetune(Strategy):
    """Everything trains; encoders optionally at a smaller learning rate than fusion and head."""

    name = "finetune"

    def __init__(self, params: FinetuneParams) -> None:
        self.encoder_lr_scale = params.encoder_lr_scale

    def configure_param_groups(self, groups: list[ParamGroup]) -> list[ParamGroup]:
        for group in groups:
            if group.name.startswith("encoders."):
                group.lr_scale *= self.encoder_lr_scale
        return groups


def build_finetune(params: FinetuneParams) -> Finetune:
    return Finetune(params)


class LinearProbe(Strategy):
    """Encoders frozen, BatchNorm statistics included; only fusion and head train."""

    name = "linear-probe"
    decides_trainable = True

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        self.encoders = model.encoders
        for parameter in self.encoders.parameters():
            parameter.requires_grad_(False)

    def on_epoch_start(self, epoch: int) -> None:
        # The trainer puts the model in training mode each epoch; frozen encoders stay in eval mode so
        # their BatchNorm running statistics stay those of pretraining.
        self.encoders.eval()


def build_linear_probe(params: BaseModel) -> LinearProbe:
    return LinearProbe()


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * grad_output, None


def reverse_gradient(inputs: torch.Tensor, coefficient: float) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-coefficient`` backward (Ganin and Lempitsky, 2015)."""
    return _ReverseGradient.apply(inputs, coefficient)


def dann_coefficient(progress: float, gamma: float) -> float:
    """The usual warm-up of the reversal coefficient: 2 / (1 + exp(-gamma * p)) - 1, from 0 towards 1."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def domain_loss(logits: torch.Tensor, source_size: int) -> torch.Tensor:
    """Per sample, the discriminator's binary cross-entropy for its domain: source rows first (0), then target
    rows (1)."""
    domains = torch.cat([logits.new_zeros(source_size), logits.new_ones(logits.shape[0] - source_size)])
    return nn.functional.binary_cross_entropy_with_logits(logits, domains, reduction="none")


def balanced_mean(losses: torch.Tensor, source_size: int) -> torch.Tensor:
    """1/2 (mean over the source rows + mean over the target rows): each domain weighs the same whatever the size
    of its batch (``trainer.target_batch_size``), as in Ganin et al. (2016) and the reference implementations."""
    return 0.5 * (losses[:source_size].mean() + losses[source_size:].mean())


class DomainDiscriminator(nn.Sequential):
    """x -> hidden -> hidden -> 1 with ReLU and dropout: the domain classifier of Ganin et al. (2016) for their
    large networks (x -> 1024 -> 1024, dropout 0.5 in the authors' model), which CDAN (Long et al., 2018) reuses.
    No BatchNorm: TLlib's DomainDiscriminator has BatchNorm *instead of* dropout by default (one or the other,
    never both); we follow the papers' own code, which uses dropout."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )


class DANN(Strategy):
    """Domain-adversarial training (Ganin et al., 2016, JMLR): a discriminator tells source from target fused
    features through a gradient-reversal layer, so the encoders learn features it cannot tell apart. The
    reversal coefficient rises as 2 / (1 + exp(-gamma p)) - 1 over training progress p (gamma = 10).

    The paper's recipe around it is the experiment's, not the strategy's: ``optimizer: {name: sgd, lr: 0.01,
    momentum: 0.9}`` and ``schedule: {name: annealed}`` (lr / (1 + 10 p)^0.75).

    ``delay`` holds the coefficient at 0 while the discriminator already trains, as the warm-up itself does at
    p = 0: when the encoders start receiving its reversed gradient, it is a trained discriminator's, not a
    random one's."""

    name = "dann"
    needs_unlabelled_target = True
    adversarial = True

    def __init__(self, params: DANNParams) -> None:
        self.params = params
        self.discriminator: DomainDiscriminator | None = None

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        self.discriminator = DomainDiscriminator(model.fusion.output_dim, self.params.hidden, self.params.dropout)

    def modules(self) -> nn.Module | None:
        return self.discriminator

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        assert step.target_output is not None and self.discriminator is not None
        delay = self.params.delay
        ramp = max(0.0, step.progress - delay) / (1.0 - delay)
        coefficient = self.params.max_coefficient * dann_coefficient(ramp, self.params.gamma)
        source_size = step.source_output.features.shape[0]
        features = torch.cat([step.source_output.features, step.target_output.features])
        logits = self.discriminator(reverse_gradient(features, coefficient)).squeeze(1).float()
        loss = balanced_mean(domain_loss(logits, source_size), source_size)
        return {"domain": self.params.weight * loss}


def build_dann(params: DANNParams) -> DANN:
    return DANN(params)
