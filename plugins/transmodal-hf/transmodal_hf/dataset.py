"""The ``hf-dataset`` dataset: a Hugging Face ``datasets`` dataset on this machine, its columns mapped to
modalities exactly as the core's ``manifest`` maps a file's (the mapping, domains, labels and splits are the
core's :class:`~transmodal.datasets.mapped_rows.MappedRows`).

The data is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or local Parquet, CSV or
JSON files. A name that is not on this machine is refused with how to save it locally: nothing is downloaded.
A DatasetDict's own splits become train/val/test; a ClassLabel column's names become the classes (label) or the
values (domain, any other column).

Images (a datasets ``Image`` column, or a column of file paths) go through the core's decoding (Pillow, shorter
side resized, centre-cropped: :func:`transmodal.images.decode_rgb`) straight into one uint8 tensor, not through
the on-disk image cache: the cache keys an entry by each file's path, size and modification time, and an image
stored inside an Arrow or Parquet file has no file of its own.
"""

from __future__ import annotations

import bisect
import difflib
import glob
import io
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transmodal.data import DatasetBundle, MappedColumn
from transmodal.datasets.mapped_rows import MappedRows, Modality, build_bundle
from transmodal.errors import ConfigError, DataError
from transmodal.images import decode_rgb, undecodable
from transmodal.tables import is_missing

from transmodal_hf.params import HFDatasetParams

WHAT = "hf-dataset"
KNOWN_SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}
SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json",
            ".ndjson": "json"}
HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")  # "imdb", "stanfordnlp/imdb"
SHOWN = 3  # rows named in one error message


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{WHAT} needs the datasets package: pip install 'transmodal-hf[datasets]'") from None
    return datasets


def _not_here(path: str) -> Exception:
    """Why ``path`` cannot be read: a Hub name is never downloaded; anything else is a missing file."""
    if HUB_NAME.fullmatch(path) and not path.startswith(".") and Path(path).suffix.lower() not in SUFFIXES:
        return ConfigError(
            f"data.dataset.path: '{path}' is not a folder or file on this machine, and {WHAT} never downloads. "
            f"On a machine with network access run: python -c \"import datasets; "
            f"datasets.load_dataset('{path}').save_to_disk('DIR')\", copy DIR here and set data.dataset.path: DIR")
    return DataError(f"{WHAT}: no folder or file at {path} (nor files matching it)")


def _load(params: HFDatasetParams) -> tuple[Any, Path]:
    """The Dataset or DatasetDict that ``params.path`` names, and the folder that relative image paths start from
    (the save_to_disk folder, or the first data file's)."""
    datasets = _datasets()
    location = Path(params.path).expanduser().absolute()
    if location.is_dir():
        if not any((location / name).is_file() for name in ("state.json", "dataset_dict.json")):
            raise ConfigError(f"data.dataset.path: {location} is not a folder written by save_to_disk (it has no "
                              f"state.json or dataset_dict.json); to read data files inside it, name them, e.g. "
                              f"path: {location / '*.parquet'}")
        try:
            return datasets.load_from_disk(str(location)), location
        except (OSError, ValueError) as error:  # a damaged folder
            raise DataError(f"{WHAT}: {location} is not readable by load_from_disk ({error})") from None
    files = sorted(glob.glob(str(location), recursive=True)) if glob.has_magic(str(location)) else \
        [str(location)] if location.is_file() else []
    if not files:
        raise _not_here(params.path)
    suffixes = {Path(file).suffix.lower() for file in files}
    if params.format == "auto" and (len(suffixes) > 1 or not suffixes <= set(SUFFIXES)):
        raise ConfigError(f"data.dataset.format: cannot tell one format for {params.path} from the suffixes of "
                          f"{', '.join(Path(f).name for f in files[:SHOWN])}; set format: parquet, csv, tsv or json")
    kind = params.format if params.format != "auto" else SUFFIXES[suffixes.pop()]
    # The builder writes an Arrow copy: into a folder of our own, gone once the rows are in memory.
    cache = tempfile.mkdtemp(prefix="transmodal-hf-dataset-")
    reader = datasets.Dataset.from_parquet if kind == "parquet" else \
        datasets.Dataset.from_json if kind == "json" else datasets.Dataset.from_csv
    options = {"sep": "\t"} if kind == "tsv" else {}
    try:
        return reader(files, cache_dir=cache, keep_in_memory=True, **options), Path(files[0]).parent
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
        raise DataError(f"{WHAT}: {params.path} is not readable as {kind} ({error})") from None
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _parts(data: Any, params: HFDatasetParams, source: str) -> tuple[list[tuple[str, Any]], list[str] | None]:
    """(name, Dataset) per part, and what each part is (train, val or test) where those are a DatasetDict's splits;
    None where a split column or the random draw splits the rows (a Dataset; a DatasetDict of one split)."""
    if not isinstance(data, _datasets().DatasetDict):
        return [("", data)], None
    for name in params.splits:
        if name not in data:
            close = difflib.get_close_matches(name, list(data), n=1)
            hint = f" Did you mean: {close[0]}?" if close else ""
            raise ConfigError(f"data.dataset.splits: {source} has no split '{name}'.{hint} Its splits: "
                              f"{', '.join(data)}")
    if len(data) == 1 and not params.splits:
        name = next(iter(data))
        return [(name, data[name])], None
    if params.split is not None:
        raise ConfigError(f"data.dataset.split: {source} is a DatasetDict split into {', '.join(data)} already; "
                          f"drop split (the DatasetDict's splits are used) or save one Dataset with that column")
    roles = []
    for name in data:
        role = params.splits.get(name, KNOWN_SPLITS.get(name.lower()))
        if role is None:
            raise ConfigError(f"data.dataset.splits: {source} has a split '{name}' that is none of train, "
                              f"validation, test; say what it is, e.g. splits: {{{name}: train}}")
        roles.append(role)
    return list(data.items()), roles


