"""Registration of the attention fusions. Imported at plugin discovery, so it imports nothing heavy."""

from __future__ import annotations

import transmodal
from pydantic import BaseModel, ConfigDict, Field
from transmodal.hookspecs import Register

_HERE = "transmodal_attention"


class CrossAttentionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = Field(128, ge=1, description="Width every modality's tokens are projected to (the output width).")
    heads: int = Field(4, ge=1, description="Attention heads; must divide dim.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the attention weights.")


class TransformerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = Field(128, ge=1, description="Model width (the output width).")
    layers: int = Field(2, ge=1, description="Transformer encoder layers.")
    heads: int = Field(4, ge=1, description="Attention heads; must divide dim.")
    feedforward: int = Field(256, ge=1, description="Width of each layer's feed-forward block.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class ModalityAttentionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = Field(128, ge=1, description="Width every modality is projected to (the output width).")
    hidden: int = Field(64, ge=1, description="Width of the scoring network that gives each modality its weight.")


@transmodal.hookimpl
def register_fusions(register: Register) -> None:
    register("cross-attention", f"{_HERE}.cross_attention:build", CrossAttentionParams,
             "Each modality's tokens attend to the other modalities' tokens (multi-head, residual, layer norm).")
    register("transformer", f"{_HERE}.transformer:build", TransformerParams,
             "Joint transformer encoder over all modalities' tokens, with modality embeddings and a CLS token.")
    register("modality-attention", f"{_HERE}.modality_attention:build", ModalityAttentionParams,
             "Softmax weights over the modality vectors; the weights are kept for inspection.")
