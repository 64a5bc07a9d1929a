"""The core's adaptation strategies: fine-tuning, linear probing and domain-adversarial training."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from transmodal.model import TransmodalModel
from transmodal.strategy import ParamGroup, StepData, Strategy, TrainingContext


class FinetuneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    encoder_lr_scale: float = Field(
        1.0, gt=0.0, description="Learning-rate multiplier for the encoders (below 1 keeps pretrained weights closer)."
    )


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


class DomainDiscriminator(nn.Sequential):
    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )


class DANNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(1.0, ge=0.0, description="Weight of the domain loss.")
    hidden: int = Field(256, ge=1, description="Width of the domain discriminator.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    gamma: float = Field(10.0, gt=0.0, description="Steepness of the reversal coefficient's warm-up.")
    max_coefficient: float = Field(1.0, gt=0.0, description="Reversal coefficient reached at the end of training.")
    delay: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Fraction of training before the domain loss starts (lets the task features form first).",
    )


class DANN(Strategy):
    """Domain-adversarial training (Ganin et al., 2016): a discriminator tells source from target fused
    features through a gradient-reversal layer, so the encoders learn features it cannot tell apart."""

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
        features = torch.cat([step.source_output.features, step.target_output.features])
        logits = self.discriminator(reverse_gradient(features, coefficient)).squeeze(1).float()
        domains = torch.cat([
            logits.new_zeros(step.source_output.features.shape[0]),
            logits.new_ones(step.target_output.features.shape[0]),
        ])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, domains)
        return {"domain": self.params.weight * loss}


def build_dann(params: DANNParams) -> DANN:
    return DANN(params)
