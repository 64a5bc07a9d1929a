"""Text datasets: IMDB (Maas et al. 2011) and custom CSV/TSV/JSONL files.

Texts stay strings here; the experiment's tokenizer numericalises each split once, after the dataset is built.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transmodal.tables import file_format, is_missing, label_sort_key, read_rows
from transmodal.data import DatasetBundle, Split
from transmodal.errors import ConfigError, DataError

from transmodal_text.archive import download, safe_extract, verify
from transmodal_text.params import IMDBParams, TextCSVParams

IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
IMDB_FOLDER = "aclImdb"
IMDB_CLASSES = ["neg", "pos"]


def _take(texts: Sequence[str], indices: torch.Tensor) -> list[str]:
    return [texts[i] for i in indices.tolist()]


def _labelled_split(texts: list[str], labels: torch.Tensor, indices: torch.Tensor) -> Split:
    indices = indices.sort().values  # a split keeps the file order; loaders shuffle
    return Split({"text": _take(texts, indices), "label": labels[indices]})


# -- IMDB -----------------------------------------------------------------------------------------------------


def _review_order(path: Path) -> tuple[int, str]:
    """Files are named <id>_<rating>.txt; sort by id as a number, so the order is the same everywhere."""
    head = path.stem.split("_", 1)[0]
    return (int(head), path.name) if head.isdigit() else (-1, path.name)


def _read_reviews(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"IMDB: {folder} is missing; the aclImdb folder is incomplete. Delete it (and the archive "
                        f"if you extracted it by hand) so that it is extracted again.")
    files = sorted(folder.glob("*.txt"), key=_review_order)
    if not files:
        raise DataError(f"IMDB: {folder} holds no reviews (*.txt)")
    return [file.read_text(encoding="utf-8", errors="replace") for file in files]


def _read_labelled(folder: Path) -> tuple[list[str], torch.Tensor]:
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(IMDB_CLASSES):
        reviews = _read_reviews(folder / name)
        texts += reviews
        labels += [label] * len(reviews)
    return texts, torch.tensor(labels, dtype=torch.int64)


def locate_imdb(params: IMDBParams) -> Path:
    """The extracted aclImdb folder: found, or extracted from the archive, or downloaded first."""
    root = params.root.expanduser()
    folder = root / IMDB_FOLDER
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return folder
    archive = root / IMDB_ARCHIVE
    if not archive.is_file():
        if not params.download:
            raise DataError(
                f"IMDB is not in {root}: expected {folder}/ or {archive}. Set data.dataset.download: true to "
                f"download it (84 MB) from {params.url}, or download it yourself into {root}."
            )
        download(params.url, archive, params.sha256)
    else:
        verify(archive, params.sha256)
    safe_extract(archive, root)
    if not (folder / "train").is_dir():
        raise DataError(f"{archive} holds no {IMDB_FOLDER}/train folder: it is not the IMDB archive")
    return folder


def build_imdb(params: IMDBParams, seed: int = 0) -> DatasetBundle:
    folder = locate_imdb(params)
    train_texts, train_labels = _read_labelled(folder / "train")
    test_texts, test_labels = _read_labelled(folder / "test")
    if params.val_size >= len(train_texts):
        raise ConfigError(f"data.dataset.val_size: {params.val_size} is not less than the {len(train_texts)} "
                          f"training reviews")
    generator = torch.Generator().manual_seed(params.split_seed if params.split_seed is not None else seed)
    order = torch.randperm(len(train_texts), generator=generator)
    val_indices, train_indices = order[: params.val_size], order[params.val_size:]
    if params.train_size is not None:
        train_indices = train_indices[: params.train_size]
    test_indices = torch.randperm(len(test_texts), generator=generator)[: params.test_size or len(test_texts)]
    unlabelled = Split({"text": _read_reviews(folder / "train" / "unsup")}) if params.unlabelled else None
    return DatasetBundle(
        modalities={"text": "text"},
        classes=list(IMDB_CLASSES),
        train=_labelled_split(train_texts, train_labels, train_indices),
        evaluation={
            "source/val": _labelled_split(train_texts, train_labels, val_indices),
            "source/test": _labelled_split(test_texts, test_labels, test_indices),
        },
        unlabelled=unlabelled,
        description="IMDB movie reviews, positive or negative (Maas et al. 2011).",
    )


# -- text-csv -------------------------------------------------------------------------------------------------


def _column(row: dict[str, Any], column: str, path: Path, available: list[str], required: bool = True) -> str:
    """A cell as a string; a missing column, or an empty domain cell, is an error naming the line."""
    if column not in row:
        raise DataError(f"text-csv: {path} has no column '{column}'; its columns are {available}")
    value = row[column]
    if isinstance(value, list | dict):
        raise DataError(f"text-csv: {path} line {row['__line__']}: '{column}' is a {type(value).__name__} "
                        f"({json.dumps(value)[:60]}); it should be a string")
    if value is None or (required and str(value).strip() == ""):
        if not required:
            return ""
        raise DataError(f"text-csv: {path} line {row['__line__']}: '{column}' is empty")
    return str(value)


def _label(row: dict[str, Any], column: str, path: Path, available: list[str]) -> str | None:
    """The row's label, or None when the cell holds no label."""
    if column not in row:
        raise DataError(f"text-csv: {path} has no column '{column}'; its columns are {available}")
    value = row[column]
    if isinstance(value, list | dict):
        raise DataError(f"text-csv: {path} line {row['__line__']}: '{column}' is a {type(value).__name__} "
                        f"({json.dumps(value)[:60]}); a label is one string or number")
    if is_missing(value):  # never a class of its own
        return None
    return str(value).strip()  # "pos" and " pos" (after a comma and a space) are one class, as in manifest


