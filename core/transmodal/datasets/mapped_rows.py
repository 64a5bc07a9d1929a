"""Rows of samples whose columns a :class:`~transmodal.datasets.manifest_params.ColumnMapping` maps to
modalities, a label, a domain and a split, turned into a :class:`~transmodal.data.DatasetBundle`.

What every such dataset shares: the columns checked (an unknown one suggests the closest name), each row's domain
and label, the classes, the text, vector and tabular modalities, and the train/val/test assignment (from a split
column or drawn at random). Where the rows come from and how an image cell becomes pixels is the subclass's:
``manifest`` reads a file and decodes image files through the image cache; transmodal-hf's ``hf-dataset`` reads
a Hugging Face dataset and decodes the images it holds.
"""

from __future__ import annotations

import difflib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from transmodal.data import SOURCE_DOMAIN, TARGET_DOMAIN, Column, DatasetBundle, Split, presence_key, select_rows
from transmodal.datasets.manifest_params import ColumnMapping, ModalityColumns
from transmodal.errors import ConfigError, DataError
from transmodal.kinds import ModalityKind, Storage
from transmodal.tables import columns_of, finite_number, is_missing, label_sort_key
from transmodal.tabular import TabularColumn

SPLIT_VALUES = ("train", "val", "test")


@dataclass
class Modality:
    """One modality over all rows: its values and which rows have it."""

    kind: ModalityKind
    values: Any  # list[str] (text), float tensor (N, D) (vector), MappedColumn (image), TabularColumn (tabular)
    present: torch.Tensor  # (N,) bool
    notes: list[str] = field(default_factory=list)


