"""Cross-attention fusion: each modality's tokens query the tokens of all the other modalities."""

from __future__ import annotations

import torch
from torch import nn
from transmodal.fusion import Fusion, pool_tokens

from transmodal_attention.plugin import CrossAttentionParams
from transmodal_attention.tokens import TokenProjection, check_heads, need_two_modalities


class CrossAttentionFusion(Fusion):
    """For each modality m: ``LayerNorm(q_m + MultiHeadAttention(q_m, k_others, v_others))``, pooled over m's real
    tokens; the result is the mean over the modalities each sample has.

    Keys of absent modalities and padding tokens are masked. A sample whose every key is masked would take a
    softmax over nothing (NaN, in the output and in every gradient); it attends to the masked keys instead and
    the result is discarded, leaving the residual ``LayerNorm(q_m)``.
    """

    accepts_tokens = True

    def __init__(self, input_dims: dict[str, int], dim: int, heads: int, dropout: float) -> None:
        super().__init__(input_dims)
        need_two_modalities(self.modalities, "cross-attention", "there are no other modalities to attend to")
        check_heads(dim, heads, "cross-attention")
        self.tokens = TokenProjection(self.input_dims, dim)
        self.attention = nn.ModuleDict({
            m: nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) for m in self.modalities
        })
        self.norms = nn.ModuleDict({m: nn.LayerNorm(dim) for m in self.modalities})
        self.output_dim = dim

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        tokens, keep = self.tokens(features, present, token_masks)
        total: torch.Tensor | float = 0.0
        count: torch.Tensor | float = 0.0
        for modality in self.modalities:
            others = [m for m in self.modalities if m != modality]
            keys = torch.cat([tokens[m] for m in others], dim=1)
            key_keep = torch.cat([keep[m] for m in others], dim=1)
            no_key = ~key_keep.any(dim=1)
            ignore = ~key_keep & ~no_key.unsqueeze(1)
            attended, _ = self.attention[modality](
                tokens[modality], keys, keys, key_padding_mask=ignore, need_weights=False
            )
            attended = attended.masked_fill(no_key.view(-1, 1, 1), 0.0)
            mixed = self.norms[modality](tokens[modality] + attended)
            has = keep[modality].any(dim=1, keepdim=True).to(mixed.dtype)
            total = total + pool_tokens(mixed, keep[modality]) * has
            count = count + has
        assert isinstance(total, torch.Tensor) and isinstance(count, torch.Tensor)
        return total / count.clamp(min=1.0)


def build(params: CrossAttentionParams, input_dims: dict[str, int]) -> CrossAttentionFusion:
    return CrossAttentionFusion(input_dims, params.dim, params.heads, params.dropout)
