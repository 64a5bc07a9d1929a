"""Joint transformer fusion: one encoder over the tokens of every modality and a classification token."""

from __future__ import annotations

import torch
from torch import nn
from transmodal.fusion import Fusion

from transmodal_attention.plugin import TransformerParams
from transmodal_attention.tokens import TokenProjection, check_heads


class TransformerFusion(Fusion):
    """``[CLS; tokens of every modality + modality embedding]`` through a pre-norm transformer encoder; the
    output is the CLS token.

    Padding and absent modalities are masked keys; the CLS token is never masked, so every sample, even one with
    no modality, has something to attend to. Token order inside a modality comes from its encoder (an LSTM or
    CNN already encodes position), so no positional embedding is added.
    """

    accepts_tokens = True

    def __init__(
        self, input_dims: dict[str, int], dim: int, layers: int, heads: int, feedforward: int, dropout: float
    ) -> None:
        super().__init__(input_dims)
        check_heads(dim, heads, "transformer")
        self.tokens = TokenProjection(self.input_dims, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, feedforward, dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.output_dim = dim

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        tokens, keep = self.tokens(features, present, token_masks)
        batch = next(iter(tokens.values())).shape[0]
        cls = self.cls.expand(batch, 1, -1)
        sequence = torch.cat([cls, *(tokens[m] for m in self.modalities)], dim=1)
        cls_keep = torch.ones(batch, 1, dtype=torch.bool, device=sequence.device)
        real = torch.cat([cls_keep, *(keep[m] for m in self.modalities)], dim=1)
        encoded = self.encoder(sequence, src_key_padding_mask=~real)
        return self.norm(encoded[:, 0])


def build(params: TransformerParams, input_dims: dict[str, int]) -> TransformerFusion:
    return TransformerFusion(
        input_dims, params.dim, params.layers, params.heads, params.feedforward, params.dropout
    )
