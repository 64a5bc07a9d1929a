"""Transferability scores: how well a model's features (or its predictions) fit a labelled target task, measured
without fine-tuning. Torch only; every score is computed in float64 on the CPU.

- :func:`logme`: LogME, the log of the maximum evidence of a Bayesian linear model on the features
  (You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021).
- :func:`leep`: LEEP, the log expected empirical prediction of a source model's class probabilities
  (Nguyen, Hassner, Seeger and Archambeau, "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020). :func:`gaussian_mixture_posteriors` gives the stand-in for source classes when
  a model has no classifier of its own (N-LEEP: Li et al., "Ranking Neural Checkpoints", CVPR 2021).
- :func:`hscore`: H-score, tr(cov(f)^-1 cov(E[f|y])) (Bao, Li, Huang, Ye and Zheng, "An Information-Theoretic
  Approach to Transferability in Task Transfer Learning", ICIP 2019), optionally with the covariance shrunk
  towards a multiple of the identity (Ledoit and Wolf, 2004), as Ibrahim, Ponomareva and Mazumder recommend
  ("Newer is not always better: Rethinking transferability metrics, their peculiarities, stability and
  performance", ECML PKDD 2022).

Higher is better for all three; LogME and LEEP are per-sample log-likelihoods (at most 0 for LEEP), H-score is
non-negative and grows with the feature width, so only scores of one task are comparable with each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from transmodal.errors import DataError

# The published defaults of LogME's fixed-point iteration: alpha = beta = 1 to start, at most 11 updates, stopped
# once alpha / beta changes by less than 1e-3 of itself.
LOGME_MAX_ITERATIONS = 11
LOGME_TOLERANCE = 1e-3
# N-LEEP's reduction: principal components that keep this share of the features' variance.
NLEEP_VARIANCE = 0.8
# Gaussian components per target class for N-LEEP's stand-in source classes.
NLEEP_COMPONENTS_PER_CLASS = 5

_TINY = 1e-12


def _check(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if features.dim() != 2:
        raise DataError(f"features must be (N, D), got shape {tuple(features.shape)}")
    labels = labels.reshape(-1).to(torch.int64).cpu()
    if labels.numel() != features.shape[0]:
        raise DataError(f"{features.shape[0]} feature rows but {labels.numel()} labels")
    if labels.numel() and int(labels.min()) < 0:
        raise DataError("labels must be class indices (>= 0)")
    features = features.detach().to("cpu", torch.float64)
    if not torch.isfinite(features).all():
        raise DataError("the features contain NaN or infinite values; the encoder's output cannot be scored")
    return features, labels


def _dense_labels(labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The labels renumbered 0..C-1 over the classes present (a class absent from the sample has nothing to fit)."""
    present, dense = torch.unique(labels, return_inverse=True)
    if len(present) < 2:
        raise DataError(f"scoring needs samples of at least 2 classes; these are all of class {present.tolist()}")
    return dense, len(present)


# -- LogME ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogMEResult:
    score: float  # the mean over classes of the per-sample maximum log evidence
    evidence: list[float]  # per class present, divided by N
    alpha: list[float]  # prior precision of the weights, per class
    beta: list[float]  # precision of the observation noise, per class
    iterations: list[int]


def logme(features: torch.Tensor, labels: torch.Tensor, max_iterations: int = LOGME_MAX_ITERATIONS,
          tolerance: float = LOGME_TOLERANCE) -> float:
    """LogME (You et al., ICML 2021): for each class c, the target y = 1[label == c] is modelled as
    y = F w + noise, with w ~ N(0, alpha^-1 I) and noise ~ N(0, beta^-1 I); alpha and beta are chosen to maximise
    the evidence p(y | F, alpha, beta), whose logarithm divided by N is averaged over the classes. Higher: the
    features explain the labels linearly with less capacity.

    The maximisation is the paper's fixed-point iteration (MacKay's updates): with gamma = sum_i beta s_i /
    (alpha + beta s_i) over the eigenvalues s_i of F^T F and the posterior mean m, alpha <- gamma / m^T m and
    beta <- (N - gamma) / ||F m - y||^2, computed on one SVD of F, from alpha = beta = 1, at most
    ``max_iterations`` (11) updates, until alpha / beta moves by less than ``tolerance`` (1e-3) relatively. The
    evidence is evaluated at the final (alpha, beta) with its exact log-determinant: log|alpha I + beta F^T F|
    counts alpha for each of the D - rank(F) zero eigenvalues, which matters when N < D.
    """
    return logme_details(features, labels, max_iterations, tolerance).score


