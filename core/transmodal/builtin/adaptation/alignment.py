"""Domain alignment on unlabelled target batches: CDAN, MMD, CORAL, entropy minimisation and MCC.

All of them work on the model's fused features (or its predictions), which the trainer computes for source
and target batches in the same step. Each loss weight follows its :class:`WeightSchedule`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transmodal.builtin.adaptation.params import (
    CDANParams,
    CoralParams,
    EntropyMinParams,
    MCCParams,
    MMDParams,
)
from transmodal.builtin.strategies import (
    DomainDiscriminator,
    balanced_mean,
    dann_coefficient,
    domain_loss,
    reverse_gradient,
)
from transmodal.model import TransmodalModel
from transmodal.strategy import StepData, Strategy, TrainingContext


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row's softmax, (B, C) -> (B,)."""
    log_p = torch.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


# -- CDAN -------------------------------------------------------------------------------------------------------


class _CDANModules(nn.Module):
    """The discriminator and, for the randomized map, its fixed random projections (saved, never trained)."""

    def __init__(self, feature_dim: int, num_classes: int, params: CDANParams) -> None:
        super().__init__()
        self.randomized = feature_dim * num_classes > params.max_multilinear_dim
        in_dim = params.randomized_dim if self.randomized else feature_dim * num_classes
        if self.randomized:
            self.register_buffer("feature_projection", torch.randn(feature_dim, params.randomized_dim))
            self.register_buffer("class_projection", torch.randn(num_classes, params.randomized_dim))
        self.discriminator = DomainDiscriminator(in_dim, params.hidden, params.dropout)

    def multilinear(self, features: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """f (x) g flattened, (B, d*C); randomized: (f R_f) * (g R_g) / sqrt(width), (B, width)."""
        if self.randomized:
            width = self.feature_projection.shape[1]
            return (features @ self.feature_projection) * (probabilities @ self.class_projection) / math.sqrt(width)
        return torch.bmm(probabilities.unsqueeze(2), features.unsqueeze(1)).flatten(1)


class CDAN(Strategy):
    """Conditional domain-adversarial training (Long et al., 2018). The discriminator sees the multilinear map
    of the fused features f and the class probabilities g (detached, as in the authors' code), through
    the gradient-reversal layer, so features are aligned class by class rather than only as a whole.
    With ``entropy``, each sample's loss is weighted by 1 + exp(-H(g)), normalised within each domain
    (CDAN+E), so confident predictions count more. The reversal coefficient warms up as in DANN, and the
    paper trains with DANN's recipe: ``optimizer: {name: sgd, lr: 0.01, momentum: 0.9}``, ``schedule: {name:
    annealed}``."""

    name = "cdan"
    needs_unlabelled_target = True
    adversarial = True

    def __init__(self, params: CDANParams) -> None:
        self.params = params
        self.parts: _CDANModules | None = None

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        self.parts = _CDANModules(model.fusion.output_dim, model.num_classes, self.params)

    def modules(self) -> nn.Module | None:
        return self.parts

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        assert step.target_output is not None and self.parts is not None
        weight = self.params.factor(step.progress)
        coefficient = self.params.max_coefficient * dann_coefficient(step.progress, self.params.gamma)
        features = torch.cat([step.source_output.features, step.target_output.features]).float()
        logits = torch.cat([step.source_output.logits, step.target_output.logits]).float().detach()
        probabilities = torch.softmax(logits, dim=1)
        mapped = self.parts.multilinear(reverse_gradient(features, coefficient), probabilities)
        domain_logits = self.parts.discriminator(mapped).squeeze(1).float()
        source_size = step.source_output.features.shape[0]
        losses = domain_loss(domain_logits, source_size)
        if not self.params.entropy:
            return {"domain": weight * balanced_mean(losses, source_size)}
        certainty = 1.0 + torch.exp(-entropy(logits))
        source_w, target_w = certainty[:source_size], certainty[source_size:]
        sample_weights = torch.cat([source_w / source_w.sum(), target_w / target_w.sum()]) / 2.0
        return {"domain": weight * (sample_weights * losses).sum()}


def build_cdan(params: CDANParams) -> CDAN:
    return CDAN(params)


# -- MMD --------------------------------------------------------------------------------------------------------


def mmd(source: torch.Tensor, target: torch.Tensor, kernel: str = "gaussian", kernels: int = 5,
        multiplier: float = 2.0) -> torch.Tensor:
    """Squared maximum mean discrepancy between two batches of features (biased estimate, >= 0, exactly 0 for
    identical batches).

    linear: ||mean(s) - mean(t)||^2. gaussian: mean k(s, s') + mean k(t, t') - 2 mean k(s, t) with
    k(x, y) = sum_i exp(-||x - y||^2 / b_i), the bandwidths b_i = b * multiplier^(i - kernels // 2) spread
    around b, the mean squared distance between the samples of both batches (as in DAN; Long et al., 2015).
    """
    source, target = source.float(), target.float()
    if kernel == "linear":
        return (source.mean(0) - target.mean(0)).pow(2).sum()
    joint = torch.cat([source, target])
    # Centred first: distances do not change, but the expansion below would otherwise cancel catastrophically
    # in float32 when features sit far from zero.
    joint = joint - joint.mean(dim=0, keepdim=True)
    squares = joint.pow(2).sum(dim=1)
    # ||x - y||^2 expanded (cdist's square root has no gradient at the zero diagonal)
    distances = (squares[:, None] + squares[None, :] - 2.0 * joint @ joint.T).clamp(min=0)
    n = joint.shape[0]
    base = distances.detach().sum() / max(1, n * n - n)
    # Floor far above float32's smallest normal: the narrowest bandwidth is base / multiplier^(kernels // 2), and
    # with denormals flushed a tiny base became 0, so identical features gave 0 / 0 = NaN.
    base = base.clamp(min=1e-12)
    k = sum(torch.exp(-distances / (base * multiplier ** (i - kernels // 2))) for i in range(kernels))
    size = source.shape[0]
    return k[:size, :size].mean() + k[size:, size:].mean() - 2.0 * k[:size, size:].mean()


def constant_units(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fraction of feature units that take one value on every row of both batches. At 1 the features have
    collapsed: a constant feature makes MMD and CORAL 0 whatever the inputs, the degenerate minimum that a ReLU
    bottleneck without BatchNorm can fall into under these losses (every unit dead)."""
    features = torch.cat([source, target]).detach()
    return (features.amax(dim=0) == features.amin(dim=0)).float().mean()


class MMD(Strategy):
    """Matches the source and target distributions of fused features by MMD (DAN, Long et al., 2015)."""

    name = "mmd"
    needs_unlabelled_target = True

    def __init__(self, params: MMDParams) -> None:
        self.params = params

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        assert step.target_output is not None
        value = mmd(step.source_output.features, step.target_output.features, self.params.kernel,
                    self.params.kernels, self.params.multiplier)
        step.metrics["constant_units"] = constant_units(step.source_output.features, step.target_output.features)
        return {"mmd": self.params.factor(step.progress) * value}


def build_mmd(params: MMDParams) -> MMD:
    return MMD(params)


# -- CORAL ------------------------------------------------------------------------------------------------------


def covariance(features: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance C = (X - 1 m)^T (X - 1 m) / (n - 1) of X (n, d) with column means m. Centred before
    the product: the one-pass X^T X - n m^T m loses float32 precision when features sit far from zero."""
    centred = features - features.mean(dim=0, keepdim=True)
    return centred.T @ centred / (features.shape[0] - 1)


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL loss (Sun and Saenko, 2016): ||C_S - C_T||_F^2 / (4 d^2), with C the covariance above and d
    the feature width."""
    source, target = source.float(), target.float()
    d = source.shape[1]
    return (covariance(source) - covariance(target)).pow(2).sum() / (4.0 * d * d)


class Coral(Strategy):
    """Aligns the second-order statistics of source and target fused features (Deep CORAL)."""

    name = "coral"
    needs_unlabelled_target = True

    def __init__(self, params: CoralParams) -> None:
        self.params = params

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        assert step.target_output is not None
        value = coral(step.source_output.features, step.target_output.features)
        step.metrics["constant_units"] = constant_units(step.source_output.features, step.target_output.features)
        return {"coral": self.params.factor(step.progress) * value}


def build_coral(params: CoralParams) -> Coral:
    return Coral(params)


# -- entropy minimisation ---------------------------------------------------------------------------------------


class EntropyMin(Strategy):
    """Information maximisation on target predictions, as in SHOT (Liang et al., 2020): the mean entropy of the
    predictions minus ``diversity`` times the entropy of the batch's mean prediction. The first term pushes the
    decision boundary away from dense target regions; alone (``diversity: 0``, Grandvalet and Bengio, 2005) it
    is also minimised by predicting one class for everything, and on a real shift it does collapse so. The
    second term rewards using every class, hence the default of 1 (SHOT's weight)."""

    name = "entropy-min"
    needs_unlabelled_target = True

    def __init__(self, params: EntropyMinParams) -> None:
        self.params = params

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        assert step.target_output is not None
        logits = step.target_output.logits.float()
        loss = entropy(logits).mean()
        if self.params.diversity > 0:
            mean_probability = torch.softmax(logits, dim=1).mean(dim=0)
            marginal = -(mean_probability * torch.log(mean_probability.clamp(min=1e-12))).sum()
            loss = loss - self.params.diversity * marginal
        return {"entropy": self.params.factor(step.progress) * loss}


def build_entropy_min(params: EntropyMinParams) -> EntropyMin:
    return EntropyMin(params)


# -- minimum class confusion ------------------------------------------------------------------------------------


def class_confusion(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """MCC loss (Jin et al., 2020) of a batch of target logits (B, C).

    With P = softmax(Z / T), each sample weighted by W_i proportional to 1 + exp(-H(P_i)) (summing to B, so
    confident samples count more), the class confusion C = P^T diag(W) P is normalised column by column to sum
    to 1; the loss is its off-diagonal mass over the C classes: how often a sample is split between two classes.
    """
    probabilities = torch.softmax(logits.float() / temperature, dim=1)
    # The weights are constants of the step, as in the authors' code: no gradient flows through them.
    certainty = 1.0 + torch.exp(-entropy(logits.float().detach() / temperature))
    weights = certainty * len(certainty) / certainty.sum()
    confusion = probabilities.T @ (weights.unsqueeze(1) * probabilities)
    confusion = confusion / confusion.sum(dim=0, keepdim=True)
    return (confusion.sum() - confusion.trace()) / confusion.shape[0]


class MCC(Strategy):
    """Minimum Class Confusion (Jin et al., ECCV 2020): minimise the confusion between classes in the target
    predictions. It needs no discriminator and, unlike entropy minimisation, is normalised per class, so one
    dominant class does not make the loss small."""

    name = "mcc"
    needs_unlabelled_target = True

    def __init__(self, params: MCCParams) -> None:
        self.params = params

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        assert step.target_output is not None
        value = class_confusion(step.target_output.logits, self.params.temperature)
        return {"confusion": self.params.factor(step.progress) * value}


def build_mcc(params: MCCParams) -> MCC:
    return MCC(params)