class _Table:
    """One file's rows as parallel columns."""

    def __init__(self, path: Path, params: TextCSVParams) -> None:
        # the core's shared reader: the same formats and line-numbered errors as the manifest dataset
        rows = read_rows(path, file_format(path, params.format, "text-csv"), params.encoding, what="text-csv")
        if not rows:
            raise DataError(f"text-csv: {path} holds no rows")
        available = [key for key in rows[0] if key != "__line__"]
        labels = [_label(row, params.label_column, path, available) for row in rows]
        unlabelled = [row for row, label in zip(rows, labels) if label is None]
        if unlabelled and params.unlabelled_rows == "refuse":
            first = unlabelled[0]
            raise DataError(
                f"text-csv: {path} line {first['__line__']}: no label in '{params.label_column}' "
                f"({first[params.label_column]!r}; {len(unlabelled)} such rows). Fill them in, or set "
                f"data.dataset.unlabelled_rows: skip to leave them out"
            )
        rows = [row for row, label in zip(rows, labels) if label is not None]
        if not rows:
            raise DataError(f"text-csv: {path} holds no labelled rows")
        self.path = path
        self.lines = [row["__line__"] for row in rows]
        self.texts = [_column(row, params.text_column, path, available, required=False) for row in rows]
        self.labels = [label for label in labels if label is not None]
        self.domains = (  # stripped as labels are: "b " after a comma and a space is domain "b", not a source domain
            [_column(row, params.domain_column, path, available).strip() for row in rows]
            if params.domain_column is not None else None
        )

    def target_mask(self, target_domain: str | None) -> torch.Tensor:
        if self.domains is None or target_domain is None:
            return torch.zeros(len(self.texts), dtype=torch.bool)
        return torch.tensor([domain == target_domain for domain in self.domains], dtype=torch.bool)

    def check_domains(self, target_domain: str, source_domains: set[str] | None = None) -> None:
        """Refuse a domain that is neither the target nor a source domain: a spelling of the target that differs only
        in case (it would put target rows, labels and all, into training), and in a test file (``source_domains``
        given) a domain the training file never names."""
        assert self.domains is not None
        counts = Counter(self.domains)
        found = sorted(counts)
        for domain in sorted(set(counts) - {target_domain} - (source_domains or set())):
            line, count = self.lines[self.domains.index(domain)], counts[domain]
            if domain.casefold() == target_domain.casefold():
                raise DataError(
                    f"text-csv: {self.path} line {line}: domain '{domain}' differs from the target domain "
                    f"'{target_domain}' only in case ({count} such rows; its domains are {found}); write it "
                    f"'{target_domain}' if it is the target domain, or rename it if it is a source domain"
                )
            if source_domains is not None:
                raise DataError(
                    f"text-csv: {self.path} line {line}: domain '{domain}' is neither the target domain "
                    f"'{target_domain}' nor a source domain of the training file ({sorted(source_domains)}; "
                    f"{count} such rows); correct it, or leave such rows out of the test file"
                )

    def label_ids(self, classes: list[str], remedy: str = "") -> torch.Tensor:
        """Each row's class index; a label outside ``classes`` is refused with its line (and ``remedy``)."""
        index = {name: i for i, name in enumerate(classes)}
        unknown = [(line, label) for line, label in zip(self.lines, self.labels) if label not in index]
        if unknown:
            line, label = unknown[0]
            raise DataError(f"text-csv: {self.path} line {line}: label '{label}' is not one of the classes "
                            f"{classes} ({len(unknown)} such rows){remedy}")
        return torch.tensor([index[label] for label in self.labels], dtype=torch.int64)


