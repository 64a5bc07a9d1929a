"""Validators that score a model without target labels, so none is an oracle.

Each one reads the model's outputs (in eval mode, after strategies such as adabn have prepared the model) through
``ValidationContext.outputs``, which runs the model over a split once for all validators scored together, and
turns them into one number, higher is better.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from transmodal.builtin.adaptation.alignment import entropy
from transmodal.builtin.adaptation.params import (
    DEVParams,
    SNDParams,
    TargetValidatorParams,
)
from transmodal.errors import DataError
from transmodal.validator import (
    SOURCE_TRAIN,
    SOURCE_VAL,
    TARGET,
    ValidationContext,
    Validator,
)


class TargetValidator(Validator):
    """Scores the predictions on unlabelled target samples."""

    needs_unlabelled_target = True
    summary = ""

    def __init__(self, params: TargetValidatorParams) -> None:
        self.params = params

    def describe(self) -> str:
        return f"{self.name} ({self.summary}; no target labels)"

    def score(self, context: ValidationContext) -> float:
        logits = context.outputs(TARGET, self.params.max_samples, self.params.max_batches).logits
        return float(self.score_logits(logits))

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
    """Soft neighbourhood density (Saito et al., ICCV 2021; as in the authors' code): with p_i the
    L2-normalised class probabilities, the similarities s_ij = p_i . p_j / temperature (j != i) go through a
    softmax over j; SND is the mean over i of that distribution's entropy, higher is better. High when samples
    have many close neighbours: dense, well-clustered predictions.

    It also rewards predictions that carry no information. Near-uniform probabilities (an untrained model's)
    all normalise to nearly the same vector, so every neighbour distribution is nearly uniform and SND comes
    close to its maximum log(N - 1), above the log(N / C - 1) of N confident predictions spread evenly over C
    classes. Faithful to the paper, SND is for comparing trained candidates (it tunes hyperparameters there);
    across the epochs of one run it tends to pick the first, least trained one."""
    normalised = F.normalize(probabilities.float(), dim=1)
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

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] < 2:
            raise DataError("snd compares target samples with each other and needs at least 2 of them")
        return soft_neighborhood_density(torch.softmax(logits, dim=1), self.temperature)


def density_ratio(
    source: torch.Tensor, target: torch.Tensor, query: torch.Tensor, l2: float, steps: int
) -> torch.Tensor:
    """Importance weights w(x) = p_target(x) / p_source(x) at ``query`` (float64), from a logistic regression
    that tells target from source features: with d(x) = P(target | x), w = (n_s / n_t) d / (1 - d), which is
    (n_s / n_t) exp(logit). DEV's code fits an MLP and picks its weight decay on held-out accuracy; a linear
    model on standardised features with a fixed L2 penalty is convex, so LBFGS from zero gives the same weights
    every time."""
    with torch.inference_mode(False), torch.enable_grad():  # validators run under inference mode
        features = torch.cat([source, target]).double()
        mean, std = features.mean(dim=0), features.std(dim=0).clamp(min=1e-6)
        features = (features - mean) / std
        is_target = torch.cat([features.new_zeros(len(source)), features.new_ones(len(target))])
        weight = features.new_zeros(features.shape[1], requires_grad=True)
        bias = features.new_zeros((), requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(features @ weight + bias, is_target)
            loss = loss + 0.5 * l2 * weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            logit = ((query.double() - mean) / std) @ weight + bias
    return len(source) / len(target) * logit.exp()


def dev_risk(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """DEV's estimate of the target risk (You et al., 2019, Algorithm 1): the weighted losses L = w l with the
    weights as a control variate (their mean is 1 under the source distribution), mean(L) + eta mean(w) - eta
    with eta = -Cov(L, w) / Var(w). Unbiased like mean(L), with a smaller variance when the weights vary."""
    weighted = weights * losses
    centred = weights - weights.mean()
    variance = centred.square().sum() / (len(weights) - 1)
    covariance = ((weighted - weighted.mean()) * centred).sum() / (len(weights) - 1)
    eta = -covariance / variance if float(variance) > 0 else torch.zeros_like(variance)
    return weighted.mean() + eta * weights.mean() - eta


class DEVValidator(Validator):
    """Deep Embedded Validation (You et al., ICML 2019): the source-validation loss, importance-weighted
    toward the target distribution in the model's feature space, is an estimate of the target loss. The
    density ratio comes from a domain classifier fitted on source (train and val) against target features."""

    name = "dev"
    needs_unlabelled_target = True

    def __init__(self, params: DEVParams) -> None:
        self.params = params
        self.source_samples = params.max_samples

    def describe(self) -> str:
        return "dev (minus the importance-weighted source/val loss, You et al. 2019; no target labels)"

    def score(self, context: ValidationContext) -> float:
        count = self.params.max_samples
        validation = context.outputs(SOURCE_VAL, count)
        if validation.labels is None or len(validation) < 2:
            raise DataError("dev weighs the losses of labelled source/val samples and needs at least 2 of them")
        train, target = context.outputs(SOURCE_TRAIN, count), context.outputs(TARGET, count)
        weights = density_ratio(torch.cat([train.features, validation.features]), target.features,
                                validation.features, self.params.l2, self.params.steps)
        losses = F.cross_entropy(validation.logits, validation.labels, reduction="none").double()
        return -float(dev_risk(losses, weights))


def build_entropy(params: TargetValidatorParams) -> EntropyValidator:
    return EntropyValidator(params)


def build_infomax(params: TargetValidatorParams) -> InfoMaxValidator:
    return InfoMaxValidator(params)


def build_snd(params: SNDParams) -> SNDValidator:
    return SNDValidator(params)


def build_dev(params: DEVParams) -> DEVValidator:
    return DEVValidator(params)
