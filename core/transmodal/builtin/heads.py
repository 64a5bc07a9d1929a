"""The core's prediction head."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class LinearHeadParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(0, ge=0, description="Width of an optional hidden layer; 0 for a plain linear head.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


def build_linear_head(params: LinearHeadParams, in_dim: int, num_classes: int) -> nn.Module:
    # Dropout only when asked for: a no-op module still costs a kernel launch per step on a GPU.
    dropout = [nn.Dropout(params.dropout)] if params.dropout > 0 else []
    if params.hidden == 0:
        return nn.Sequential(*dropout, nn.Linear(in_dim, num_classes))
    return nn.Sequential(nn.Linear(in_dim, params.hidden), nn.ReLU(), *dropout, nn.Linear(params.hidden, num_classes))
