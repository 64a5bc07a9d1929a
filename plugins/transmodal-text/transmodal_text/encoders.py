"""Text encoders: LSTM/GRU over packed sequences, and Kim's (2014) convolutional network.

Ids arrive as (B, T) int64 padded with ``PAD_ID`` at the end; a sample's length is its number of non-padding
ids. Both encoders give a sample the same result whatever the padding of the batch around it: the RNNs run on
packed sequences, and the CNN ignores positions past each sample's end.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from transmodal.data import PAD_ID, ModalitySpec
from transmodal.encoder import Encoder
from transmodal.errors import ConfigError

from transmodal_text.params import EmbeddingParams, RNNParams, TextCNNParams
from transmodal_text.vectors import initialise_embedding


def _require_text(modality: ModalitySpec, encoder: str) -> None:
    if modality.kind != "text":
        raise ConfigError(
            f"model.encoders.{modality.name}: encoder '{encoder}' takes text, but modality '{modality.name}' is "
            f"{modality.kind}. Choose an encoder for {modality.kind} (transmodal components encoder)."
        )
    if modality.vocab_size < 2:
        raise ConfigError(f"model.encoders.{modality.name}: the tokenizer has no vocabulary to embed")


def _embedding(params: EmbeddingParams, modality: ModalitySpec) -> tuple[nn.Embedding, float | None]:
    embedding = nn.Embedding(modality.vocab_size, params.embedding_dim, padding_idx=PAD_ID)
    coverage = None
    if params.vectors is not None and not modality.from_checkpoint:
        if modality.tokenizer is None:
            raise ConfigError(f"model.encoders.{modality.name}.vectors: the modality has no tokenizer vocabulary")
        coverage = initialise_embedding(embedding, params.vectors, modality.tokenizer.vocabulary(),
                                        params.freeze_embedding)
    elif params.freeze_embedding:
        embedding.weight.requires_grad_(False)
    return embedding, coverage


def lengths_of(ids: torch.Tensor) -> torch.Tensor:
    """Tokens per sample (at least 1, so that an empty text still runs through the network)."""
    return (ids != PAD_ID).sum(dim=1).clamp(min=1)


class AttentionPooling(nn.Module):
    """A learnt query scores each position; the output is the softmax-weighted sum of real positions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.projection = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(torch.tanh(self.projection(sequence))).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return torch.bmm(weights.unsqueeze(1), sequence).squeeze(1)


class RecurrentEncoder(Encoder):
    """Embedding, then stacked LSTM/GRU layers (one layer group each), then pooling.

    Each layer is its own ``nn.LSTM``/``nn.GRU`` so that freezing and layer-wise learning rates can act on a
    single layer; dropout between them is applied to the packed data.
    """

    vectors_coverage: float | None = None  # share of the vocabulary found in the pretrained vectors file

    def __init__(self, cell: str, vocab_size: int, params: RNNParams, embedding: nn.Embedding) -> None:
        super().__init__()
        recurrent = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.cell = cell
        self.embedding = embedding
        self.embedding_dropout = nn.Dropout(params.embedding_dropout)
        directions = 2 if params.bidirectional else 1
        widths = [params.embedding_dim] + [params.hidden_dim * directions] * (params.num_layers - 1)
        self.layers = nn.ModuleList(
            recurrent(width, params.hidden_dim, batch_first=True, bidirectional=params.bidirectional)
            for width in widths
        )
        self.between = nn.Dropout(params.dropout)
        self.pooling = params.pooling
        self.returns_tokens = params.tokens
        self.out_dim = params.hidden_dim * directions
        self.attention = (
            AttentionPooling(self.out_dim) if params.pooling == "attention" and not params.tokens else None
        )

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        groups: list[tuple[str, nn.Module]] = [("embedding", self.embedding)]
        groups += [(f"{self.cell}{index + 1}", layer) for index, layer in enumerate(self.layers)]
        if self.attention is not None:
            groups.append(("pooling", self.attention))
        return groups

    def token_mask(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs != PAD_ID

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = lengths_of(ids)
        embedded = self.embedding_dropout(self.embedding(ids))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        hidden: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
        for index, layer in enumerate(self.layers):
            if index > 0:
                packed = PackedSequence(self.between(packed.data), packed.batch_sizes, packed.sorted_indices,
                                        packed.unsorted_indices)
            packed, hidden = layer(packed)
        if self.pooling == "last" and not self.returns_tokens:
            final = hidden[0] if isinstance(hidden, tuple) else hidden  # (directions, B, H), in batch order
            return final.transpose(0, 1).reshape(ids.shape[0], self.out_dim)
        sequence, _ = pad_packed_sequence(packed, batch_first=True, total_length=ids.shape[1])
        if self.returns_tokens:
            return sequence
        mask = torch.arange(ids.shape[1], device=ids.device) < lengths.unsqueeze(1)
        if self.pooling == "mean":
            return sequence.sum(dim=1) / lengths.unsqueeze(1).to(sequence.dtype)  # padding positions are zero
        if self.pooling == "max":
            return sequence.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        assert self.attention is not None
        return self.attention(sequence, mask)


def _build_recurrent(cell: str, params: RNNParams, modality: ModalitySpec) -> RecurrentEncoder:
    _require_text(modality, cell)
    embedding, coverage = _embedding(params, modality)
    encoder = RecurrentEncoder(cell, modality.vocab_size, params, embedding)
    encoder.vectors_coverage = coverage
    return encoder


def build_lstm(params: RNNParams, modality: ModalitySpec) -> RecurrentEncoder:
    return _build_recurrent("lstm", params, modality)


def build_gru(params: RNNParams, modality: ModalitySpec) -> RecurrentEncoder:
    return _build_recurrent("gru", params, modality)


class TextCNN(Encoder):
    """Kim (2014): embedding, one convolution per filter width with ReLU, max over time, concatenated.

    Each sample is right-padded by ``width - 1`` zero embeddings and positions past its end are masked before
    the max, so batch padding never changes a sample's features (and texts shorter than a filter still work).
    """

    vectors_coverage: float | None = None

    def __init__(self, params: TextCNNParams, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding
        self.widths = list(params.widths)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(params.embedding_dim, params.filters, width) for width in self.widths
        )
        self.dropout = nn.Dropout(params.dropout)
        self.out_dim = params.filters * len(self.widths)

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        return [("embedding", self.embedding), ("convolutions", self.convolutions)]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = lengths_of(ids)
        embedded = self.embedding(ids).transpose(1, 2)  # (B, E, T); padding rows are zero vectors
        positions = torch.arange(ids.shape[1], device=ids.device)
        past_end = (positions.unsqueeze(0) >= lengths.unsqueeze(1)).unsqueeze(1)  # (B, 1, T)
        pooled = []
        for width, convolution in zip(self.widths, self.convolutions):
            features = torch.relu(convolution(nn.functional.pad(embedded, (0, width - 1))))  # (B, F, T)
            pooled.append(features.masked_fill(past_end, float("-inf")).amax(dim=2))
        return self.dropout(torch.cat(pooled, dim=1))


def build_text_cnn(params: TextCNNParams, modality: ModalitySpec) -> TextCNN:
    _require_text(modality, "text-cnn")
    embedding, coverage = _embedding(params, modality)
    encoder = TextCNN(params, embedding)
    encoder.vectors_coverage = coverage
    return encoder
