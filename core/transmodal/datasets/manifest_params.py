"""The ``manifest`` dataset's parameters, apart from its implementation so that registering and validating it
imports no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from transmodal.kinds import ModalityKind, Storage
from transmodal.tables import known_encoding


class ModalityColumns(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: ModalityKind
    column: str | None = Field(None, description="image: the file path (relative: to the manifest's folder); "
                                                 "text: the text.")
    columns: list[str] | None = Field(None, min_length=1, description="vector: one numeric column per dimension.")
    numeric: list[str] = Field(default_factory=list, description="tabular: numeric columns (an empty cell: "
                                                                 "the training mean).")
    categorical: list[str] = Field(default_factory=list, description="tabular: categorical columns (categories "
                                                                     "from the training split).")

    @model_validator(mode="after")
    def _columns_fit_kind(self) -> ModalityColumns:
        tabular = bool(self.numeric or self.categorical)
        if self.kind == "tabular":
            if not tabular or self.column is not None or self.columns is not None:
                raise ValueError("a tabular modality takes numeric: [a, ...] and/or categorical: [b, ...], "
                                 "not column or columns")
            both = sorted(set(self.numeric) & set(self.categorical))
            if both:
                raise ValueError(f"{both} cannot be both numeric and categorical")
            return self
        if tabular:
            raise ValueError(f"numeric and categorical are for a tabular modality, not {self.kind}")
        if self.kind == "vector" and (self.columns is None or self.column is not None):
            raise ValueError("a vector modality takes columns: [a, b, ...], not column")
        if self.kind != "vector" and (self.column is None or self.columns is not None):
            raise ValueError(f"an {self.kind} modality takes column: NAME, not columns")
        return self

    @property
    def names(self) -> list[str]:
        if self.kind == "tabular":
            return [*self.numeric, *self.categorical]
        return self.columns if self.columns is not None else [self.column or ""]


class DomainColumn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    column: str = Field(description="The column naming each row's domain.")
    source: list[str] = Field(min_length=1, description="Values of the source (labelled training) domain.")
    target: list[str] = Field(default_factory=list, description="Values of the target domain (labels optional).")

    @field_validator("source", "target", mode="before")
    @classmethod
    def _one_value_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | int) else value

    @model_validator(mode="after")
    def _disjoint(self) -> DomainColumn:
        both = sorted(set(self.source) & set(self.target))
        if both:
            raise ValueError(f"{both} cannot be both source and target")
        return self


class ColumnMapping(BaseModel):
    """Which columns of a table of samples hold each modality, the label, the domain and the split, and how rows
    without a split column are split: shared by ``manifest`` and every dataset built on
    :class:`~transmodal.datasets.mapped_rows.MappedRows` (transmodal-hf's ``hf-dataset``)."""

    model_config = ConfigDict(extra="forbid")
    modalities: dict[str, ModalityColumns] = Field(
        min_length=1, description="Modality name -> {kind: image|text|vector|tabular, column: NAME | "
                                   "columns: [NAMES] | numeric: [NAMES], categorical: [NAMES]}.")
    label: str = Field("label", description="The label column (target rows may leave it empty).")
    domain: DomainColumn | None = Field(None, description="{column, source: [values], target: [values]}; "
                                                          "without it every row is source.")
    split: str | None = Field(None, description="A column of train/val/test; without it, splits are drawn at random.")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Without split: source rows held out as source/val.")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Without split: source rows held out as source/test.")
    target_test_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Without split: labelled target rows kept as target/test; the rest (and "
                                         "every unlabelled target row) is unlabelled training data.")
    image_size: int = Field(64, ge=8, description="Images are resized (shorter side) and centre-cropped to this side.")
    on_missing: Literal["error", "absent", "skip"] = Field(
        "error", description="An image file that is missing or cannot be decoded: error, mark the image absent, "
                             "or skip the row.")
    seed: int = Field(0, description="Seed of the random splits (independent of the training seed).")

    @model_validator(mode="after")
    def _some_training_rows(self) -> ColumnMapping:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave some rows for training (sum below 1)")
        return self


class ManifestParams(ColumnMapping):
    path: Path = Field(description="CSV, TSV, JSONL or Parquet (needs pyarrow) file, one row per sample.")
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = Field("auto", description="auto: from the suffix.")
    encoding: str = Field("utf-8", description="Text encoding of the file, e.g. latin-1, cp1252, utf-16.")
    storage: Storage = Field(
        "memory", description="memory: images in RAM; mmap: read batch by batch from the on-disk image cache "
                              "(for data larger than memory).")
    cache_dir: Path | None = Field(None, description="Image cache folder; default $TRANSMODAL_CACHE_DIR, "
                                                     "$XDG_CACHE_HOME/transmodal or ~/.cache/transmodal.")
    num_workers: int | None = Field(None, ge=1, description="Processes decoding images; default: one per core.")

    _known_encoding = field_validator("encoding")(known_encoding)