def logme_details(features: torch.Tensor, labels: torch.Tensor, max_iterations: int = LOGME_MAX_ITERATIONS,
                  tolerance: float = LOGME_TOLERANCE) -> LogMEResult:
    """:func:`logme` with the per-class evidence and the (alpha, beta) each class settled at."""
    features, labels = _check(features, labels)
    dense, classes = _dense_labels(labels)
    n, d = features.shape
    u, s, _ = torch.linalg.svd(features, full_matrices=False)
    keep = s > s.max().clamp(min=_TINY) * max(n, d) * torch.finfo(torch.float64).eps
    u, sigma = u[:, keep], s[keep] ** 2  # sigma: the nonzero eigenvalues of F^T F
    rank = int(keep.sum())
    evidences, alphas, betas, iterations = [], [], [], []
    for c in range(classes):
        y = (dense == c).to(torch.float64)
        x2 = (u.T @ y) ** 2  # y's energy along each left singular vector
        outside = float((y @ y) - x2.sum())  # what no weight vector can fit: y's part outside F's column space
        alpha, beta, steps = 1.0, 1.0, 0
        for steps in range(1, max_iterations + 1):
            t = alpha / beta
            gamma, m2, res2 = _logme_terms(sigma, x2, outside, t)
            alpha, beta = gamma / max(m2, _TINY), (n - gamma) / max(res2, _TINY)
            if abs(alpha / beta - t) / t <= tolerance:
                break
        _, m2, res2 = _logme_terms(sigma, x2, outside, alpha / beta)
        log_det = float(torch.log(alpha + beta * sigma).sum()) + (d - rank) * math.log(alpha)
        evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - log_det / 2 - beta / 2 * res2
                    - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
        evidences.append(evidence / n)
        alphas.append(alpha)
        betas.append(beta)
        iterations.append(steps)
    return LogMEResult(sum(evidences) / classes, evidences, alphas, betas, iterations)


def _logme_terms(sigma: torch.Tensor, x2: torch.Tensor, outside: float, t: float) -> tuple[float, float, float]:
    """At alpha / beta = t: gamma (the effective number of parameters), ||m||^2 and ||F m - y||^2, where
    m = (F^T F + t I)^-1 F^T y is the posterior mean, all from F's singular values."""
    gamma = float((sigma / (sigma + t)).sum())
    m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
    res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + max(outside, 0.0)
    return gamma, m2, res2


# -- LEEP -----------------------------------------------------------------------------------------------------


