"""The validator contract: how a run picks its checkpoint, ideally without target labels.

Adaptation papers often pick checkpoints on target-test labels, which a real deployment does not have. A
validator scores the model after each epoch (higher is better) and the trainer keeps the best-scoring weights
as ``best.pt``; ``summary.json`` names the validator, and one that reads target labels is marked ``oracle``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch

from transmodal.builtin.params import MetricParams, OracleParams
from transmodal.data import Batch
from transmodal.errors import ConfigError, DataError
from transmodal.model import TransmodalModel

Metrics = dict[str, dict[str, float]]
Batches = Callable[[], Iterator[Batch]]

# The splits a validator can ask ``ValidationContext.outputs`` for.
TARGET, SOURCE_VAL, SOURCE_TRAIN = "target", "source/val", "source/train"


def no_batches() -> Iterator[Batch]:
    return iter(())


@dataclass
class Outputs:
    """The model's outputs on the first samples of one split, as float tensors on the model's device."""

    logits: torch.Tensor  # (N, num_classes)
    features: torch.Tensor  # (N, D): the fused features
    labels: torch.Tensor | None  # (N,); None for unlabelled target data

    def __len__(self) -> int:
        return self.logits.shape[0]

    def head(self, count: int | None) -> Outputs:
        labels = None if self.labels is None else self.labels[:count]
        return Outputs(self.logits[:count], self.features[:count], labels)

    @staticmethod
    def concat(parts: list[Outputs]) -> Outputs:
        labels = [p.labels for p in parts if p.labels is not None]
        return Outputs(torch.cat([p.logits for p in parts]), torch.cat([p.features for p in parts]),
                       torch.cat(labels) if labels else None)


class _MemoisedPass:
    """One forward pass over a split, batch by batch as far as anyone asked, kept for the next asker: the
    validators scored with one context share it instead of each running the model again."""

    def __init__(self, batches: Iterator[Batch], predict: Callable[[Batch], Outputs]) -> None:
        self._batches = batches
        self._predict = predict
        self._done: list[Outputs] = []

    def take(self, max_samples: int | None, max_batches: int | None) -> list[Outputs]:
        taken: list[Outputs] = []
        samples = 0
        for index in itertools.count():
            if index == max_batches or (max_samples is not None and samples >= max_samples):
                break
            if index == len(self._done):
                batch = next(self._batches, None)
                if batch is None:
                    break
                self._done.append(self._predict(batch))
            taken.append(self._done[index])
            samples += len(taken[-1])
        return taken


@dataclass
class ValidationContext:
    model: TransmodalModel  # in eval mode
    metrics: Metrics  # this epoch's metrics on every labelled evaluation split
    target_batches: Batches  # unlabelled target batches, on the device
    autocast: Callable[[], AbstractContextManager]
    source_val_batches: Batches = no_batches  # labelled source validation batches, on the device
    source_train_batches: Batches = no_batches  # labelled source training batches (no augmentation), on the device
    _passes: dict[str, _MemoisedPass] = field(default_factory=dict, init=False, repr=False)

    def outputs(self, split: str, max_samples: int | None = None, max_batches: int | None = None) -> Outputs:
        """The model's outputs on the first ``max_samples`` samples (or ``max_batches`` batches; default all)
        of ``split``: TARGET, SOURCE_VAL or SOURCE_TRAIN. Memoised, so validators scored with this context
        run the model over each split at most once."""
        memo = self._passes.get(split)
        if memo is None:
            sources = {TARGET: self.target_batches, SOURCE_VAL: self.source_val_batches,
                       SOURCE_TRAIN: self.source_train_batches}
            memo = self._passes[split] = _MemoisedPass(sources[split](), self._predict)
        parts = memo.take(max_samples, max_batches)
        if not parts:
            raise DataError(f"the validator scores {split} data, but there was no {split} batch to score")
        return Outputs.concat(parts).head(max_samples)

    def _predict(self, batch: Batch) -> Outputs:
        with self.autocast():
            output = self.model(batch)
        return Outputs(output.logits.float(), output.features.float(), batch.get("label"))


class Validator:
    name: str = "validator"
    oracle: bool = False  # reads target labels: an upper bound, never a result
    needs_unlabelled_target: bool = False
    # Runs source batches through the model (not only their metrics), on at most this many samples per split. The
    # trainer runs those passes before it prepares the model for the target domain (target BatchNorm statistics),
    # so that source samples are seen as the model sees the source.
    source_samples: int = 0

    def describe(self) -> str:
        return self.name

    def check(self, splits: Sequence[str]) -> None:
        """Before anything trains: raise ConfigError if the run's evaluation ``splits`` cannot be scored."""

    def score(self, context: ValidationContext) -> float:
        raise NotImplementedError

    def tiebreak(self, context: ValidationContext) -> float:
        """Decides between epochs of equal score (higher wins); equal again, the first epoch stays."""
        return 0.0


class MetricValidator(Validator):
    """A metric of a labelled evaluation split; negated for the loss so that higher is always better."""

    def __init__(self, name: str, params: MetricParams, oracle: bool) -> None:
        self.name = name
        self.split = params.split
        self.metric = params.metric
        self.oracle = oracle

    def describe(self) -> str:
        label = f"{self.name} ({self.split} {self.metric})"
        return f"{label}, oracle: uses target labels" if self.oracle else label

    def check(self, splits: Sequence[str]) -> None:
        if self.split not in splits:
            raise ConfigError(f"validator {self.name}: split '{self.split}' is not evaluated in this run; set "
                              f"validator.split to one of {', '.join(splits)}")

    def score(self, context: ValidationContext) -> float:
        split = context.metrics.get(self.split)
        if split is None or self.metric not in split:
            raise ConfigError(
                f"validator {self.name}: no metric '{self.split}/{self.metric}' in this run; splits: "
                f"{', '.join(context.metrics)}; metrics: accuracy, macro_f1, loss"
            )
        value = split[self.metric]
        return -value if self.metric == "loss" else value

    def tiebreak(self, context: ValidationContext) -> float:
        """Accuracy saturates (a source learnt perfectly scores 1.0 from an early epoch on): between epochs of
        equal accuracy or F1, the one with the lower loss on the same split wins."""
        split = context.metrics.get(self.split, {})
        return -split["loss"] if self.metric != "loss" and "loss" in split else 0.0


def build_source_val(params: MetricParams) -> MetricValidator:
    if params.split.startswith("target"):
        raise ConfigError(f"validator source-val: '{params.split}' is a target split; use the 'oracle' validator "
                          f"to select on target labels (reported as an upper bound)")
    return MetricValidator("source-val", params, oracle=False)


def build_oracle(params: OracleParams) -> MetricValidator:
    return MetricValidator("oracle", params, oracle=True)