def _split_off(indices: torch.Tensor, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(held out, rest): ``fraction`` of ``indices`` at random, at least one when the fraction is not zero."""
    if fraction == 0 or len(indices) == 0:
        return indices[:0], indices
    count = min(len(indices) - 1, max(1, round(fraction * len(indices))))
    shuffled = indices[torch.randperm(len(indices), generator=generator)]
    return shuffled[:count], shuffled[count:]


def build_text_csv(params: TextCSVParams, seed: int = 0) -> DatasetBundle:
    main = _Table(params.path, params)
    test = _Table(params.test_path, params) if params.test_path is not None else None
    if params.domain_column is not None:
        found = sorted(set(main.domains or []))
        if params.target_domain is None:
            raise ConfigError(f"data.dataset.target_domain: with domain_column, name the target domain; "
                              f"{params.path} has domains {found}")
        if params.target_domain not in found:
            raise DataError(f"text-csv: target domain '{params.target_domain}' does not occur in {params.path}; "
                            f"its domains are {found}")
        main.check_domains(params.target_domain)
        if test is not None:
            test.check_domains(params.target_domain, set(found) - {params.target_domain})
    # The classes are the training file's labels: a label only the test file has ("1.0" against "1") is a typo
    # rather than a class, unless classes: lists it.
    classes = params.classes or sorted(set(main.labels), key=label_sort_key)
    if len(classes) < 2:
        raise DataError(f"text-csv: {params.path} has {len(classes)} class; a classifier needs at least two")

    generator = torch.Generator().manual_seed(params.split_seed if params.split_seed is not None else seed)
    labels = main.label_ids(classes)
    target = main.target_mask(params.target_domain)
    source_rows = torch.nonzero(~target).flatten()
    target_rows = torch.nonzero(target).flatten()
    if test is None:
        source_test, source_rows = _split_off(source_rows, params.test_fraction, generator)
        target_test, target_rows = _split_off(target_rows, params.test_fraction, generator)
        test_table, test_labels = main, labels
    else:
        test_labels = test.label_ids(classes, "" if params.classes else (
            f": it never occurs in the training file {params.path}; correct the label, or list every class in "
            f"data.dataset.classes to evaluate on a class that training never sees"))
        test_target = test.target_mask(params.target_domain)
        source_test, target_test = torch.nonzero(~test_target).flatten(), torch.nonzero(test_target).flatten()
        test_table = test
    val_rows, train_rows = _split_off(source_rows, params.val_fraction, generator)
    if len(train_rows) == 0:
        raise DataError(f"text-csv: no source rows are left for training in {params.path}")

    evaluation = {"source/val": _labelled_split(main.texts, labels, val_rows)}
    if len(source_test):
        evaluation["source/test"] = _labelled_split(test_table.texts, test_labels, source_test)
    if len(target_test):
        evaluation["target/test"] = _labelled_split(test_table.texts, test_labels, target_test)
    unlabelled = Split({"text": _take(main.texts, target_rows.sort().values)}) if len(target_rows) else None
    return DatasetBundle(
        modalities={"text": "text"},
        classes=classes,
        train=_labelled_split(main.texts, labels, train_rows),
        evaluation=evaluation,
        unlabelled=unlabelled,
        description=f"Texts from {params.path}" + (f", target domain '{params.target_domain}'"
                                                  if params.target_domain is not None else ""),
    )
