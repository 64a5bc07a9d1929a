"""Imported only when the fusion is built."""

import torch
from torch import nn

import transmodal


class MaxFusion(transmodal.Fusion):
    def __init__(self, input_dims: dict[str, int], dim: int) -> None:
        super().__init__(input_dims)
        self.projections = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.input_dims.items()})
        self.output_dim = dim

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        stacked = []
        for modality in self.modalities:
            projected = self.projections[modality](features[modality])
            missing = transmodal.presence(features, present, modality) == 0
            stacked.append(projected.masked_fill(missing, float("-inf")))
        fused = torch.stack(stacked).amax(dim=0)
        return torch.nan_to_num(fused, neginf=0.0)  # a sample with no modality at all


def build(params, input_dims: dict[str, int]) -> MaxFusion:
    return MaxFusion(input_dims, params.dim)
