"""Validators that score a model on unlabelled target data: no target label is read, so none is an oracle.

Each one predicts the unlabelled target samples (in eval mode, after strategies such as adabn have prepared
the model) and turns the class probabilities into one number, higher is better.
"""

from __future__ import annotations

import itertools

import torch

from transmodal.builtin.adaptation.alignment import entropy
from transmodal.builtin.adaptation.params import SNDParams, TargetValidatorParams
from transmodal.errors import DataError
from transmodal.validator import ValidationContext, Validator


def target_logits(context: ValidationContext, max_batches: int | None) -> torch.Tensor:
    """(N, C) float logits of the unlabelled target samples."""
    chunks = []
    for batch in itertools.islice(context.target_batches(), max_batches):
        with context.autocast():
            chunks.append(context.model(batch).logits.float())
    if not chunks:
        raise DataError("the validator scores unlabelled target data, but there was no target batch to score")
    return torch.cat(chunks)


class TargetValidator(Validator):
    needs_unlabelled_target = True
    summary = ""

    def __init__(self, params: TargetValidatorParams) -> None:
        self.params = params

    def describe(self) -> str:
        return f"{self.name} ({self.summary}; no target labels)"

    def score(self, context: ValidationContext) -> float:
        return float(self.score_logits(target_logits(context, self.params.max_batches)))

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EntropyValidator(TargetValidator):
    """Minus the mean prediction entropy on target data (Morerio et al., 2018): confident is better. It can
    be fooled by a model that is confidently wrong, or that collapses onto few classes; infomax guards
    against the latter."""

    name = "entropy"
    summary = "minus the mean entropy of target predictions"

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return -entropy(logits).mean()


class InfoMaxValidator(TargetValidator):
    """Information maximisation: H(mean prediction) - mean H(prediction), the mutual information between
    target inputs and predicted classes. High when each prediction is confident and the classes are used
    evenly."""

    name = "infomax"
    summary = "mutual information of target inputs and predictions"

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        mean_probability = torch.softmax(logits, dim=1).mean(dim=0)
        marginal = -(mean_probability * torch.log(mean_probability.clamp(min=1e-12))).sum()
        return marginal - entropy(logits).mean()


def soft_neighborhood_density(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft neighbourhood density (Saito et al., 2021): with p_i the L2-normalised class probabilities, the
    similarities s_ij = p_i . p_j / temperature (j != i) go through a softmax over j; SND is the mean over i of
    that distribution's entropy. High when samples have many close neighbours: dense, well-clustered
    predictions."""
    normalised = torch.nn.functional.normalize(probabilities.float(), dim=1)
    similarities = normalised @ normalised.T / temperature
    similarities.fill_diagonal_(float("-inf"))
    log_neighbours = torch.log_softmax(similarities, dim=1)
    neighbours = log_neighbours.exp()
    return -(neighbours * log_neighbours.masked_fill(neighbours == 0, 0.0)).sum(dim=1).mean()


class SNDValidator(TargetValidator):
    name = "snd"
    summary = "soft neighbourhood density of target predictions"

    def __init__(self, params: SNDParams) -> None:
        super().__init__(params)
        self.temperature = params.temperature
        self.max_samples = params.max_samples

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(logits[: self.max_samples], dim=1)
        if probabilities.shape[0] < 2:
            raise DataError("snd compares target samples with each other and needs at least 2 of them")
        return soft_neighborhood_density(probabilities, self.temperature)


def build_entropy(params: TargetValidatorParams) -> EntropyValidator:
    return EntropyValidator(params)


def build_infomax(params: TargetValidatorParams) -> InfoMaxValidator:
    return InfoMaxValidator(params)


def build_snd(params: SNDParams) -> SNDValidator:
    return SNDValidator(params)
