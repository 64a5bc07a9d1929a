"""LogME, LEEP and H-score against independent implementations of the papers' formulas on small random inputs."""

from __future__ import annotations

import math

import pytest
import torch
from transmodal.errors import DataError
from transmodal.transferability import (
    gaussian_mixture_posteriors,
    hscore,
    kendall_tau,
    ledoit_wolf_shrinkage,
    leep,
    logme,
    logme_details,
)

F64 = torch.float64


def _features(n: int, d: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    features = torch.randn(n, d, generator=generator, dtype=F64)
    features[:, 0] += 1.5 * labels  # some signal, so that the evidence is not flat
    return features, labels


def _log_marginal(features: torch.Tensor, y: torch.Tensor, log_alpha: torch.Tensor,
                  log_beta: torch.Tensor) -> torch.Tensor:
    """The evidence of Bayesian linear regression written as what it is, a Gaussian density: with w ~ N(0, I/alpha)
    and noise ~ N(0, I/beta), y ~ N(0, I/beta + F F^T / alpha). Per sample."""
    n = features.shape[0]
    covariance = torch.eye(n, dtype=F64) / log_beta.exp() + features @ features.T / log_alpha.exp()
    gaussian = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=F64), covariance_matrix=covariance)
    return gaussian.log_prob(y) / n


