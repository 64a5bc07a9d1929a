"""The ``manifest`` dataset: your own multimodal data, one row per sample in a CSV, TSV, JSONL or Parquet file.

The config maps columns to modalities (any number of each kind: image paths, texts, vectors of numeric columns,
tables of numeric and categorical columns),
names the label column, and optionally a domain column (which values are source, which target) and a split
column (train/val/test). A cell without a value marks that modality absent for that sample, which the model
passes to the fusion as its presence mask. Images are decoded once into the shared image cache
(``image_cache.py``) and served from memory or, with ``storage: mmap``, straight from the cache file.

Every mistake in the file is reported before anything trains, as one line naming the file and the line.
"""

from __future__ import annotations

import difflib
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from transmodal.data import (
    SOURCE_DOMAIN, TARGET_DOMAIN, Column, DatasetBundle, MappedColumn, Split, presence_key, select_rows,
)
from transmodal.datasets.manifest_params import ManifestParams, ModalityColumns
from transmodal.errors import ConfigError, DataError
from transmodal.file_list import FileList
from transmodal.image_cache import STATUS_DECODED, STATUS_UNDECODABLE, ImageCache
from transmodal.kinds import ModalityKind, Storage
from transmodal.tables import LINE, columns_of, file_format, is_missing, label_sort_key, read_rows
from transmodal.tabular import TabularColumn

WHAT = "manifest"
SPLIT_VALUES = ("train", "val", "test")
SHOWN = 3  # paths or values named in one error message


@dataclass
class _Modality:
    """One modality over all rows: its values and which rows have it."""

    kind: ModalityKind
    values: Any  # list[str] (text), float tensor (N, D) (vector), MappedColumn (image), TabularColumn (tabular)
    present: torch.Tensor  # (N,) bool
    notes: list[str] = field(default_factory=list)


