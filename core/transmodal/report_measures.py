"""What ``transmodal report`` measures on a run's best checkpoint, through ``Trainer.evaluate`` (so that every
split is prepared and evaluated as ``transmodal evaluate`` does it): per-class metrics and the confusion matrix,
the fused features of the first samples of each split in 2-D, and each modality's contribution (accuracy with
it dropped, as ``transmodal evaluate --drop-modality`` measures it).

"Before adaptation" is the model the run started from: rebuilt with the run's seed, so with the same initial and
pretrained weights, before any training step. The run keeps no earlier checkpoint than its best and its last, and
the starting point is what adaptation and training together moved away from. It is drawn only for runs whose
strategies used unlabelled target data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transmodal.data import Batch
from transmodal.model import ModelOutput
from transmodal.run import saved_run_trainer
from transmodal.trainer import Metrics, Trainer

SAMPLES = 2000  # per split, for the features and the modality contribution: keeps a report to seconds
TSNE_SAMPLES = 1000  # per split: t-SNE's cost grows faster than the number of points


@dataclass
class Features:
    """The fused features (what adaptation aligns) and labels of the first samples of each split."""

    limit: int
    features: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    labels: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add(self, split: str, batch: Batch, output: ModelOutput) -> None:
        taken = sum(len(part) for part in self.features.get(split, []))
        if taken < self.limit:
            keep = self.limit - taken
            self.features.setdefault(split, []).append(output.features[:keep].float().cpu())
            self.labels.setdefault(split, []).append(batch["label"][:keep].cpu())

    def by_split(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {split: (torch.cat(parts), torch.cat(self.labels[split])) for split, parts in self.features.items()}


@dataclass(frozen=True)
class Measures:
    metrics: Metrics  # every split, whole, with per-class metrics and the confusion matrix
    header: dict[str, Any]
    after: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (features, labels) of the best checkpoint
    before: dict[str, tuple[torch.Tensor, torch.Tensor]] | None  # of the model the run started from
    contribution: dict[str, Metrics]  # "all modalities" and "without <m>" -> metrics of the first samples
    samples: int
    classes: list[str]


ALL = "all modalities"


def measure(run_dir: Path, samples: int = SAMPLES) -> Measures:
    saved = saved_run_trainer(run_dir, "best")
    trainer = saved.trainer
    before = _features(trainer, samples) if trainer.needs_target else None
    saved.load_weights()
    after = Features(samples)
    metrics = _evaluate(trainer, detailed=True, observe=after.add)
    contribution: dict[str, Metrics] = {}
    if len(trainer.model.modalities) > 1:
        contribution[ALL] = _evaluate(trainer, samples=samples)
        for modality in trainer.model.modalities:
            contribution[f"without {modality}"] = _evaluate(trainer, (modality,), samples=samples)
    return Measures(metrics, saved.header, after.by_split(), before, contribution, samples,
                    list(trainer.data.bundle.classes))


def _features(trainer: Trainer, samples: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    features = Features(samples)
    _evaluate(trainer, samples=samples, observe=features.add)
    return features.by_split()


def _evaluate(trainer: Trainer, drop: tuple[str, ...] = (), **options: Any) -> Metrics:
    try:
        return trainer.evaluate(drop, **options)
    finally:
        trainer.finish_evaluation()  # the next pass starts from the model as it trained


def pca(features: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], tuple[float, float]]:
    """All splits' features projected together on their first two principal components; and the share of the
    variance each explains."""
    stacked = torch.cat(list(features.values())).double()
    centred = stacked - stacked.mean(dim=0)
    _, values, directions = torch.linalg.svd(centred, full_matrices=False)
    variance = values.square()
    share = (variance[:2] / variance.sum().clamp(min=1e-12)).tolist() + [0.0, 0.0]
    points = centred @ directions[:2].T
    if points.shape[1] < 2:  # one-dimensional features: the second axis is flat
        points = torch.nn.functional.pad(points, (0, 2 - points.shape[1]))
    return _split_back(points.float(), features), (share[0], share[1])


def tsne(features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """t-SNE (van der Maaten and Hinton, 2008) of the first ``TSNE_SAMPLES`` of each split together, with
    scikit-learn's defaults (perplexity 30, PCA initialisation) and a fixed seed; None when scikit-learn is not
    installed."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    kept = {split: values[:TSNE_SAMPLES] for split, values in features.items()}
    stacked = torch.cat(list(kept.values())).double()
    perplexity = min(30.0, (len(stacked) - 1) / 3)  # scikit-learn requires perplexity < samples
    points = TSNE(2, perplexity=perplexity, init="pca", random_state=0).fit_transform(stacked.numpy())
    return _split_back(torch.from_numpy(points).float(), kept)


def _split_back(points: torch.Tensor, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dict(zip(features, points.split([len(values) for values in features.values()])))
