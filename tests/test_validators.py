"""Validators that pick checkpoints without target labels: their values, and their use in a run."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

import transmodal
from transmodal.builtin.adaptation.validators import density_ratio, dev_risk, soft_neighborhood_density
from transmodal.errors import ConfigError
from transmodal.plugins import get_plugins
from transmodal.selection import panel_choices
from transmodal.validator import ValidationContext


class FixedLogits(torch.nn.Module):
    """Stands in for a model: returns the logits stored in each batch."""

    def forward(self, batch):
        return transmodal.ModelOutput(batch["logits"], batch["logits"])


def score(name: str, logits: torch.Tensor, batch_size: int = 2, **params) -> float:
    validator = get_plugins().get("validator", name).build(**params)
    assert validator.needs_unlabelled_target and not validator.oracle
    context = ValidationContext(
        model=FixedLogits(), metrics={}, target_batches=lambda: iter({"logits": c} for c in logits.split(batch_size)),
        autocast=contextlib.nullcontext,
    )
    return validator.score(context)


CONFIDENT = torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]])
UNSURE = torch.tensor([[0.3, 0.0, 0.1], [0.0, 0.2, 0.1], [0.1, 0.1, 0.0], [0.2, 0.0, 0.0]])
COLLAPSED = torch.tensor([[9.0, 0.0, 0.0]] * 4)


def test_entropy_prefers_confident_predictions():
    assert score("entropy", torch.zeros(4, 3)) == pytest.approx(-math.log(3))
    assert score("entropy", CONFIDENT) > score("entropy", UNSURE)
    assert score("entropy", COLLAPSED) == pytest.approx(score("entropy", CONFIDENT), abs=1e-6)


def test_infomax_also_wants_the_classes_used():
    # Confident and balanced: H(mean) - mean H is close to log 3; collapsed onto one class: close to 0.
    p = torch.softmax(CONFIDENT, 1)
    mean = p.mean(0)
    expected = float(-(mean * mean.log()).sum() + (p * p.log()).sum(1).mean())
    assert score("infomax", CONFIDENT) == pytest.approx(expected, rel=1e-5)
    assert score("infomax", COLLAPSED) == pytest.approx(0.0, abs=1e-3)
    assert score("infomax", CONFIDENT) > score("infomax", UNSURE)


def test_snd_matches_its_definition_and_rewards_dense_neighbourhoods():
    # Three samples: two identical, one orthogonal. Normalised probabilities p1 = p2 = e1, p3 = e2; with
    # temperature 1 the neighbour softmax of sample 1 is over (s12, s13) = (1, 0), etc.
    probabilities = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    a = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    h = -(a * a.log()).sum()
    expected = (2 * h + math.log(2)) / 3  # sample 3 sees two equally (un)similar neighbours
    assert float(soft_neighborhood_density(probabilities, 1.0)) == pytest.approx(float(expected), rel=1e-5)
    e = torch.eye(3)
    one_cluster = e[[0] * 6]  # every sample has 5 close neighbours
    two_clusters = e[[0, 0, 0, 1, 1, 1]]  # 2 close neighbours each
    three_pairs = e[[0, 0, 1, 1, 2, 2]]  # 1 close neighbour each
    densities = [float(soft_neighborhood_density(p, 0.05)) for p in (one_cluster, two_clusters, three_pairs)]
    assert densities == sorted(densities, reverse=True) and densities[0] == pytest.approx(math.log(5))
    assert score("snd", CONFIDENT, max_samples=3) == pytest.approx(
        float(soft_neighborhood_density(torch.softmax(CONFIDENT[:3], 1), 0.05)), rel=1e-5)


def test_snd_on_a_hand_computed_example():
    # Cosines of the normalised rows: (1, 2) 0.98315, (1, 3) 0.28476, (2, 3) 0.30853. Over 0.05, samples 1 and 2
    # are each other's neighbour with probability 1 - 9e-7 and 1 - 1.4e-6 (entropies 1.29e-5 and 2.00e-5);
    # sample 3 splits (0.3833, 0.6167) between them (entropy 0.66568). SND is the mean: 0.22190.
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    assert float(soft_neighborhood_density(probabilities, 0.05)) == pytest.approx(0.2219028, rel=1e-5)


def test_snd_prefers_near_uniform_predictions_as_the_papers_formula_does():
    """Why snd picks the first epoch: an untrained model's near-uniform predictions all normalise to nearly the
    same vector, so each sample's neighbour distribution is nearly uniform over the N - 1 others: SND near its
    maximum log(N - 1). Confident predictions spread evenly over C classes score about log(N / C - 1)."""
    generator = torch.Generator().manual_seed(0)
    n, classes = 30, 3
    near_uniform = torch.softmax(0.05 * torch.randn(n, classes, generator=generator), 1)
    confident = torch.softmax(12.0 * torch.eye(classes)[torch.arange(n) % classes], 1)
    uniform_snd = float(soft_neighborhood_density(near_uniform, 0.05))
    confident_snd = float(soft_neighborhood_density(confident, 0.05))
    assert uniform_snd == pytest.approx(math.log(n - 1), abs=1e-3)
    assert confident_snd == pytest.approx(math.log(n / classes - 1), abs=1e-3)
    assert uniform_snd > confident_snd


def paper_dev_risk(weights: list[float], losses: list[float]) -> float:
    """You et al. (2019), Algorithm 1, written out: L = w l; eta = -Cov(L, w) / Var(w); mean(L) + eta mean(w) - eta."""
    n = len(weights)
    weighted = [w * l for w, l in zip(weights, losses)]
    mean_weighted, mean_weight = sum(weighted) / n, sum(weights) / n
    covariance = sum((a - mean_weighted) * (w - mean_weight) for a, w in zip(weighted, weights)) / (n - 1)
    variance = sum((w - mean_weight) ** 2 for w in weights) / (n - 1)
    eta = -covariance / variance
    return mean_weighted + eta * mean_weight - eta


def test_dev_risk_is_the_papers_control_variate_estimate():
    weights, losses = [0.5, 1.0, 2.0, 0.5, 1.5, 0.2], [1.0, 0.2, 0.4, 2.0, 0.1, 3.0]
    risk = dev_risk(torch.tensor(losses, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64))
    assert float(risk) == pytest.approx(paper_dev_risk(weights, losses), rel=1e-12)
    # Equal weights carry no information on the shift: the estimate is the plain weighted mean.
    assert float(dev_risk(torch.tensor(losses), torch.full((6,), 2.0))) == pytest.approx(2 * sum(losses) / 6)


def test_density_ratio_recovers_a_known_ratio():
    # Source N(0, 1) and target N(1, 1) in one dimension: p_t(x) / p_s(x) = exp(x - 1/2), log-linear in x, so
    # a logistic regression can represent it exactly.
    generator = torch.Generator().manual_seed(0)
    source, target = torch.randn(6000, 1, generator=generator), torch.randn(3000, 1, generator=generator) + 1.0
    query = torch.tensor([[-1.0], [0.0], [1.0], [2.0]])
    with torch.inference_mode():  # as validators run
        weights = density_ratio(source, target, query, l2=1e-4, steps=100)
    assert weights.tolist() == pytest.approx(torch.exp(query[:, 0] - 0.5).tolist(), rel=0.05)


class FixedOutputs(torch.nn.Module):
    """Stands in for a model: returns the logits and features stored in each batch, and counts its calls."""

    calls = 0

    def forward(self, batch):
        self.calls += 1
        return transmodal.ModelOutput(batch["logits"], batch["features"])


def batches(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None = None, size: int = 50):
    columns = {"features": features, "logits": logits, **({"label": labels} if labels is not None else {})}
    count = features.shape[0]
    return lambda: iter({k: v[i : i + size] for k, v in columns.items()} for i in range(0, count, size))


def shifted_domains():
    """Source samples in two clusters, A (x near 0, predicted right) and B (x near 3, predicted wrong); the
    target has only B. Source-val loss averages A and B; the target loss is B's."""
    generator = torch.Generator().manual_seed(0)

    def cluster(centre: float, count: int) -> torch.Tensor:
        return centre + 0.5 * torch.randn(count, 2, generator=generator)

    def logits(right: bool, count: int) -> torch.Tensor:
        return torch.tensor([[2.0, 0.0]] if right else [[0.0, 1.0]]).repeat(count, 1)

    train = torch.cat([cluster(0.0, 200), cluster(3.0, 200)])
    val = torch.cat([cluster(0.0, 200), cluster(3.0, 200)])
    val_logits, val_labels = torch.cat([logits(True, 200), logits(False, 200)]), torch.zeros(400, dtype=torch.long)
    target = cluster(3.0, 300)
    model = FixedOutputs()
    context = ValidationContext(
        model=model, metrics={}, target_batches=batches(target, logits(False, 300)), autocast=contextlib.nullcontext,
        source_val_batches=batches(val, val_logits, val_labels),
        source_train_batches=batches(train, torch.zeros(400, 2), torch.zeros(400, dtype=torch.long)),
    )
    losses = torch.nn.functional.cross_entropy(val_logits, val_labels, reduction="none")
    return context, model, losses


