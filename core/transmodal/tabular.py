"""Tabular modalities: numeric and categorical columns, and what is learnt from the training split to encode them.

A dataset gives a tabular modality as a :class:`TabularColumn` of raw cells: numbers (NaN where a cell is empty)
and category names (None where empty). The experiment fits a :class:`TabularSchema` on the training split alone
(each numeric column's mean and standard deviation, each categorical column's categories) and encodes every split
with it into one float32 tensor per sample: the numeric values as they are (an empty cell becomes the training
mean), then one category index per categorical column, where index 0 is reserved for a category the training split
never had (or an empty cell). The schema is saved in ``model.json``, so that ``predict`` and ``evaluate --data``
encode new data with the training split's categories, and the ``tabular`` encoder normalises with its statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from transmodal.data import ModalitySpec
from transmodal.errors import CheckpointError, DataError
from transmodal.tables import finite_number, is_missing, label_sort_key

UNSEEN = 0  # the category index of a value that the training split never had, or of an empty cell
SCHEMA_KEY = "tabular"  # ModalitySpec.extras key (and model.json's) of a tabular modality's schema


@dataclass
class TabularColumn:
    """Raw cells of a tabular modality for N samples: ``numeric`` (N, len(numeric_names)) float32, NaN where a
    cell is empty; ``categorical``, one list of N category names (None: empty) per categorical column."""

    numeric_names: list[str]
    categorical_names: list[str]
    numeric: torch.Tensor
    categorical: list[list[str | None]]

    def __post_init__(self) -> None:
        if len(self.categorical) != len(self.categorical_names) or self.numeric.shape[1:] != (len(self.numeric_names),):
            raise DataError(f"a TabularColumn needs one numeric column per numeric name ({len(self.numeric_names)}) "
                            f"and one category list per categorical name ({len(self.categorical_names)})")
        sizes = {len(self.numeric), *(len(column) for column in self.categorical)}
        if len(sizes) > 1:
            raise DataError(f"the columns of a TabularColumn have different lengths: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.numeric)

    def select(self, rows: torch.Tensor) -> TabularColumn:
        positions = rows.tolist()
        return TabularColumn(self.numeric_names, self.categorical_names, self.numeric[rows],
                             [[column[i] for i in positions] for column in self.categorical])

    @classmethod
    def from_rows(cls, numeric_names: list[str], categorical_names: list[str],
                  rows: Sequence[Mapping[str, Any] | None],
                  where: Callable[[int], str] | None = None) -> TabularColumn:
        """From one mapping column -> cell per sample (None: the whole sample is absent). A numeric cell that is not
        a number raises ``DataError`` naming ``where(index)`` (default: the sample's position)."""
        numeric = torch.full((len(rows), len(numeric_names)), math.nan)
        categorical: list[list[str | None]] = [[None] * len(rows) for _ in categorical_names]
        for index, row in enumerate(rows):
            if row is None:
                continue
            for position, name in enumerate(numeric_names):
                cell = row.get(name)
                if is_missing(cell):
                    continue
                try:
                    numeric[index, position] = finite_number(cell)
                except (TypeError, ValueError):
                    place = where(index) if where is not None else f"sample {index + 1}"
                    raise DataError(f"{place}: numeric column '{name}' holds {cell!r:.60}, not a finite float32 "
                                    f"number (leave the cell empty for a missing value)") from None
            for position, name in enumerate(categorical_names):
                cell = row.get(name)
                categorical[position][index] = None if is_missing(cell) else str(cell).strip()
        return cls(numeric_names, categorical_names, numeric, categorical)


@dataclass
class TabularSchema:
    """What is learnt from the training split: numeric means and standard deviations, and the categories."""

    numeric: list[str]
    mean: list[float]
    std: list[float]
    categories: dict[str, list[str]]  # categorical column -> its training categories, indices 1, 2, ...

    @classmethod
    def fit(cls, train: TabularColumn) -> TabularSchema:
        """From the training split's cells: empty cells are left out of the statistics, a column that is constant
        (or empty) in training gets a standard deviation of 1, so that it is centred and not blown up."""
        seen = ~torch.isnan(train.numeric)
        count = seen.sum(dim=0).clamp(min=1)
        values = train.numeric.nan_to_num(0.0).double()
        mean = values.sum(dim=0) / count
        variance = (((values - mean) * seen) ** 2).sum(dim=0) / count
        std = variance.sqrt()
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        categories = {name: sorted({cell for cell in column if cell is not None}, key=label_sort_key)
                      for name, column in zip(train.categorical_names, train.categorical)}
        return cls(list(train.numeric_names), mean.tolist(), std.tolist(), categories)

    @property
    def width(self) -> int:
        """Features per sample in the encoded tensor."""
        return len(self.numeric) + len(self.categories)

    @property
    def cardinalities(self) -> list[int]:
        """Embedding rows per categorical column: its training categories and the reserved index 0."""
        return [len(values) + 1 for values in self.categories.values()]

    def encode(self, column: TabularColumn) -> torch.Tensor:
        """(N, width) float32: the numeric values (empty cells: the training mean), then the category indices
        (0 for a category unseen in training or an empty cell). Columns are matched by name."""
        missing = [name for name in [*self.numeric, *self.categories]
                   if name not in column.numeric_names and name not in column.categorical_names]
        if missing:
            raise DataError(f"the tabular data lacks the column(s) {', '.join(missing)} that the model was trained on")
        numeric = torch.empty(len(column), len(self.numeric))
        for position, name in enumerate(self.numeric):
            if name not in column.numeric_names:
                raise DataError(f"tabular column '{name}' was numeric in training but is categorical here")
            numeric[:, position] = column.numeric[:, column.numeric_names.index(name)]
        numeric = torch.where(torch.isnan(numeric), torch.tensor(self.mean, dtype=torch.float32), numeric)
        codes = torch.zeros(len(column), len(self.categories))
        for position, (name, values) in enumerate(self.categories.items()):
            if name not in column.categorical_names:
                raise DataError(f"tabular column '{name}' was categorical in training but is numeric here")
            index = {value: code for code, value in enumerate(values, start=UNSEEN + 1)}
            cells = column.categorical[column.categorical_names.index(name)]
            codes[:, position] = torch.tensor([index.get(cell, UNSEEN) if cell is not None else UNSEEN
                                               for cell in cells], dtype=torch.float32)
        return torch.cat([numeric, codes], dim=1)

    def column(self, rows: Sequence[Mapping[str, Any] | None],
               where: Callable[[int], str] | None = None) -> TabularColumn:
        """Raw cells of new samples (one mapping column -> cell each) in this schema's columns."""
        return TabularColumn.from_rows(self.numeric, list(self.categories), rows, where)

    def to_dict(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "mean": self.mean, "std": self.std, "categories": self.categories}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TabularSchema:
        """From :meth:`to_dict`'s output (``model.json``); ``ValueError`` when it does not hold a schema."""
        try:
            schema = cls([str(n) for n in data["numeric"]], [float(v) for v in data["mean"]],
                         [float(v) for v in data["std"]],
                         {str(name): [str(v) for v in values] for name, values in data["categories"].items()})
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"not a tabular schema ({type(error).__name__}: {error})") from None
        if not len(schema.numeric) == len(schema.mean) == len(schema.std):
            raise ValueError("a tabular schema needs one mean and one std per numeric column")
        return schema


def schema_of(spec: ModalitySpec) -> TabularSchema:
    """The schema a trained tabular modality was encoded with, from its spec (read from ``model.json``)."""
    try:
        return TabularSchema.from_dict(spec.extras[SCHEMA_KEY])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"model.json's tabular modality '{spec.name}' has no usable schema ({error}); "
                              f"train the run again") from None
