"""The fusion contract: a dict of modality features in, one (B, output_dim) tensor out.

Built from ``input_dims: {modality: dim}``; iterates modalities in sorted order so the result never
depends on dict insertion order; ``present: {modality: bool (B,)}`` marks which samples have each
modality, and the operator itself decides what absence means.
"""

from __future__ import annotations

import torch
from torch import nn


class Fusion(nn.Module):
    """Base class of fusion operators. Subclasses set ``output_dim`` and implement ``forward``."""

    output_dim: int
    # Operators that use (B, T, D) token sequences set this; others get tokens mean-pooled to (B, D).
    accepts_tokens: bool = False

    def __init__(self, input_dims: dict[str, int]) -> None:
        super().__init__()
        if not input_dims:
            raise ValueError("a fusion needs at least one modality")
        self.input_dims = dict(sorted(input_dims.items()))
        self.modalities = list(self.input_dims)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor] | None = None,
        token_masks: dict[str, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


def presence(
    features: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None, modality: str
) -> torch.Tensor:
    """The (B, 1) float mask of samples that have ``modality`` (all ones when ``present`` says nothing)."""
    reference = features[modality]
    if present is None or modality not in present:
        return reference.new_ones(reference.shape[0], 1)
    return present[modality].to(reference.dtype).view(-1, 1)


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real tokens of (B, T, D) -> (B, D)."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