def test_dev_estimates_the_target_loss_where_source_val_does_not():
    context, _, losses = shifted_domains()
    target_loss = float(losses[-1])  # every B sample has this loss
    assert float(losses.mean()) < target_loss - 0.5
    with torch.inference_mode():
        dev = get_plugins().get("validator", "dev").build().score(context)
    assert -dev == pytest.approx(target_loss, rel=0.1)


def test_dev_uses_source_train_and_val_against_target_with_max_samples():
    context, _, _ = shifted_domains()
    with torch.inference_mode():
        dev = get_plugins().get("validator", "dev").build(max_samples=250, l2=0.1).score(context)
        train, val = context.outputs("source/train", 250), context.outputs("source/val", 250)
        target = context.outputs("target", 250)
        weights = density_ratio(torch.cat([train.features, val.features]), target.features, val.features, 0.1, 200)
        losses = torch.nn.functional.cross_entropy(val.logits, val.labels, reduction="none").double()
    assert len(train) == len(val) == len(target) == 250
    assert dev == pytest.approx(-paper_dev_risk(weights.tolist(), losses.tolist()), rel=1e-9)


def test_validators_scored_together_share_one_pass_over_each_split():
    context, model, _ = shifted_domains()
    plugins = get_plugins()
    with torch.inference_mode():
        for name in ("entropy", "infomax", "snd", "dev"):
            plugins.get("validator", name).build().score(context)
    assert model.calls == 6 + 8 + 8  # target, source val and source train batches, each once