class MappedRows(ABC):
    """The rows of one dataset, checked, with each row's domain, label and modalities.

    ``what`` (the dataset's name) and ``source`` (its file or folder) start every error message. ``classes``,
    when the data declares them (a Hugging Face ClassLabel), fixes the class list and its order; otherwise it is
    every source label, numbers in numeric order. ``split`` is the column holding train/val/test, if any;
    ``split_values`` is each row's train/val/test where the data itself splits its rows (a DatasetDict's splits).
    """

    def __init__(self, params: ColumnMapping, rows: list[dict[str, Any]], what: str, source: str,
                 classes: list[str] | None = None, split: str | None = None,
                 split_values: list[str] | None = None) -> None:
        self.params = params
        self.rows = rows
        self.what = what
        self.source = source
        self.split = split
        self.split_values = split_values
        if not self.rows:
            raise DataError(f"{what}: {source} holds no rows")
        self._check_columns()
        self.domains = self._domains()
        self.labels = [self._label(index, row[params.label]) for index, row in enumerate(self.rows)]
        self.classes = self._classes(classes)
        self.keep = torch.ones(len(self.rows), dtype=torch.bool)  # False: rows skipped for a missing image
        self.modalities = {name: self._modality(name, spec) for name, spec in params.modalities.items()}

    @abstractmethod
    def where(self, index: int) -> str:
        """Row ``index`` as an error message names it."""

    @abstractmethod
    def images(self, name: str, column: str) -> Modality:
        """The image modality ``name`` from the cells of ``column``; may clear ``self.keep`` for skipped rows."""

    def _label(self, index: int, cell: Any) -> str | None:
        """The row's label; None when it has none. A list or an object is never turned into a class name."""
        if isinstance(cell, list | dict):
            raise DataError(f"{self.where(index)}: label column '{self.params.label}' holds a "
                            f"{type(cell).__name__}; a label is one string or number")
        return None if is_missing(cell) else str(cell).strip()

    def _check_columns(self) -> None:
        available = columns_of(self.rows)
        wanted = [(f"modalities.{name}.{_field(spec, column)}", column)
                  for name, spec in self.params.modalities.items() for column in spec.names]
        wanted.append(("label", self.params.label))
        if self.params.domain is not None:
            wanted.append(("domain.column", self.params.domain.column))
        if self.split is not None:
            wanted.append(("split", self.split))
        for where, column in wanted:
            if column not in available:
                close = difflib.get_close_matches(column, available, n=1)
                hint = f" Did you mean: {close[0]}?" if close else ""
                raise ConfigError(f"data.dataset.{where}: {os.path.basename(self.source)} has no column '{column}'.{hint} "
                                  f"Its columns: {', '.join(available)}")
        # JSONL rows may omit keys: read them as empty cells
        for row in self.rows:
            for _, column in wanted:
                row.setdefault(column, None)

    def _domains(self) -> torch.Tensor:
        spec = self.params.domain
        if spec is None:
            return torch.full((len(self.rows),), SOURCE_DOMAIN, dtype=torch.int64)
        ids = {**{value: SOURCE_DOMAIN for value in spec.source}, **{value: TARGET_DOMAIN for value in spec.target}}
        domains = []
        for index, row in enumerate(self.rows):
            value = row[spec.column]
            if is_missing(value):
                raise DataError(f"{self.where(index)}: the domain column '{spec.column}' is empty; every row needs "
                                f"one of {', '.join(ids)}")
            value = str(value).strip()
            if value not in ids:
                close = difflib.get_close_matches(value, list(ids), n=1)
                hint = f" Did you mean: {close[0]}?" if close else ""
                raise DataError(f"{self.where(index)}: domain '{value}' is neither source ({', '.join(spec.source)}) "
                                f"nor target ({', '.join(spec.target) or 'none'}).{hint} Add it to "
                                f"data.dataset.domain.source or .target")
            domains.append(ids[value])
        present = {str(row[spec.column]).strip() for row in self.rows}
        empty = [value for value in ids if value not in present]
        if empty:
            raise DataError(f"{self.what}: {self.source}: no row has domain {', '.join(empty)} (column "
                            f"'{spec.column}'); remove it from data.dataset.domain or add its rows")
        return torch.tensor(domains, dtype=torch.int64)

    def _classes(self, declared: list[str] | None) -> list[str]:
        source = self.domains == SOURCE_DOMAIN
        unlabelled = [i for i, label in enumerate(self.labels) if label is None and source[i]]
        if unlabelled:
            raise DataError(f"{self.where(unlabelled[0])}: a source row without a label in '{self.params.label}' "
                            f"({len(unlabelled)} such rows); only target rows may be unlabelled")
        if declared is not None:  # every label is one of them: the rows were read through them
            return declared
        classes = sorted({label for label, s in zip(self.labels, source.tolist()) if s and label is not None},
                         key=label_sort_key)
        known = set(classes)
        unknown = [i for i, label in enumerate(self.labels) if label is not None and label not in known]
        if unknown:
            raise DataError(f"{self.where(unknown[0])}: target label '{self.labels[unknown[0]]}' never occurs in the "
                            f"source domain ({len(unknown)} such rows); a model trained on the source cannot "
                            f"predict it. Source classes: {', '.join(classes[:20])}")
        return classes

    def _modality(self, name: str, spec: ModalityColumns) -> Modality:
        if spec.kind == "text":
            cells = [row[spec.column] for row in self.rows]
            wrong = next((i for i, cell in enumerate(cells) if isinstance(cell, list | dict | bool)), None)
            if wrong is not None:  # a JSON value that str() would turn into text the model then learns from
                raise DataError(f"{self.where(wrong)}: text column '{spec.column}' holds a "
                                f"{type(cells[wrong]).__name__}; a text cell is one string")
            present = torch.tensor([not is_missing(cell) for cell in cells], dtype=torch.bool)
            return Modality("text", ["" if is_missing(cell) else str(cell) for cell in cells], present)
        if spec.kind == "vector":
            return self._vector(spec.names)
        if spec.kind == "tabular":
            return self._tabular(spec)
        return self.images(name, spec.column or "")

    def _tabular(self, spec: ModalityColumns) -> Modality:
        """Each cell may be empty (a numeric one becomes the training mean, a categorical one the reserved
        index); a row whose cells are all empty lacks the modality."""
        present = torch.tensor([not all(is_missing(row[c]) for c in spec.names) for row in self.rows])
        column = TabularColumn.from_rows(spec.numeric, spec.categorical, self.rows, self.where)
        return Modality("tabular", column, present)

    def _vector(self, columns: list[str]) -> Modality:
        values = torch.zeros(len(self.rows), len(columns))
        present = torch.ones(len(self.rows), dtype=torch.bool)
        for index, row in enumerate(self.rows):
            missing = [is_missing(row[column]) for column in columns]
            if all(missing):
                present[index] = False
                continue
            if any(missing):
                raise DataError(f"{self.where(index)}: vector column '{columns[missing.index(True)]}' is empty "
                                f"while {', '.join(c for c, m in zip(columns, missing) if not m)} have values; "
                                f"fill it, or leave all of {', '.join(columns)} empty to mark the vector absent")
            for position, column in enumerate(columns):
                try:
                    values[index, position] = finite_number(row[column])
                except (TypeError, ValueError):
                    raise DataError(f"{self.where(index)}: vector column '{column}' holds {row[column]!r:.60}, "
                                    f"not a finite float32 number") from None
        return Modality("vector", values, present)


def _field(spec: ModalityColumns, column: str) -> str:
    """The parameter that names ``column``, for error messages."""
    if spec.kind == "tabular":
        return "numeric" if column in spec.numeric else "categorical"
    return "columns" if spec.kind == "vector" else "column"