def _maximum_evidence(features: torch.Tensor, y: torch.Tensor) -> float:
    """max over (alpha, beta) of the Gaussian density above, by L-BFGS on (log alpha, log beta)."""
    point = torch.zeros(2, dtype=F64, requires_grad=True)
    optimiser = torch.optim.LBFGS([point], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = -_log_marginal(features, y, point[0], point[1])
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return float(_log_marginal(features, y, point[0], point[1]))


@pytest.mark.parametrize(("n", "d"), [(60, 8), (24, 40)])  # more samples than features, and fewer
def test_logme_is_the_gaussian_evidence_at_its_alpha_and_beta(n: int, d: int):
    features, labels = _features(n, d, 3, seed=n)
    result = logme_details(features, labels)
    for c in range(3):
        y = (labels == c).to(F64)
        direct = _log_marginal(features, y, torch.tensor(math.log(result.alpha[c])),
                               torch.tensor(math.log(result.beta[c])))
        assert result.evidence[c] == pytest.approx(float(direct), abs=1e-9)
    assert result.score == pytest.approx(sum(result.evidence) / 3, abs=1e-12)  # one-hot per class, averaged
    assert logme(features, labels) == result.score


@pytest.mark.parametrize(("n", "d"), [(60, 8), (24, 40), (50, 5)])
def test_logme_reaches_the_maximum_evidence(n: int, d: int):
    features, labels = _features(n, d, 3, seed=100 + n)
    converged = logme_details(features, labels, max_iterations=5000, tolerance=1e-13)
    published = logme_details(features, labels)  # at most 11 updates, as published
    for c in range(3):
        best = _maximum_evidence(features, (labels == c).to(F64))
        assert converged.evidence[c] == pytest.approx(best, abs=1e-6)
        assert published.evidence[c] <= best + 1e-9
        assert published.evidence[c] == pytest.approx(best, abs=0.02)
    assert max(published.iterations) <= 11


def test_logme_ignores_the_features_scale_and_prefers_informative_features():
    features, labels = _features(80, 6, 4, seed=3)
    # the maximum evidence is scale-free (alpha absorbs the scale); 11 steps from alpha = 1 nearly reach it
    assert logme(features * 1000, labels) == pytest.approx(logme(features, labels), abs=1e-4)
    informative = torch.nn.functional.one_hot(labels, 4).to(F64) + 0.1 * torch.randn(80, 4, dtype=F64)
    noise = torch.randn(80, 4, dtype=F64)
    assert logme(informative, labels) > logme(noise, labels)


def _leep_by_the_formula(probabilities: list[list[float]], labels: list[int]) -> float:
    """Nguyen et al. (2020), equations (1)-(3), with plain Python loops."""
    n, z_count = len(labels), len(probabilities[0])
    target_classes = sorted(set(labels))
    joint = {(y, z): sum(probabilities[i][z] for i in range(n) if labels[i] == y) / n
             for y in target_classes for z in range(z_count)}
    marginal = {z: sum(joint[(y, z)] for y in target_classes) for z in range(z_count)}
    total = 0.0
    for i in range(n):
        eep = sum(joint[(labels[i], z)] / marginal[z] * probabilities[i][z] for z in range(z_count))
        total += math.log(eep)
    return total / n


def test_leep_matches_the_empirical_joint_formula():
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(40, 6, generator=generator, dtype=F64)
    probabilities = torch.softmax(logits, dim=1)
    labels = torch.randint(0, 3, (40,), generator=generator)
    expected = _leep_by_the_formula(probabilities.tolist(), labels.tolist())
    assert leep(probabilities, labels) == pytest.approx(expected, abs=1e-12)
    # labels need not be 0..C-1: classes are whatever values occur
    assert leep(probabilities, labels * 5 + 2) == pytest.approx(expected, abs=1e-12)


def test_leep_is_zero_for_a_source_model_that_already_predicts_the_target():
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    assert leep(torch.nn.functional.one_hot(labels, 3).to(F64), labels) == pytest.approx(0.0, abs=1e-12)
    uniform = torch.full((6, 3), 1 / 3, dtype=F64)  # knows nothing: the log prior of the labels
    assert leep(uniform, labels) == pytest.approx(math.log(1 / 3), abs=1e-12)


def _hscore_by_the_formula(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Bao et al. (2019): tr(cov(f)^-1 cov(E[f|y])), each row of g replaced by its class mean."""
    rows = features.tolist()
    means = {}
    for y in set(labels.tolist()):
        members = [rows[i] for i in range(len(rows)) if labels[i] == y]
        means[y] = [sum(column) / len(members) for column in zip(*members)]
    g = torch.tensor([means[int(y)] for y in labels], dtype=F64)
    cov_f = torch.cov(features.T, correction=0)
    cov_g = torch.cov(g.T, correction=0)
    return float(torch.trace(torch.linalg.inv(cov_f) @ cov_g))


def test_hscore_matches_the_direct_formula():
    features, labels = _features(90, 5, 3, seed=11)
    assert hscore(features, labels) == pytest.approx(_hscore_by_the_formula(features, labels), rel=1e-10)


def test_hscore_shrinkage_is_ledoit_wolf():
    features, labels = _features(30, 12, 3, seed=5)
    centred = features - features.mean(dim=0)
    n, d = centred.shape
    sample = centred.T @ centred / n
    mu = torch.trace(sample) / d
    distance = ((sample - mu * torch.eye(d, dtype=F64)) ** 2).sum()
    spread = sum(((torch.outer(x, x) - sample) ** 2).sum() for x in centred) / n**2
    expected = float(min(spread, distance) / distance)
    assert ledoit_wolf_shrinkage(centred) == pytest.approx(expected, rel=1e-10)
    assert 0.0 < expected < 1.0

    shrunk = (1 - expected) * sample + expected * mu * torch.eye(d, dtype=F64)
    g = torch.stack([centred[labels == y].mean(dim=0) for y in labels.tolist()])
    direct = float(torch.trace(torch.linalg.inv(shrunk) @ (g.T @ g / n)))
    assert hscore(features, labels, shrinkage="ledoit-wolf") == pytest.approx(direct, rel=1e-9)
    assert hscore(features, labels, shrinkage=0.0) == pytest.approx(hscore(features, labels), rel=1e-9)


def test_ledoit_wolf_shrinkage_stays_in_range_where_its_spread_is_zero():
    """Two samples: each centred outer product equals the covariance, so the spread is 0 and the expansion of
    ||x x^T - S||^2 rounds it to either side of 0; the intensity must stay in [0, 1] (rank scores 2 samples)."""
    for seed in range(20):
        features = torch.randn(2, 16, dtype=F64, generator=torch.Generator().manual_seed(seed)) * 100 + 5
        amount = ledoit_wolf_shrinkage(features - features.mean(dim=0))
        assert 0.0 <= amount <= 1e-9
        hscore(features, torch.tensor([0, 1]), shrinkage="ledoit-wolf")


def test_gaussian_mixture_posteriors_find_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(40)
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]], dtype=F64)
    features = centres[labels] + 0.3 * torch.randn(120, 3, generator=generator, dtype=F64)
    posteriors = gaussian_mixture_posteriors(features, 3, seed=0)
    assert posteriors.shape == (120, 3)
    assert torch.allclose(posteriors.sum(dim=1), torch.ones(120, dtype=F64))
    assert leep(posteriors, labels) > -0.01  # each component is one class
    again = gaussian_mixture_posteriors(features, 3, seed=0)
    assert torch.equal(posteriors, again)


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / math.sqrt(3 * 2))  # tau-b with a tie
    assert math.isnan(kendall_tau([1], [2]))


def test_bad_inputs_are_refused():
    features, labels = _features(20, 4, 2, seed=0)
    with pytest.raises(DataError, match="at least 2 classes"):
        logme(features, torch.zeros(20, dtype=torch.int64))
    with pytest.raises(DataError, match="20 feature rows but 19 labels"):
        hscore(features, labels[:19])
    broken = features.clone()
    broken[3, 1] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        logme(broken, labels)
    with pytest.raises(DataError, match="non-negative"):
        leep(-torch.ones(20, 3), labels)
    with pytest.raises(DataError, match=r"\(N, D\)"):
        logme(features[:, 0], labels)