def test_panel_choices_and_regret():
    history = [
        {"epoch": 1, "validators": {"a": 1.0, "b": 0.0}, "target/test": {"accuracy": 0.5}},
        {"epoch": 2, "validators": {"a": 0.5, "b": 2.0}, "target/test": {"accuracy": 0.8}},
        {"epoch": 3, "validators": {"a": 1.0, "b": 2.0}, "target/test": {"accuracy": 0.6}},
    ]
    choices = panel_choices(history)["by_validator"]
    assert choices["a"] == {"epoch": 1, "target/test accuracy": 0.5, "regret": pytest.approx(0.3)}  # first best
    assert choices["b"] == {"epoch": 2, "target/test accuracy": 0.8, "regret": 0.0}
    unlabelled = [{k: v for k, v in record.items() if k != "target/test"} for record in history]
    assert panel_choices(unlabelled)["by_validator"]["b"] == {"epoch": 2}
    assert panel_choices([{"epoch": 1}]) is None


def test_equal_source_val_accuracy_is_decided_by_the_lower_source_val_loss():
    """Source-val accuracy saturates once the source is learnt: the epoch kept is then the one with the lowest
    source-val loss, in the run's own selection and in the panel's."""
    validator = get_plugins().get("validator", "source-val").build()
    metrics = {"source/val": {"accuracy": 1.0, "loss": 0.03}}
    context = ValidationContext(model=FixedLogits(), metrics=metrics, target_batches=lambda: iter(()),
                                autocast=contextlib.nullcontext)
    assert validator.score(context) == 1.0 and validator.tiebreak(context) == -0.03
    by_loss = get_plugins().get("validator", "source-val").build(metric="loss")
    assert by_loss.tiebreak(context) == 0.0

    history = [
        {"epoch": 1, "validators": {"a": 0.9}, "source/val": {"loss": 0.40}, "target/test": {"accuracy": 0.2}},
        {"epoch": 2, "validators": {"a": 1.0}, "source/val": {"loss": 0.11}, "target/test": {"accuracy": 0.3}},
        {"epoch": 3, "validators": {"a": 1.0}, "source/val": {"loss": 0.05}, "target/test": {"accuracy": 0.4}},
        {"epoch": 4, "validators": {"a": 1.0}, "source/val": {"loss": 0.07}, "target/test": {"accuracy": 0.5}},
    ]
    assert panel_choices(history)["by_validator"]["a"]["epoch"] == 3