class _Manifest:
    """The rows of one manifest file, checked, with each row's domain, label and modalities."""

    def __init__(self, params: ManifestParams) -> None:
        self.params = params
        self.path = params.path.expanduser().absolute()
        self.rows = read_rows(self.path, file_format(self.path, params.format, WHAT), params.encoding, WHAT)
        if not self.rows:
            raise DataError(f"{WHAT}: {self.path} holds no rows")
        self._check_columns()
        self.lines = [row[LINE] for row in self.rows]
        self.domains = self._domains()
        self.labels = [None if is_missing(row[params.label]) else str(row[params.label]).strip() for row in self.rows]
        self.classes = self._classes()
        self.keep = torch.ones(len(self.rows), dtype=torch.bool)  # False: rows skipped for a missing image
        self.modalities = {name: self._modality(name, spec) for name, spec in params.modalities.items()}

    def where(self, index: int) -> str:
        return f"{WHAT}: {self.path} line {self.lines[index]}"

    def _check_columns(self) -> None:
        available = columns_of(self.rows)
        wanted = [(f"modalities.{name}.{_field(spec, column)}", column)
                  for name, spec in self.params.modalities.items() for column in spec.names]
        wanted.append(("label", self.params.label))
        if self.params.domain is not None:
            wanted.append(("domain.column", self.params.domain.column))
        if self.params.split is not None:
            wanted.append(("split", self.params.split))
        for where, column in wanted:
            if column not in available:
                close = difflib.get_close_matches(column, available, n=1)
                hint = f" Did you mean: {close[0]}?" if close else ""
                raise ConfigError(f"data.dataset.{where}: {self.path.name} has no column '{column}'.{hint} "
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
            raise DataError(f"{WHAT}: {self.path}: no row has domain {', '.join(empty)} (column '{spec.column}'); "
                            f"remove it from data.dataset.domain or add its rows")
        return torch.tensor(domains, dtype=torch.int64)

    def _classes(self) -> list[str]:
        source = self.domains == SOURCE_DOMAIN
        unlabelled = [i for i, label in enumerate(self.labels) if label is None and source[i]]
        if unlabelled:
            raise DataError(f"{self.where(unlabelled[0])}: a source row without a label in '{self.params.label}' "
                            f"({len(unlabelled)} such rows); only target rows may be unlabelled")
        classes = sorted({label for label, s in zip(self.labels, source.tolist()) if s and label is not None},
                         key=label_sort_key)
        known = set(classes)
        unknown = [i for i, label in enumerate(self.labels) if label is not None and label not in known]
        if unknown:
            raise DataError(f"{self.where(unknown[0])}: target label '{self.labels[unknown[0]]}' never occurs in the "
                            f"source domain ({len(unknown)} such rows); a model trained on the source cannot "
                            f"predict it. Source classes: {', '.join(classes[:20])}")
        return classes

    def _modality(self, name: str, spec: ModalityColumns) -> _Modality:
        if spec.kind == "text":
            cells = [row[spec.column] for row in self.rows]
            present = torch.tensor([not is_missing(cell) for cell in cells], dtype=torch.bool)
            return _Modality("text", ["" if is_missing(cell) else str(cell) for cell in cells], present)
        if spec.kind == "vector":
            return self._vector(spec.names)
        if spec.kind == "tabular":
            return self._tabular(spec)
        return self._images(name, spec.column or "")

    def _tabular(self, spec: ModalityColumns) -> _Modality:
        """Each cell may be empty (a numeric one becomes the training mean, a categorical one the reserved
        index); a row whose cells are all empty lacks the modality."""
        present = torch.tensor([not all(is_missing(row[c]) for c in spec.names) for row in self.rows])
        column = TabularColumn.from_rows(spec.numeric, spec.categorical, self.rows, self.where)
        return _Modality("tabular", column, present)

    def _vector(self, columns: list[str]) -> _Modality:
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
                    values[index, position] = float(row[column])
                except (TypeError, ValueError):
                    raise DataError(f"{self.where(index)}: vector column '{column}' holds {row[column]!r}, "
                                    f"not a number") from None
        return _Modality("vector", values, present)

    def _images(self, name: str, column: str) -> _Modality:
        folder = self.path.parent  # relative paths name files beside the manifest, wherever we run from
        rows = torch.full((len(self.rows),), -1, dtype=torch.int64)
        cache = ImageCache(self.params.cache_dir, self.params.num_workers)
        first_row = array("q")  # per file: the first row naming it, for error messages
        # the paths on disk, not as Python objects; os.path, not Path, which would intern every file's name
        with FileList(directory=cache.root) as paths:
            files: dict[str, int] = {}  # each file decoded once, however many rows name it
            for index, row in enumerate(self.rows):
                if not is_missing(row[column]):
                    file = os.path.join(folder, os.path.expanduser(str(row[column]).strip()))
                    if file not in files:
                        files[file] = len(files)
                        paths.append(file)
                        first_row.append(index)
                    rows[index] = files[file]
            del files
            if self.params.on_missing == "error":
                missing = bytearray(not os.path.isfile(path) for path in paths)  # one byte per file
                self._refuse(name, column, first_row, torch.frombuffer(missing, dtype=torch.bool) if missing
                             else torch.zeros(0, dtype=torch.bool), "missing")
            decoded = cache.load(paths, self.params.image_size)
        if self.params.on_missing == "error":
            self._refuse(name, column, first_row, decoded.status == STATUS_UNDECODABLE, "undecodable")
        notes = []
        failed = torch.cat([decoded.status != STATUS_DECODED, torch.tensor([False])])  # [-1]: rows without a file
        bad_rows = failed[rows]
        if bool(bad_rows.any()):
            if self.params.on_missing == "absent":
                rows[bad_rows] = -1
            else:
                self.keep &= ~bad_rows
            action = "marked absent" if self.params.on_missing == "absent" else "skipped"
            notes.append(f"{name}: {int(bad_rows.sum())} rows with a missing or undecodable image {action}")
        return _Modality("image", MappedColumn(decoded.images, rows), rows >= 0, notes)

    def _refuse(self, name: str, column: str, first_row: Sequence[int], bad: torch.Tensor, what: str) -> None:
        """One error naming how many image files are ``what`` (``bad``: (files,) bool) and the first few, each as
        its cell and the line of the first row naming it."""
        count = int(bad.sum())
        if count:
            shown = [f"{str(self.rows[first_row[i]][column]).strip()} (line {self.lines[first_row[i]]})"
                     for i in bad.nonzero().flatten()[:SHOWN].tolist()]
            raise DataError(
                f"{WHAT}: {self.path}: {count} image files of modality '{name}' are {what}: "
                f"{', '.join(shown)}{', ...' if count > SHOWN else ''}. Fix them, or set "
                f"data.dataset.on_missing: absent (mark those images absent) or skip (leave those rows out)")


def _field(spec: ModalityColumns, column: str) -> str:
    """The parameter that names ``column``, for error messages."""
    if spec.kind == "tabular":
        return "numeric" if column in spec.numeric else "categorical"
    return "columns" if spec.kind == "vector" else "column"


def _assign(manifest: _Manifest, params: ManifestParams) -> dict[str, torch.Tensor]:
    """Row indices of each split: train, source/val, source/test, target/val, target/test, unlabelled."""
    source = (manifest.domains == SOURCE_DOMAIN) & manifest.keep
    target = (manifest.domains == TARGET_DOMAIN) & manifest.keep
    labelled = torch.tensor([label is not None for label in manifest.labels], dtype=torch.bool)
    if params.split is not None:
        values = []
        for index, row in enumerate(manifest.rows):
            value = "" if is_missing(row[params.split]) else str(row[params.split]).strip().lower()
            if value not in SPLIT_VALUES:
                raise DataError(f"{manifest.where(index)}: split '{row[params.split]}' in column '{params.split}' "
                                f"is not one of {', '.join(SPLIT_VALUES)}")
            values.append(SPLIT_VALUES.index(value))
        split = torch.tensor(values)
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


def _split_off(indices: torch.Tensor, fraction: float, generator: torch.Generator,
               keep_one: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(held out, rest), each sorted (so memory-mapped reads stay in file order): ``fraction`` of ``indices``
    at random; ``keep_one`` leaves at least one row in the rest."""
    count = round(fraction * len(indices))
    if keep_one:
        count = min(count, len(indices) - 1)
    shuffled = indices[torch.randperm(len(indices), generator=generator)]
    return shuffled[:max(count, 0)].sort().values, shuffled[max(count, 0):].sort().values


def _column(modality: _Modality, rows: torch.Tensor, storage: Storage) -> Column | list[str]:
    if modality.kind == "text":
        return [modality.values[i] for i in rows.tolist()]
    if modality.kind == "vector":
        return modality.values[rows]
    if modality.kind == "tabular":
        return modality.values.select(rows)
    return select_rows(modality.values, rows, storage)


def build_manifest(params: ManifestParams, seed: int = 0) -> DatasetBundle:
    manifest = _Manifest(params)
    assignment = _assign(manifest, params)
    if len(assignment["train"]) == 0:
        raise DataError(f"{WHAT}: {manifest.path}: no source rows left for training")
    # Presence masks only for modalities that some row lacks, in every split alike
    partial = [name for name, modality in manifest.modalities.items() if not bool(modality.present.all())]
    labels = torch.tensor([manifest.classes.index(label) if label is not None else -1 for label in manifest.labels])

    def split(rows: torch.Tensor, with_labels: bool) -> Split:
        data: dict[str, Any] = {
            name: _column(modality, rows, params.storage) for name, modality in manifest.modalities.items()
        }
        data.update({presence_key(name): manifest.modalities[name].present[rows] for name in partial})
        data["domain"] = manifest.domains[rows]
        if with_labels:
            data["label"] = labels[rows]
        return Split(data)

    evaluation = {name: split(rows, True) for name, rows in assignment.items()
                  if name not in ("train", "unlabelled") and len(rows)}
    unlabelled = split(assignment["unlabelled"], False) if len(assignment["unlabelled"]) else None
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in assignment.items() if len(rows))
    notes = [note for modality in manifest.modalities.values() for note in modality.notes]
    return DatasetBundle(
        modalities={name: modality.kind for name, modality in manifest.modalities.items()},
        classes=manifest.classes,
        train=split(assignment["train"], True),
        evaluation=evaluation,
        unlabelled=unlabelled,
        description="; ".join([f"{manifest.path}: {len(manifest.rows)} rows ({sizes})", *notes]),
    )
