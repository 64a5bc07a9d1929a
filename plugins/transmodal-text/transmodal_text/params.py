"""Parameter models of the text components.

Imported at plugin discovery (``transmodal components show lstm`` reads them), so this module imports
pydantic only: no torch work, no ``tokenizers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator
from transmodal.tables import known_encoding

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
# SHA-256 of aclImdb_v1.tar.gz (84,125,825 bytes) as published by many dataset catalogues.
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- tokenizers -----------------------------------------------------------------------------------------------


class NormalisationParams(_Params):
    max_length: int = Field(256, ge=1, description="Tokens kept per text; longer texts are truncated.")
    lowercase: bool = Field(True, description="Lower-case texts before tokenizing.")
    strip_html: bool = Field(True, description="Replace HTML line breaks (<br />, as in IMDB reviews) by spaces.")


class WordTokenizerParams(NormalisationParams):
    vocab_size: int = Field(25_000, ge=3, description="Most frequent words kept, including <pad> and <unk>.")
    min_freq: int = Field(1, ge=1, description="Words seen fewer times in the training split become <unk>.")


class SubwordTokenizerParams(NormalisationParams):
    vocab_size: int = Field(16_000, ge=3, description="Subword vocabulary size, including <pad> and <unk>.")
    min_freq: int = Field(2, ge=1, description="Minimum frequency of a merge (BPE) or subword (WordPiece).")


class TokenizerFileParams(NormalisationParams):
    path: Path = Field(description="A tokenizer.json saved by the tokenizers library (a pretrained tokenizer).")
    lowercase: bool = Field(False, description="Lower-case before the file's own normalisation.")
    add_special_tokens: bool = Field(False, description="Let the file's post-processor add [CLS]/[SEP]-like tokens.")


# -- encoders ------------------------------------------------------------------------------------------------


class EmbeddingParams(_Params):
    embedding_dim: int = Field(100, ge=1, description="Word embedding size (must equal the vectors' size).")
    vectors: Path | None = Field(
        None, description="GloVe or word2vec text file (.txt or .txt.gz) that initialises the embedding."
    )
    freeze_embedding: bool = Field(False, description="Keep the embedding fixed (usually with vectors).")


class RNNParams(EmbeddingParams):
    hidden_dim: int = Field(256, ge=1, description="Hidden size of each direction of each layer.")
    num_layers: int = Field(2, ge=1, description="Stacked recurrent layers; each is its own layer group.")
    bidirectional: bool = False
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout between stacked layers.")
    embedding_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the word embeddings.")
    pooling: Literal["last", "mean", "max", "attention"] = Field(
        "last", description="How the sequence becomes one vector: final hidden state, mean, max, or attention."
    )
    tokens: bool = Field(False, description="Return the (B, T, D) sequence for attention fusion, no pooling.")

    @model_validator(mode="after")
    def _tokens_without_pooling(self) -> RNNParams:
        if self.tokens and self.pooling == "attention":
            raise ValueError("tokens: true returns the whole sequence, so pooling: attention would never be used; "
                             "leave pooling at its default or set tokens: false")
        return self


class TextCNNParams(EmbeddingParams):
    widths: list[PositiveInt] = Field([3, 4, 5], min_length=1,
                                      description="Filter widths in tokens (Kim 2014: 3, 4, 5).")
    filters: int = Field(100, ge=1, description="Filters per width; out_dim = filters x len(widths).")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout on the pooled features.")


# -- datasets ------------------------------------------------------------------------------------------------


class IMDBParams(_Params):
    root: Path = Field(Path("data"), description="Folder holding aclImdb/ or aclImdb_v1.tar.gz.")
    download: bool = Field(False, description="Download aclImdb_v1.tar.gz (84 MB) into root when it is missing.")
    url: str = Field(IMDB_URL, description="Where to download from (a mirror needs the same sha256).")
    sha256: str = Field(IMDB_SHA256, description="Checksum the archive must have.")
    val_size: int = Field(2500, ge=1, description="Training reviews held out as source/val.")
    train_size: int | None = Field(None, ge=1, description="Use only this many training reviews (a random subset).")
    test_size: int | None = Field(None, ge=1, description="Use only this many test reviews (a random subset).")
    unlabelled: bool = Field(False, description="Load the 50,000 unlabelled reviews (train/unsup) as unlabelled data.")
    split_seed: int | None = Field(None, description="Seed of the validation split and subsets; default: trainer.seed.")


class TextCSVParams(_Params):
    path: Path = Field(description="CSV, TSV or JSONL file with one sample per row.")
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = Field(
        "auto", description="auto: from the file's suffix. parquet needs pyarrow.")
    text_column: str = "text"
    label_column: str = "label"
    domain_column: str | None = Field(None, description="Column naming each row's domain.")
    target_domain: str | None = Field(
        None, description="With domain_column: this domain becomes unlabelled data + target/test; the rest is source."
    )
    test_path: Path | None = Field(None, description="A separate test file (same columns); default: split off.")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Without test_path: rows held out as test.")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Source training rows held out as source/val.")
    classes: list[str] | None = Field(None, description="Class names in label order; default: sorted labels.")
    split_seed: int | None = Field(None, description="Seed of the splits; default: trainer.seed.")
    encoding: str = Field("utf-8", description="Text encoding of the files, e.g. latin-1, cp1252, utf-16.")
    unlabelled_rows: Literal["refuse", "skip"] = Field(
        "refuse", description="Rows without a label (empty, NaN, null): refuse names the first; skip leaves them out."
    )

    _known_encoding = field_validator("encoding")(known_encoding)

    @field_validator("target_domain")
    @classmethod
    def _stripped_target(cls, value: str | None) -> str | None:
        return value.strip() if value is not None else None  # domain cells are read without surrounding spaces

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[str] | None) -> list[str] | None:
        # a repeated name would add a model output that no label ever reaches
        repeated = [name for index, name in enumerate(value or []) if name in (value or [])[:index]]
        if repeated:
            raise ValueError(f"class '{repeated[0]}' is listed more than once; list each class once")
        return value

    @model_validator(mode="after")
    def _target_needs_domain(self) -> TextCSVParams:
        if self.target_domain is not None and self.domain_column is None:
            raise ValueError("target_domain needs domain_column (the column that names each row's domain)")
        return self
