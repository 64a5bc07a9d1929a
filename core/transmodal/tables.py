"""Reading tabular files of samples (CSV, TSV, JSONL, and Parquet when pyarrow is installed) into rows.

Shared by the core's ``manifest`` dataset and the text plugin's ``text-csv``: one reader, so both report a bad
file the same way. Every row carries its 1-based line number (row number for Parquet) under :data:`LINE` for
error messages.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from transmodal.errors import ConfigError, DataError

LINE = "__line__"
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Cells that spreadsheets, pandas and JSON writers use for "no value".
MISSING_CELLS = frozenset({"", "nan", "na", "n/a", "<na>", "null", "none"})


def file_format(path: Path, declared: str, what: str) -> str:
    """``declared`` unless it is "auto"; then the format that ``path``'s suffix names."""
    if declared != "auto":
        return declared
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"data.dataset.format: cannot tell the format of {path} from its suffix; "
                          f"set format: {', '.join(sorted(set(FORMATS.values())))}")
    return FORMATS[suffix]


def is_missing(value: Any) -> bool:
    """Whether a cell holds no value (empty, null, NaN-like text)."""
    return value is None or (not isinstance(value, list | dict) and str(value).strip().lower() in MISSING_CELLS)


def finite_number(cell: Any) -> float:
    """A cell's number; ValueError unless float32 holds it as a finite number: NaN, the infinities and values beyond
    float32's range (about ±3.4e38, which it would turn into infinities) would reach the model as non-numbers."""
    value = float(cell)
    if not math.isfinite(value):
        raise ValueError(f"{cell!r} is not a finite number")
    (as_float32,) = struct.unpack("f", struct.pack("f", value))  # rounded as a float32 tensor would round it
    if not math.isfinite(as_float32):
        raise ValueError(f"{cell!r} is beyond float32's range")
    return value


def read_rows(path: Path, file_format: str, encoding: str = "utf-8", what: str = "data",
              encoding_option: str | None = "data.dataset.encoding") -> list[dict[str, Any]]:
    """Rows as dicts, each with its line number under :data:`LINE`; ``what`` starts every error message, and a file
    the encoding cannot read is told to set ``encoding_option`` (None: the caller reads UTF-8 only)."""
    path = path.expanduser()
    if not path.is_file():
        raise DataError(f"{what}: no file at {path}")
    if file_format == "parquet":
        return _read_parquet(path, what)
    rows: list[dict[str, Any]] = []
    text = _decode(path, encoding, what, encoding_option)
    file = io.StringIO(text, newline="")
    if file_format == "jsonl":
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{what}: {path} line {number} is not valid JSON: {error.msg}") from None
            except RecursionError:
                raise DataError(f"{what}: {path} line {number} nests JSON arrays or objects too deeply to read; "
                                f"a row is one flat object") from None
            if not isinstance(row, dict):
                raise DataError(f"{what}: {path} line {number} must be a JSON object")
            rows.append({**row, LINE: number})
    else:
        # The file is in memory already: a cell as long as the file costs nothing more than csv's default limit
        # (131,072 characters), which would refuse a long document. The limit is process-wide: restored after.
        limit = csv.field_size_limit(max(csv.field_size_limit(), len(text)))
        reader = csv.DictReader(file, delimiter="\t" if file_format == "tsv" else ",")
        try:
            repeated = [name for name, count in Counter(reader.fieldnames or []).items() if count > 1]
            if repeated:
                raise DataError(f"{what}: {path} line 1 names column '{repeated[0]}' twice; only one of them would be "
                                f"read. Rename or remove the other")
            for row in reader:
                extra = row.pop(None, None)  # cells beyond the header's columns
                if extra is not None and any(cell.strip() for cell in extra):
                    columns = len(reader.fieldnames or [])
                    raise DataError(f"{what}: {path} line {reader.line_num} has {columns + len(extra)} cells but the "
                                    f"header names {columns} columns; quote a cell that holds the delimiter, or add "
                                    f"the missing column names")
                rows.append({**row, LINE: reader.line_num})
        except csv.Error as error:
            raise DataError(f"{what}: {path} line {reader.line_num}: {error}") from None
        finally:
            csv.field_size_limit(limit)
    return rows


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """The column names, in file order (JSONL rows may each have other keys: their union)."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(key for key in row if key != LINE))
    return list(names)


def _decode(path: Path, encoding: str, what: str, encoding_option: str | None) -> str:
    """The whole file as text; a byte the encoding cannot read is reported with its line."""
    data = path.read_bytes()
    try:
        # utf-8-sig reads plain UTF-8 too, and drops the byte-order mark that Excel writes
        return data.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        # a UTF-16 byte-order mark (what Excel's "Unicode text" writes) names the encoding to set
        hint = "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "latin-1 or cp1252"
        fix = (f"set {encoding_option} to the file's encoding, e.g. {hint}" if encoding_option is not None
               else f"save it as UTF-8 (it may be {hint})")
        raise DataError(f"{what}: {path} line {line} is not {encoding} text (byte {data[error.start]:#04x} at offset "
                        f"{error.start}); {fix}") from None


def _read_parquet(path: Path, what: str) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as parquet  # optional: only Parquet manifests need it
    except ImportError:
        raise ConfigError(f"{what}: reading {path} needs pyarrow: pip install pyarrow (or use CSV, TSV or JSONL)") \
            from None
    try:
        table = parquet.read_table(path)
    except Exception as error:  # pyarrow's own errors for a damaged file
        raise DataError(f"{what}: {path} is not a readable Parquet file ({error})") from None
    return [{**row, LINE: number} for number, row in enumerate(table.to_pylist(), start=1)]


def known_encoding(encoding: str) -> str:
    """``encoding`` if Python knows it (a pydantic validator for ``encoding`` parameters)."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"unknown text encoding '{encoding}'; e.g. utf-8, latin-1, cp1252, utf-16") from None
    return encoding


def label_sort_key(label: str) -> tuple[int, float, str]:
    """Numbers in numeric order ("2" before "10"), then words alphabetically: the default class order."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
