"""Modality attention: a softmax over the modalities decides, per sample, how much each one counts."""

from __future__ import annotations

import torch
from torch import nn
from transmodal.fusion import Fusion, presence

from transmodal_attention.plugin import ModalityAttentionParams
from transmodal_attention.tokens import need_two_modalities


class ModalityAttentionFusion(Fusion):
    """``sum_m a_m h_m`` with ``h_m = W_m x_m`` and ``a = softmax_m(score(h_m))`` over the modalities present.

    ``forward_with_weights`` returns the weights per modality; ``forward`` keeps the last ones, detached, in
    ``last_weights`` so that they can be inspected after an ordinary model call.
    """

    def __init__(self, input_dims: dict[str, int], dim: int, hidden: int) -> None:
        super().__init__(input_dims)
        need_two_modalities(self.modalities, "modality-attention", "a softmax over one modality is always 1")
        self.projections = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.input_dims.items()})
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.output_dim = dim
        self.last_weights: dict[str, torch.Tensor] = {}

    def forward_with_weights(
        self,
        features: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor] | None = None,
        token_masks: dict[str, torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The fused (B, dim) features and each modality's (B,) weight (0 where it is absent)."""
        projected = torch.stack([self.projections[m](features[m]) for m in self.modalities], dim=1)
        has = torch.cat([presence(features, present, m) > 0 for m in self.modalities], dim=1)
        scores = self.score(projected).squeeze(-1).masked_fill(~has, float("-inf"))
        # A sample with no modality would softmax over nothing (NaN); give it uniform scores, zeroed below.
        scores = scores.masked_fill(~has.any(dim=1, keepdim=True), 0.0)
        weights = torch.softmax(scores, dim=1) * has
        fused = (weights.unsqueeze(-1) * projected).sum(dim=1)
        return fused, {m: weights[:, index] for index, m in enumerate(self.modalities)}

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        fused, weights = self.forward_with_weights(features, present, token_masks)
        self.last_weights = {m: w.detach() for m, w in weights.items()}
        return fused


def build(params: ModalityAttentionParams, input_dims: dict[str, int]) -> ModalityAttentionFusion:
    return ModalityAttentionFusion(input_dims, params.dim, params.hidden)
