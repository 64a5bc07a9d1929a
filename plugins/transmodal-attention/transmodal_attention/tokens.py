"""Turning a fusion's inputs into projected token sequences with masks of the tokens that are real."""

from __future__ import annotations

import torch
from torch import nn
from transmodal.errors import ConfigError
from transmodal.fusion import presence


def check_heads(dim: int, heads: int, fusion: str) -> None:
    if dim % heads != 0:
        raise ConfigError(
            f"model.fusion ({fusion}): dim={dim} is not divisible by heads={heads}; choose a dim that is a "
            f"multiple of heads (e.g. dim={heads * max(1, round(dim / heads))})."
        )


def need_two_modalities(modalities: list[str], fusion: str, why: str) -> None:
    if len(modalities) < 2:
        raise ConfigError(
            f"model.fusion ({fusion}): the model has one modality ({modalities[0]}), and {why}; add a second "
            f"encoder, or use a fusion for one modality such as concat."
        )


class TokenProjection(nn.Module):
    """Projects each modality's (B, D) vector or (B, T, D) sequence to (B, T, dim) and adds a learned
    modality-type embedding, so attention can tell the modalities apart in a joint sequence."""

    def __init__(self, input_dims: dict[str, int], dim: int) -> None:
        super().__init__()
        self.modalities = list(input_dims)
        self.projections = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in input_dims.items()})
        self.type_embeddings = nn.Parameter(torch.randn(len(self.modalities), dim) * 0.02)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor] | None,
        token_masks: dict[str, torch.Tensor | None] | None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Tokens (B, T_m, dim) and keep masks (B, T_m), True for a real token of a sample that has the
        modality."""
        tokens: dict[str, torch.Tensor] = {}
        keep: dict[str, torch.Tensor] = {}
        for index, modality in enumerate(self.modalities):
            value = features[modality]
            sequence = value.unsqueeze(1) if value.dim() == 2 else value
            tokens[modality] = self.projections[modality](sequence) + self.type_embeddings[index]
            mask = (token_masks or {}).get(modality)
            real = (
                torch.ones(sequence.shape[:2], dtype=torch.bool, device=sequence.device)
                if mask is None or value.dim() == 2 else mask.to(torch.bool)
            )
            keep[modality] = real & (presence(features, present, modality) > 0)
        return tokens, keep