def _class_names(parts: list[tuple[str, Any]], column: str, source: str) -> list[str] | None:
    """The names of ``column``'s ClassLabel feature (the same in every part), or None when it is not one."""
    found = {name: part.features.get(column) for name, part in parts}
    names = {key: tuple(feature.names) for key, feature in found.items()
             if isinstance(feature, _datasets().ClassLabel)}
    if not names:
        return None
    if len(set(names.values())) > 1 or len(names) < len(found):
        raise DataError(f"{WHAT}: {source}: column '{column}' has other class labels in each split "
                        f"({'; '.join(f'{k}: {list(v)[:SHOWN]}' for k, v in names.items())}); cast every split to "
                        f"the same ClassLabel")
    return list(next(iter(names.values())))


def _rows(part: Any, where: str) -> list[dict[str, Any]]:
    """The rows as plain values: images as their stored {bytes, path} (decoded later, at the model's size),
    ClassLabel integers as their names (-1, no label: empty)."""
    rows = part.with_format("arrow")[:].to_pylist()
    for column, feature in part.features.items():
        if not isinstance(feature, _datasets().ClassLabel):
            continue
        for index, row in enumerate(rows):
            value = row[column]
            if value is None or value == -1:
                row[column] = None
            elif 0 <= value < len(feature.names):
                row[column] = feature.names[value]
            else:
                raise DataError(f"{where} row {index + 1}: class index {value} in column '{column}' is not one of "
                                f"its {len(feature.names)} class labels")
    return rows


class _HFRows(MappedRows):
    """Every part's rows, one after the other; images decoded from the bytes or paths their cells hold."""

    def __init__(self, params: HFDatasetParams) -> None:
        data, self.folder = _load(params)
        source = str(Path(params.path).expanduser().absolute()) if not glob.has_magic(params.path) else params.path
        parts, roles = _parts(data, params, source)
        self.names = [f" split '{name}'" if name else "" for name, _ in parts]
        self.starts: list[int] = []  # first row of each part
        rows: list[dict[str, Any]] = []
        for (_, part), shown in zip(parts, self.names):
            self.starts.append(len(rows))
            rows.extend(_rows(part, f"{WHAT}: {source}{shown}"))
        split_values = None if roles is None else \
            [role for (_, part), role in zip(parts, roles) for _ in range(len(part))]
        self.on_missing = params.on_missing
        super().__init__(params, rows, WHAT, source, classes=_class_names(parts, params.label, source),
                         split=params.split, split_values=split_values)

    def where(self, index: int) -> str:
        part = bisect.bisect_right(self.starts, index) - 1
        return f"{WHAT}: {self.source}{self.names[part]} row {index - self.starts[part] + 1}"

    def images(self, name: str, column: str) -> Modality:
        size = self.params.image_size
        cells = [row[column] for row in self.rows]
        filled = [index for index, cell in enumerate(cells) if not _empty(cell)]
        array = torch.empty(len(filled), 3, size, size, dtype=torch.uint8)
        rows = torch.full((len(cells),), -1, dtype=torch.int64)
        bad = []
        decoded = 0
        for index in filled:
            try:
                pixels = decode_rgb(self._image(cells[index], index, column), size)
            except undecodable():
                bad.append(index)
                continue
            array[decoded] = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(3, size, size)
            rows[index] = decoded
            decoded += 1
        notes = []
        if bad and self.on_missing == "error":
            raise DataError(f"{WHAT}: {self.source}: {len(bad)} images of modality '{name}' (column '{column}') "
                            f"cannot be decoded: {'; '.join(self.where(i) for i in bad[:SHOWN])}"
                            f"{', ...' if len(bad) > SHOWN else ''}. Fix them, or set data.dataset.on_missing: "
                            f"absent (mark those images absent) or skip (leave those rows out)")
        if bad:
            if self.on_missing == "skip":
                self.keep[bad] = False
            action = "marked absent" if self.on_missing == "absent" else "skipped"
            notes.append(f"{name}: {len(bad)} rows with an undecodable image {action}")
        return Modality("image", MappedColumn(array, rows), rows >= 0, notes)

    def _image(self, cell: Any, index: int, column: str) -> io.BytesIO | str:
        """What Pillow opens for one cell: the bytes an Image column holds, else the file it names (a relative
        path: from the dataset's folder)."""
        if isinstance(cell, dict) and cell.get("bytes") is not None:
            return io.BytesIO(cell["bytes"])
        path = cell.get("path") if isinstance(cell, dict) else cell
        if not isinstance(path, str):
            raise DataError(f"{self.where(index)}: column '{column}' holds {type(cell).__name__}, neither an image "
                            f"(a datasets Image feature) nor a file path")
        return os.path.join(self.folder, os.path.expanduser(path.strip()))


def _empty(cell: Any) -> bool:
    if isinstance(cell, dict):
        return cell.get("bytes") is None and not cell.get("path")
    return is_missing(cell)


def build_hf_dataset(params: HFDatasetParams, seed: int = 0) -> DatasetBundle:
    return build_bundle(_HFRows(params))
