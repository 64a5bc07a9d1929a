"""The core's fusion operators: concatenation and a mean over projected modalities."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from transmodal.fusion import Fusion, presence


class ConcatParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int | None = Field(None, ge=1, description="Project the concatenation through a ReLU MLP of this width.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class ConcatFusion(Fusion):
    """Concatenate modality features (absent ones as zeros), optionally through a projection MLP."""

    def __init__(self, input_dims: dict[str, int], hidden: int | None, dropout: float) -> None:
        super().__init__(input_dims)
        width = sum(self.input_dims.values())
        self.projection = (
            nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)) if hidden is not None else None
        )
        self.output_dim = hidden or width

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        parts = [features[m] * presence(features, present, m) for m in self.modalities]
        joined = torch.cat(parts, dim=1)
        return self.projection(joined) if self.projection is not None else joined


def build_concat(params: ConcatParams, input_dims: dict[str, int]) -> ConcatFusion:
    return ConcatFusion(input_dims, params.hidden, params.dropout)


class MeanParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = Field(256, ge=1, description="Width every modality is projected to before averaging.")


class MeanFusion(Fusion):
    """Project every modality to one width and average over the modalities each sample has."""

    def __init__(self, input_dims: dict[str, int], dim: int) -> None:
        super().__init__(input_dims)
        self.projections = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.input_dims.items()})
        self.output_dim = dim

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        total = 0.0
        count = 0.0
        for modality in self.modalities:
            mask = presence(features, present, modality)
            total = total + self.projections[modality](features[modality]) * mask
            count = count + mask
        return total / count.clamp(min=1.0)


def build_mean(params: MeanParams, input_dims: dict[str, int]) -> MeanFusion:
    return MeanFusion(input_dims, params.dim)