def test_a_run_keeps_the_lower_loss_epoch_among_equally_accurate_ones(tiny, monkeypatch):
    from transmodal.validator import MetricValidator

    scores, losses = iter([0.5, 1.0, 1.0, 1.0]), iter([0.9, 0.3, 0.1, 0.2])
    monkeypatch.setattr(MetricValidator, "score", lambda self, context: next(scores))
    monkeypatch.setattr(MetricValidator, "tiebreak", lambda self, context: -next(losses))
    summary, _ = transmodal.train(tiny("trainer.epochs=4", "adaptation=[{name: finetune}]",
                                       "trainer.score_validators=false"), quiet=True)
    assert summary["best_epoch"] == 3


def test_a_run_records_every_label_free_validator_and_its_regret(tiny):
    summary, run_dir = transmodal.train(tiny("validator.name=dev", "adaptation=[{name: finetune}]"), quiet=True)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(set(r["validators"]) == {"source-val", "entropy", "infomax", "snd", "dev"} for r in history)
    oracle = max(r["target/test"]["accuracy"] for r in history)
    choices = summary["validators"]["by_validator"]
    for name, choice in choices.items():
        accuracy = history[choice["epoch"] - 1]["target/test"]["accuracy"]
        assert choice["target/test accuracy"] == accuracy and choice["regret"] == pytest.approx(oracle - accuracy)
    # The run's own validator, with the same parameters as the panel's, keeps the epoch the panel reports.
    assert choices["dev"]["epoch"] == summary["best_epoch"]
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    assert best["selected_value"] == pytest.approx(history[summary["best_epoch"] - 1]["validators"]["dev"])


def test_scoring_every_validator_can_be_switched_off(tiny):
    summary, run_dir = transmodal.train(tiny("trainer.epochs=1", "trainer.score_validators=false"), quiet=True)
    assert "validators" not in summary
    assert "validators" not in json.loads((run_dir / "metrics.jsonl").read_text())


@pytest.mark.parametrize("name", ["entropy", "snd"])
def test_a_run_selects_its_checkpoint_with_a_label_free_validator(tiny, name):
    summary, run_dir = transmodal.train(tiny(f"validator.name={name}", "adaptation=[{name: finetune}]"), quiet=True)
    assert summary["selected_by"].startswith(f"{name} (") and "no target labels" in summary["selected_by"]
    assert summary["selected_by_oracle"] is False
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    assert best["selected_by"] == summary["selected_by"]
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["best_epoch"] == summary["best_epoch"] and on_disk["selected_by"] == summary["selected_by"]


def test_a_label_free_validator_needs_target_data(tiny):
    experiment = tiny("validator.name=infomax", "data.dataset.target_train_size=0", "adaptation=[{name: finetune}]")
    with pytest.raises(ConfigError, match="validator: 'infomax' scores unlabelled target data"):
        transmodal.train(experiment, quiet=True)


def test_the_oracle_as_the_runs_validator_is_not_listed_among_the_label_free_ones(tiny):
    summary, run_dir = transmodal.train(tiny("trainer.epochs=1", "validator.name=oracle"), quiet=True)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "oracle" not in history[0]["validators"] and "oracle" not in summary["validators"]["by_validator"]