def leep(source_probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """LEEP (Nguyen et al., ICML 2020): with theta(x)_z the source model's probability of its own class z for a
    target sample x, the empirical joint P(y, z) = (1/N) sum_{i: y_i = y} theta(x_i)_z, the conditional
    P(y | z) = P(y, z) / P(z), and LEEP = (1/N) sum_i log sum_z P(y_i | z) theta(x_i)_z: the mean log-likelihood
    of the "expected empirical predictor", which relabels the source classes as target classes. At most 0;
    higher is better.
    """
    probabilities, labels = _check(source_probabilities, labels)
    if (probabilities < 0).any():
        raise DataError("source probabilities must be non-negative (softmax outputs)")
    totals = probabilities.sum(dim=1, keepdim=True)
    if (totals <= 0).any():
        raise DataError("every row of source probabilities must have a positive sum")
    probabilities = probabilities / totals
    dense, classes = _dense_labels(labels)
    n = probabilities.shape[0]
    joint = torch.zeros(classes, probabilities.shape[1], dtype=torch.float64).index_add_(0, dense, probabilities) / n
    marginal = joint.sum(dim=0, keepdim=True)
    conditional = joint / marginal.clamp(min=_TINY)  # (C, Z): P(y | z); a source class no sample reaches is 0
    expected = (probabilities @ conditional.T).gather(1, dense.view(-1, 1)).squeeze(1)
    return float(expected.clamp(min=_TINY).log().mean())


def gaussian_mixture_posteriors(features: torch.Tensor, components: int, seed: int = 0,
                                variance: float = NLEEP_VARIANCE, iterations: int = 100) -> torch.Tensor:
    """Soft "source classes" for a model without a classifier of its own, as N-LEEP defines them (Li et al.,
    CVPR 2021): the features are reduced to the principal components that keep ``variance`` of their variance,
    a Gaussian mixture of ``components`` components is fitted to them, and each sample's posterior over the
    components plays theta(x) in :func:`leep`. The mixture here has diagonal covariances (the components are
    decorrelated by the PCA), is seeded by k-means++ from ``seed`` and runs ``iterations`` EM steps (fewer once
    the log-likelihood stops improving). Returns (N, components) probabilities.
    """
    x = features.detach().to("cpu", torch.float64)
    n = x.shape[0]
    components = max(1, min(components, n))
    x = x - x.mean(dim=0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    energy = s**2
    if float(energy.sum()) <= _TINY:  # constant features: one undivided class
        return torch.full((n, components), 1.0 / components, dtype=torch.float64)
    share = energy.cumsum(0) / energy.sum()
    keep = int((share < variance).sum()) + 1
    z = x @ vh[:keep].T
    z = z / z.std(dim=0).clamp(min=_TINY).max()  # one scale for all: EM's variance floor is then meaningful
    generator = torch.Generator().manual_seed(seed)
    means = _kmeans_plus_plus(z, components, generator)
    floor = 1e-6 * float(z.var(dim=0).mean()) + _TINY
    variances = z.var(dim=0, keepdim=True).expand(components, -1).clone() + floor
    weights = torch.full((components,), 1.0 / components, dtype=torch.float64)
    previous = -math.inf
    for _ in range(iterations):
        log_resp = _log_gaussians(z, means, variances) + weights.clamp(min=_TINY).log()
        log_likelihood = torch.logsumexp(log_resp, dim=1)
        responsibilities = (log_resp - log_likelihood.unsqueeze(1)).exp()
        mean_log_likelihood = float(log_likelihood.mean())
        counts = responsibilities.sum(dim=0) + 10 * torch.finfo(torch.float64).eps
        weights = counts / n
        means = (responsibilities.T @ z) / counts.unsqueeze(1)
        variances = (responsibilities.T @ z**2) / counts.unsqueeze(1) - means**2 + floor
        variances = variances.clamp(min=floor)
        if mean_log_likelihood - previous < 1e-6:
            break
        previous = mean_log_likelihood
    log_resp = _log_gaussians(z, means, variances) + weights.clamp(min=_TINY).log()
    return torch.softmax(log_resp, dim=1)


def _log_gaussians(z: torch.Tensor, means: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """(N, K): log N(z_i; mean_k, diag(variance_k))."""
    precision = 1.0 / variances
    squared = (z**2) @ precision.T - 2 * z @ (means * precision).T + (means**2 * precision).sum(dim=1)
    return -0.5 * (squared + variances.log().sum(dim=1) + z.shape[1] * math.log(2 * math.pi))


def _kmeans_plus_plus(z: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    first = int(torch.randint(z.shape[0], (1,), generator=generator))
    centres = [z[first]]
    distance = ((z - z[first]) ** 2).sum(dim=1)
    for _ in range(1, k):
        total = float(distance.sum())
        if total <= 0:  # fewer distinct points than components
            index = int(torch.randint(z.shape[0], (1,), generator=generator))
        else:
            index = int(torch.multinomial(distance / total, 1, generator=generator))
        centres.append(z[index])
        distance = torch.minimum(distance, ((z - z[index]) ** 2).sum(dim=1))
    return torch.stack(centres)


# -- H-score --------------------------------------------------------------------------------------------------


def hscore(features: torch.Tensor, labels: torch.Tensor,
           shrinkage: Literal["none", "ledoit-wolf"] | float = "none") -> float:
    """H-score (Bao et al., ICIP 2019): tr(cov(f)^-1 cov(E[f | y])), the features' between-class covariance
    measured in the metric of their total covariance, with covariances over the N samples (divided by N). With
    ``shrinkage="none"`` (the paper's formula) cov(f)^-1 is the Moore-Penrose pseudo-inverse, so that redundant
    feature directions count once; with ``"ledoit-wolf"`` cov(f) is first shrunk to (1 - l) cov(f) + l (tr cov(f)
    / D) I with Ledoit and Wolf's (2004) estimate of l, the regularised H-score Ibrahim et al. (2022) found more
    stable when D is large next to N; a float sets l itself (0 to 1).
    """
    features, labels = _check(features, labels)
    dense, classes = _dense_labels(labels)
    n, d = features.shape
    centred = features - features.mean(dim=0)
    covariance = centred.T @ centred / n
    counts = torch.bincount(dense, minlength=classes).to(torch.float64)
    class_means = torch.zeros(classes, d, dtype=torch.float64).index_add_(0, dense, centred) / counts.unsqueeze(1)
    between = (class_means.T * counts) @ class_means / n  # cov(E[f | y]) over the samples
    if shrinkage == "none":
        inverse = torch.linalg.pinv(covariance, hermitian=True)
    else:
        amount = ledoit_wolf_shrinkage(centred) if shrinkage == "ledoit-wolf" else float(shrinkage)
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"shrinkage must be 'none', 'ledoit-wolf' or between 0 and 1, got {shrinkage!r}")
        target = torch.trace(covariance) / d
        shrunk = (1 - amount) * covariance + amount * target * torch.eye(d, dtype=torch.float64)
        inverse = torch.linalg.pinv(shrunk, hermitian=True)
    return float(torch.trace(inverse @ between))


def ledoit_wolf_shrinkage(centred: torch.Tensor) -> float:
    """Ledoit and Wolf's (2004) shrinkage intensity towards mu I for the covariance of centred rows (N, D):
    min(b^2, d^2) / d^2 with d^2 = ||S - mu I||_F^2 and b^2 = (1 / N^2) sum_i ||x_i x_i^T - S||_F^2, where
    ||x x^T - S||_F^2 = ||x||^4 - 2 x^T S x + ||S||_F^2 avoids forming the N outer products."""
    x = centred.to(torch.float64)
    n, d = x.shape
    covariance = x.T @ x / n
    mu = torch.trace(covariance) / d
    distance = float(((covariance - mu * torch.eye(d, dtype=torch.float64)) ** 2).sum())
    if distance <= _TINY:
        return 0.0
    norms = (x**2).sum(dim=1)
    spread = float((norms**2 - 2 * ((x @ covariance) * x).sum(dim=1) + (covariance**2).sum()).sum()) / n**2
    return min(max(spread, 0.0), distance) / distance  # the expansion can round a zero spread to just below it


# -- comparing rankings ---------------------------------------------------------------------------------------


def kendall_tau(first: list[float], second: list[float]) -> float:
    """Kendall's tau-b between two lists of scores of the same items: (concordant - discordant) pairs over the
    geometric mean of the pairs untied in each list; 1 for the same order, -1 for the reverse. NaN when either
    list has no untied pair (fewer than two items, or all equal)."""
    if len(first) != len(second):
        raise ValueError(f"kendall_tau needs two lists of equal length, got {len(first)} and {len(second)}")
    concordant = discordant = untied_first = untied_second = 0
    for i in range(len(first)):
        for j in range(i + 1, len(first)):
            a = (first[i] > first[j]) - (first[i] < first[j])
            b = (second[i] > second[j]) - (second[i] < second[j])
            untied_first += a != 0
            untied_second += b != 0
            concordant += a * b > 0
            discordant += a * b < 0
    if untied_first == 0 or untied_second == 0:
        return math.nan
    return (concordant - discordant) / math.sqrt(untied_first * untied_second)
