"""The validator contract: how a run picks its checkpoint, ideally without target labels.

Adaptation papers often pick checkpoints on target-test labels, which a real deployment does not have. A
validator scores the model after each epoch (higher is better) and the trainer keeps the best-scoring weights
as ``best.pt``; ``summary.json`` names the validator, and one that reads target labels is marked ``oracle``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from transmodal.errors import ConfigError
from transmodal.model import TransmodalModel

Metrics = dict[str, dict[str, float]]


@dataclass
class ValidationContext:
    model: TransmodalModel  # in eval mode
    metrics: Metrics  # this epoch's metrics on every labelled evaluation split
    target_batches: Callable[[], Iterator[dict[str, torch.Tensor]]]  # unlabelled target batches, on the device
    autocast: Callable[[], AbstractContextManager]


class Validator:
    name: str = "validator"
    oracle: bool = False  # reads target labels: an upper bound, never a result
    needs_unlabelled_target: bool = False

    def describe(self) -> str:
        return self.name

    def score(self, context: ValidationContext) -> float:
        raise NotImplementedError


class MetricParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split: str = Field("source/val", description="Evaluation split whose metric is read.")
    metric: str = Field("accuracy", description="accuracy, macro_f1, or loss (lower is better).")


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

    def score(self, context: ValidationContext) -> float:
        split = context.metrics.get(self.split)
        if split is None or self.metric not in split:
            raise ConfigError(
                f"validator {self.name}: no metric '{self.split}/{self.metric}' in this run; splits: "
                f"{', '.join(context.metrics)}; metrics: accuracy, macro_f1, loss"
            )
        value = split[self.metric]
        return -value if self.metric == "loss" else value


def build_source_val(params: MetricParams) -> MetricValidator:
    if params.split.startswith("target"):
        raise ConfigError(f"validator source-val: '{params.split}' is a target split; use the 'oracle' validator "
                          f"to select on target labels (reported as an upper bound)")
    return MetricValidator("source-val", params, oracle=False)


class OracleParams(MetricParams):
    split: str = Field("target/test", description="Labelled target split whose metric is read.")


def build_oracle(params: OracleParams) -> MetricValidator:
    return MetricValidator("oracle", params, oracle=True)
