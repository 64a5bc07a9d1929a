"""Validators that pick checkpoints without target labels: their values, and their use in a run."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

import transmodal
from transmodal.builtin.adaptation.validators import soft_neighborhood_density
from transmodal.errors import ConfigError
from transmodal.plugins import get_plugins
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
