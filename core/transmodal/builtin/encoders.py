"""The core's encoders: a small CNN for images, an MLP for vectors, a bag-of-words text encoder."""

from __future__ import annotations

import torch
from torch import nn

from transmodal.builtin.params import BagOfWordsParams, MLPParams, SmallCNNParams
from transmodal.data import PAD_ID, ModalitySpec
from transmodal.encoder import Encoder
from transmodal.errors import ConfigError


def _require_kind(modality: ModalitySpec, kind: str, encoder: str) -> None:
    if modality.kind != kind:
        raise ConfigError(
            f"model.encoders.{modality.name}: encoder '{encoder}' takes {kind} input, but modality "
            f"'{modality.name}' is {modality.kind}. Choose an encoder for {modality.kind} "
            f"(transmodal components encoder)."
        )


class SmallCNN(Encoder):
    """Conv-BN-ReLU blocks, each halving the resolution, then global average pooling."""

    def __init__(self, in_channels: int, channels: list[int], tokens: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        previous = in_channels
        for width in channels:
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(previous, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(width, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            previous = width
        self.out_dim = previous
        self.returns_tokens = tokens

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        return [(f"block{index + 1}", block) for index, block in enumerate(self.blocks)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for block in self.blocks:
            x = block(x)
        if self.returns_tokens:
            return x.flatten(2).transpose(1, 2)
        return x.mean(dim=(2, 3))


def build_small_cnn(params: SmallCNNParams, modality: ModalitySpec) -> SmallCNN:
    _require_kind(modality, "image", "small-cnn")
    return SmallCNN(modality.shape[0], params.channels, params.tokens)


class MLPEncoder(Encoder):
    def __init__(self, in_dim: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        previous = in_dim
        for width in hidden:
            self.layers.append(nn.Sequential(nn.Linear(previous, width), nn.ReLU(), nn.Dropout(dropout)))
            previous = width
        self.out_dim = previous

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        return [(f"layer{index + 1}", layer) for index, layer in enumerate(self.layers)]

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        x = vectors.float()
        for layer in self.layers:
            x = layer(x)
        return x


def build_mlp(params: MLPParams, modality: ModalitySpec) -> MLPEncoder:
    _require_kind(modality, "vector", "mlp")
    return MLPEncoder(modality.shape[0], params.hidden, params.dropout)


class BagOfWordsEncoder(Encoder):
    """Mean of word embeddings (EmbeddingBag skips padding), optionally projected."""

    def __init__(self, vocab_size: int, embedding_dim: int, out_dim: int | None) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, embedding_dim, mode="mean", padding_idx=PAD_ID)
        self.projection = (
            nn.Sequential(nn.Linear(embedding_dim, out_dim), nn.ReLU()) if out_dim is not None else None
        )
        self.out_dim = out_dim or embedding_dim

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        groups: list[tuple[str, nn.Module]] = [("embedding", self.embedding)]
        if self.projection is not None:
            groups.append(("projection", self.projection))
        return groups

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pooled = self.embedding(ids)
        return self.projection(pooled) if self.projection is not None else pooled


def build_bag_of_words(params: BagOfWordsParams, modality: ModalitySpec) -> BagOfWordsEncoder:
    _require_kind(modality, "text", "bow")
    return BagOfWordsEncoder(modality.vocab_size, params.embedding_dim, params.out_dim)
