"""The core's prediction head."""

from __future__ import annotations

from torch import nn

from transmodal.builtin.params import LinearHeadParams


def build_linear_head(params: LinearHeadParams, in_dim: int, num_classes: int) -> nn.Module:
    # Dropout only when asked for: a no-op module still costs a kernel launch per step on a GPU.
    dropout = [nn.Dropout(params.dropout)] if params.dropout > 0 else []
    if params.hidden == 0:
        return nn.Sequential(*dropout, nn.Linear(in_dim, num_classes))
    return nn.Sequential(nn.Linear(in_dim, params.hidden), nn.ReLU(), *dropout, nn.Linear(params.hidden, num_classes))
