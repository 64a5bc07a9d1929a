"""The ``tabular`` encoder: numeric features standardised with the training split's statistics, categorical
features embedded, then the residual MLP of Gorishniy et al. (2021)."""

from __future__ import annotations

import torch
from torch import nn

from transmodal.builtin.params import TabularParams
from transmodal.data import ModalitySpec
from transmodal.encoder import Encoder
from transmodal.errors import ConfigError
from transmodal.tabular import SCHEMA_KEY, UNSEEN, TabularSchema


class ResidualBlock(nn.Module):
    """x + Dropout(Linear(Dropout(ReLU(Linear(BatchNorm(x)))))): the ResNet block of Gorishniy et al. (2021)."""

    def __init__(self, width: int, hidden: int, hidden_dropout: float, residual_dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.BatchNorm1d(width), nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(hidden_dropout),
            nn.Linear(hidden, width), nn.Dropout(residual_dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class TabularResNet(Encoder):
    """ResNet for tabular data, after Gorishniy, Rubachev, Khrulkov and Babenko, "Revisiting Deep Learning Models
    for Tabular Data", NeurIPS 2021: numeric features standardised, each categorical feature embedded (one table
    with an offset per column, as their code does) and concatenated, a linear layer to ``width``, residual blocks,
    then BatchNorm and ReLU (their prediction head without its final linear layer, which is our head's job).

    The input is what :meth:`TabularSchema.encode` gives: numeric values, then category indices. The means and
    standard deviations are buffers taken from the schema, not weights: they come from ``model.json``, learnt
    from the training split, and stay fixed while training. An index outside a column's categories reads as the
    reserved index 0, as an unseen category does.
    """

    def __init__(self, schema: TabularSchema, params: TabularParams) -> None:
        super().__init__()
        self.numeric_count = len(schema.numeric)
        self.register_buffer("mean", torch.tensor(schema.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(schema.std, dtype=torch.float32), persistent=False)
        cardinalities = schema.cardinalities
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.int64).cumsum(0) if cardinalities else None
        self.register_buffer("offsets", offsets if offsets is not None else torch.zeros(0, dtype=torch.int64),
                             persistent=False)
        self.register_buffer("largest", torch.tensor(cardinalities, dtype=torch.int64) - 1, persistent=False)
        embedded = len(cardinalities) * params.embedding_dim
        self.input = nn.ModuleDict({"linear": nn.Linear(self.numeric_count + embedded, params.width)})
        if cardinalities:
            self.input["embedding"] = nn.Embedding(sum(cardinalities), params.embedding_dim)
        hidden = max(1, round(params.width * params.hidden_factor))
        self.blocks = nn.ModuleList(ResidualBlock(params.width, hidden, params.hidden_dropout,
                                                  params.residual_dropout) for _ in range(params.blocks))
        self.output = nn.Sequential(nn.BatchNorm1d(params.width), nn.ReLU())
        self.out_dim = params.width

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        return [("input", self.input), *((f"block{i + 1}", block) for i, block in enumerate(self.blocks)),
                ("output", self.output)]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        parts = [(features[:, :self.numeric_count] - self.mean) / self.std]
        if "embedding" in self.input:
            codes = features[:, self.numeric_count:].long()
            codes = torch.where((codes < 0) | (codes > self.largest), torch.full_like(codes, UNSEEN), codes)
            parts.append(self.input["embedding"](codes + self.offsets).flatten(1))
        x = self.input["linear"](torch.cat(parts, dim=1))
        for block in self.blocks:
            x = block(x)
        return self.output(x)


def build_tabular(params: TabularParams, modality: ModalitySpec) -> TabularResNet:
    if modality.kind != "tabular" or SCHEMA_KEY not in modality.extras:
        raise ConfigError(
            f"model.encoders.{modality.name}: encoder 'tabular' takes a tabular modality (numeric and categorical "
            f"columns, e.g. the manifest dataset's kind: tabular), but '{modality.name}' is {modality.kind}. For a "
            f"vector of numbers use the mlp encoder.")
    return TabularResNet(TabularSchema.from_dict(modality.extras[SCHEMA_KEY]), params)