def _assign(table: MappedRows) -> dict[str, torch.Tensor]:
    """Row indices of each split: train, source/val, source/test, target/val, target/test, unlabelled."""
    params = table.params
    source = (table.domains == SOURCE_DOMAIN) & table.keep
    target = (table.domains == TARGET_DOMAIN) & table.keep
    labelled = torch.tensor([label is not None for label in table.labels], dtype=torch.bool)
    split = _split_codes(table)
    if split is not None:
        masks = {
            "train": source & (split == 0), "source/val": source & (split == 1), "source/test": source & (split == 2),
            "target/val": target & labelled & (split == 1), "target/test": target & labelled & (split == 2),
            "unlabelled": target & ((split == 0) | ~labelled),
        }
        return {name: mask.nonzero().flatten() for name, mask in masks.items()}
    generator = torch.Generator().manual_seed(params.seed)
    val, rest = _split_off(source.nonzero().flatten(), params.val_fraction, generator)
    test, train = _split_off(rest, params.test_fraction / (1 - params.val_fraction), generator)
    target_test, target_rest = _split_off((target & labelled).nonzero().flatten(), params.target_test_fraction,
                                          generator, keep_one=False)
    unlabelled = torch.cat([target_rest, (target & ~labelled).nonzero().flatten()])
    return {"train": train, "source/val": val, "source/test": test, "target/test": target_test,
            "unlabelled": unlabelled}


def _split_codes(table: MappedRows) -> torch.Tensor | None:
    """Each row's split as an index into SPLIT_VALUES, or None when the splits are to be drawn at random."""
    if table.split_values is not None:
        return torch.tensor([SPLIT_VALUES.index(value) for value in table.split_values])
    if table.split is None:
        return None
    codes = []
    for index, row in enumerate(table.rows):
        value = "" if is_missing(row[table.split]) else str(row[table.split]).strip().lower()
        if value not in SPLIT_VALUES:
            raise DataError(f"{table.where(index)}: split '{row[table.split]}' in column '{table.split}' "
                            f"is not one of {', '.join(SPLIT_VALUES)}")
        codes.append(SPLIT_VALUES.index(value))
    return torch.tensor(codes)


def _split_off(indices: torch.Tensor, fraction: float, generator: torch.Generator,
               keep_one: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(held out, rest), each sorted (so memory-mapped reads stay in file order): ``fraction`` of ``indices``
    at random; ``keep_one`` leaves at least one row in the rest."""
    count = round(fraction * len(indices))
    if keep_one:
        count = min(count, len(indices) - 1)
    shuffled = indices[torch.randperm(len(indices), generator=generator)]
    return shuffled[:max(count, 0)].sort().values, shuffled[max(count, 0):].sort().values


def _column(modality: Modality, rows: torch.Tensor, storage: Storage) -> Column | list[str]:
    if modality.kind == "text":
        return [modality.values[i] for i in rows.tolist()]
    if modality.kind == "vector":
        return modality.values[rows]
    if modality.kind == "tabular":
        return modality.values.select(rows)
    return select_rows(modality.values, rows, storage)


def build_bundle(table: MappedRows, storage: Storage = "memory") -> DatasetBundle:
    """The dataset's splits; image columns stay memory-mapped with ``storage: mmap``."""
    assignment = _assign(table)
    if len(assignment["train"]) == 0:
        raise DataError(f"{table.what}: {table.source}: no source rows left for training")
    # Presence masks only for modalities that some row lacks, in every split alike
    partial = [name for name, modality in table.modalities.items() if not bool(modality.present.all())]
    index = {name: position for position, name in enumerate(table.classes)}
    labels = torch.tensor([index[label] if label is not None else -1 for label in table.labels])

    def split(rows: torch.Tensor, with_labels: bool) -> Split:
        data: dict[str, Any] = {name: _column(modality, rows, storage) for name, modality in table.modalities.items()}
        data.update({presence_key(name): table.modalities[name].present[rows] for name in partial})
        data["domain"] = table.domains[rows]
        if with_labels:
            data["label"] = labels[rows]
        return Split(data)

    evaluation = {name: split(rows, True) for name, rows in assignment.items()
                  if name not in ("train", "unlabelled") and len(rows)}
    unlabelled = split(assignment["unlabelled"], False) if len(assignment["unlabelled"]) else None
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in assignment.items() if len(rows))
    notes = [note for modality in table.modalities.values() for note in modality.notes]
    return DatasetBundle(
        modalities={name: modality.kind for name, modality in table.modalities.items()},
        classes=table.classes,
        train=split(assignment["train"], True),
        evaluation=evaluation,
        unlabelled=unlabelled,
        description="; ".join([f"{table.source}: {len(table.rows)} rows ({sizes})", *notes]),
    )
