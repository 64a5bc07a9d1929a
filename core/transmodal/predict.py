"""Predictions of a trained model on new samples: image files or folders, texts or a text file, or a manifest.

Inputs are read into the columns the model was trained on, with the same preprocessing: image files are decoded
by the same function as the ``manifest`` dataset (Pillow, shorter side resized to the model's image size,
centre-cropped), texts go through the run's own tokenizer. A manifest (CSV, TSV, JSONL, Parquet) names each
modality by a column of the same name; a missing column or an empty cell marks that modality absent, which the
model's fusion handles as in training. Anything that cannot be used is the user's input error (exit status 2).
"""

from __future__ import annotations

import csv
import io
import json
import numbers
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transmodal.data import Batch, ModalitySpec, presence_key
from transmodal.errors import DataError, InputError
from transmodal.images import IMAGE_SUFFIXES, decode_rgb, undecodable
from transmodal.run_dir import write_text_atomic
from transmodal.tables import FORMATS, LINE, columns_of, file_format, finite_number, is_missing, read_rows
from transmodal.tabular import schema_of
from transmodal.trained_model import Domain, TrainedModel

TEXT_FILE_SUFFIXES = frozenset({".txt"})
LABEL_COLUMN = "label"
ID_COLUMN = "id"
DEFAULT_BATCH = 256


@dataclass
class Inputs:
    """Samples read for the model: one value per sample in each modality's column (None: absent), named by
    ``ids``, with their labels when a manifest gave a ``label`` column."""

    ids: list[str]
    values: dict[str, list[Any]]  # modality -> path (image), text, list of floats (vector), {column: cell}
    # (tabular), or None
    labels: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def read_inputs(trained: TrainedModel, inputs: Any, modality: str | None = None) -> Inputs:
    """``inputs`` as the CLI and :meth:`TrainedModel.predict` take them:

    - a manifest file (.csv, .tsv, .jsonl, .parquet): columns named after the model's modalities;
    - image files and folders of image files (for the model's image modality);
    - a .txt file (one text per line) or text strings (for the model's text modality);
    - a mapping modality -> list of values (image paths, texts, vectors, {column: cell} mappings for a tabular
      modality), all of equal length.

    ``modality`` names the modality that files or strings are for, when the model has several of that kind.
    """
    if isinstance(inputs, Mapping):
        return _from_mapping(trained, inputs)
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not items:
        raise InputError("no inputs given: name image files, a folder, texts, a .txt file or a manifest")
    wrong = next((index for index, item in enumerate(items) if not isinstance(item, str | Path)), None)
    if wrong is not None:
        raise InputError(f"input {wrong + 1} is a {type(items[wrong]).__name__}: give file paths or texts (str), or a "
                         f"mapping of each modality to its values, one per sample (e.g. {{'image': [tensor, ...]}})")
    blank = next((index for index, item in enumerate(items) if isinstance(item, str) and not item.strip()), None)
    if blank is not None:  # as a path, '' would be the working directory and every image below it
        raise InputError(f"input {blank + 1} is an empty string: give a file, a folder or a text with words")
    paths = [_as_path(item) for item in items]
    if len(items) == 1 and paths[0].suffix.lower() in FORMATS:
        return read_manifest(trained, paths[0])
    if all(_is_dir(path) or path.suffix.lower() in IMAGE_SUFFIXES for path in paths):
        files = [file for path in paths for file in _image_files(path)]
        return Inputs([str(file) for file in files], {_modality_for(trained, "image", modality): list(files)})
    if len(items) == 1 and paths[0].suffix.lower() in TEXT_FILE_SUFFIXES:
        texts = _text_lines(paths[0])
        return Inputs([f"{paths[0]}:{line}" for line, _ in texts],
                      {_modality_for(trained, "text", modality): [text for _, text in texts]})
    for item, path in zip(items, paths):
        if path.suffix.lower() in IMAGE_SUFFIXES | set(FORMATS):
            raise InputError(f"{item} is a file name, mixed with texts; give files and texts in separate calls")
    texts = [str(item) for item in items]
    return Inputs([f"text:{index + 1}" for index in range(len(texts))],
                  {_modality_for(trained, "text", modality): texts})


def _as_path(item: str | Path) -> Path:
    """``item`` as a path, ``~`` expanded where it names a home folder (a text may begin with one that does not)."""
    try:
        return Path(item).expanduser()
    except RuntimeError:
        return Path(item)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a text longer than a file name may be, read as a path
        return False


def _modality_for(trained: TrainedModel, kind: str, named: str | None) -> str:
    """The model's modality of ``kind`` that inputs of that kind are for (``named`` when it has several)."""
    if named is not None:
        if named not in trained.modalities:
            raise InputError(f"--modality {named}: the model's modalities are {_describe(trained)}")
        if trained.modalities[named].kind != kind:
            raise InputError(f"the inputs are {kind} but modality '{named}' takes {trained.modalities[named].kind}")
        return named
    matching = [name for name, spec in trained.modalities.items() if spec.kind == kind]
    if not matching:
        what = "image files" if kind == "image" else "texts (a string that is not an image file, or a .txt file)"
        raise InputError(f"the inputs are {what}, but the model takes no {kind}: its modalities are "
                         f"{_describe(trained)}. For a vector or tabular modality use a manifest file (.csv, .jsonl)")
    if len(matching) > 1:
        raise InputError(f"the model has {len(matching)} {kind} modalities ({', '.join(matching)}); "
                         f"choose one with --modality (modality= in Python)")
    return matching[0]


def _describe(trained: TrainedModel) -> str:
    return ", ".join(f"{name} ({spec.kind})" for name, spec in sorted(trained.modalities.items()))


def _image_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(file for file in path.rglob("*") if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return files
    if not path.is_file():
        raise InputError(f"No image file {path}")
    return [path]


def _text_lines(path: Path) -> list[tuple[int, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"No text file {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"Cannot read {path} as UTF-8 text ({error})") from None
    texts = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not texts:
        raise InputError(f"{path} holds no text (one text per line)")
    return texts


def read_manifest(trained: TrainedModel, path: Path) -> Inputs:
    """Rows of a manifest file: each modality from the column of its name, or from the column(s) the run's own
    ``manifest`` dataset read it from (a missing column or an empty cell: absent); a label column (``label``, or
    the run's) if present; an ``id`` column naming each row, else its line."""
    if not path.is_file():
        raise InputError(f"No manifest file {path}")
    try:
        rows = read_rows(path, file_format(path, "auto", "input"), what="input", encoding_option=None)
    except DataError as error:  # the user's input, not the run's data
        raise InputError(str(error)) from None
    if not rows:
        raise InputError(f"{path} holds no rows")
    available = set(columns_of(rows))
    trained_columns, label_column = _training_columns(trained)
    folder = path.parent  # relative image paths name files beside the manifest, as in training
    values: dict[str, list[Any]] = {}
    for name, spec in trained.modalities.items():
        if spec.kind == "tabular":
            cells = _tabular_cells(spec, rows, available, path)
            if cells is not None:
                values[name] = cells
            continue
        columns = next((c for c in (trained_columns.get(name), [name]) if c and set(c) <= available), None)
        if columns is None:
            continue
        if spec.kind == "vector":
            values[name] = [_vector_cells([row.get(c) for c in columns], path, row[LINE], columns) for row in rows]
            continue
        cells = [row.get(columns[0]) for row in rows]
        if spec.kind == "image":
            values[name] = [None if is_missing(c) else folder / Path(str(c).strip()).expanduser() for c in cells]
        else:
            values[name] = [None if is_missing(c) else str(c) for c in cells]
    if not values:
        expected = ", ".join(f"{name} ({', '.join(trained_columns.get(name, [name]))})"
                             for name in sorted(trained.modalities))
        raise InputError(f"{path} has no column for any of the model's modalities: its columns are "
                         f"{', '.join(sorted(available))}; expected modality (column): {expected}")
    ids = [str(row[ID_COLUMN]) if not is_missing(row.get(ID_COLUMN)) else f"{path.name}:{row[LINE]}" for row in rows]
    labels = None
    if label_column in available:
        labels = [None if is_missing(row.get(label_column)) else str(row[label_column]).strip() for row in rows]
    return Inputs(ids, values, labels)


def _tabular_cells(spec: ModalitySpec, rows: list[dict[str, Any]], available: set[str],
                   path: Path) -> list[dict[str, Any] | None] | None:
    """Each row's cells in the columns the tabular modality was trained on (None: all empty, absent); None when
    the manifest has none of those columns."""
    schema = schema_of(spec)
    columns = [*schema.numeric, *schema.categories]
    found = [column for column in columns if column in available]
    if not found:
        return None
    if len(found) < len(columns):
        lacking = [column for column in columns if column not in available]
        raise InputError(f"{path} has only some of the columns of tabular modality '{spec.name}': it lacks "
                         f"{', '.join(lacking)}. Add them (empty cells are allowed) or leave out all of "
                         f"{', '.join(columns)} to mark the modality absent")
    return [None if all(is_missing(row.get(c)) for c in columns) else {c: row.get(c) for c in columns}
            for row in rows]


def _training_columns(trained: TrainedModel) -> tuple[dict[str, list[str]], str]:
    """The columns each modality and the label came from, when the run trained on a ``manifest`` dataset."""
    dataset = trained.experiment.data.dataset
    if dataset.name != "manifest":
        return {}, LABEL_COLUMN
    params = dataset.params
    modalities = {name: entry.get("columns") or [entry.get("column")]
                  for name, entry in (params.get("modalities") or {}).items() if isinstance(entry, dict)}
    return modalities, str(params.get("label", LABEL_COLUMN))


def _vector_cells(cells: list[Any], path: Path, line: int, columns: list[str]) -> list[float] | None:
    """A vector from one numeric column per dimension, or from one cell holding a JSON list or numbers separated
    by spaces, commas or semicolons; None when every cell is empty (absent)."""
    if all(is_missing(cell) for cell in cells):
        return None
    if len(cells) == 1:
        return _vector_cell(cells[0], path, line, columns[0])
    try:
        return [finite_number(cell) for cell in cells]
    except (TypeError, ValueError):
        raise InputError(f"{path} line {line}: columns {', '.join(columns)} hold {cells!r:.80}, not finite float32 "
                         f"numbers (an empty or NaN cell among values, an infinity, beyond ±3.4e38, or "
                         f"text)") from None


def _vector_cell(cell: Any, path: Path, line: int, name: str) -> list[float]:
    """A vector in one cell: a JSON list (JSONL) or numbers separated by spaces, commas or semicolons (CSV)."""
    try:
        if isinstance(cell, list):
            return [finite_number(value) for value in cell]
        return [finite_number(value) for value in str(cell).replace(",", " ").replace(";", " ").split()]
    except (TypeError, ValueError):
        raise InputError(f"{path} line {line}: column '{name}' holds {cell!r:.80}, not a vector of finite "
                         f"float32 numbers") from None


def _from_mapping(trained: TrainedModel, inputs: Mapping[str, Sequence[Any]]) -> Inputs:
    unknown = [name for name in inputs if name not in trained.modalities]
    if unknown:
        raise InputError(f"no modality {', '.join(map(str, unknown))}: the model's modalities are {_describe(trained)}")
    for name, column in inputs.items():
        if isinstance(column, str | bytes) or not isinstance(column, Sequence | torch.Tensor):
            raise InputError(f"'{name}': give a list with one value per sample, not a {type(column).__name__}")
    sizes = {name: len(values) for name, values in inputs.items()}
    if len(set(sizes.values())) != 1:
        raise InputError(f"every modality needs one value per sample; got {sizes}")
    values = {name: [_value(trained.modalities[name], value) for value in column] for name, column in inputs.items()}
    return Inputs([f"sample:{index + 1}" for index in range(next(iter(sizes.values())))], values)


def _value(spec: ModalitySpec, value: Any) -> Any:
    """One value given through the Python API; None (and a tabular sample without any cell) is absent."""
    if value is None or (spec.kind == "tabular" and isinstance(value, Mapping)
                         and all(map(is_missing, value.values()))):
        return None
    if spec.kind == "text" and not isinstance(value, str):
        raise InputError(f"a text is given as a str, not {type(value).__name__}")
    if spec.kind != "image" or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise InputError(f"an image is given as a file path or a uint8 tensor of shape {tuple(spec.shape)}, "
                     f"not {type(value).__name__}")


def batches(trained: TrainedModel, inputs: Inputs, batch_size: int = DEFAULT_BATCH) -> Iterator[Batch]:
    """Model batches of ``inputs``: images decoded, texts tokenised, presence masks where values are absent. A
    sample with no modality at all is refused: the model could only answer it with a guess."""
    empty = [inputs.ids[i] for i in range(len(inputs)) if all(column[i] is None for column in inputs.values.values())]
    if empty:
        raise InputError(f"{len(empty)} inputs have none of the model's modalities ({_describe(trained)}), e.g. "
                         f"{empty[0]}; give each at least one, or leave those out")
    for start in range(0, len(inputs), batch_size):
        stop = min(start + batch_size, len(inputs))
        batch: Batch = {}
        for name, column in inputs.values.items():
            chunk = column[start:stop]
            present = torch.tensor([value is not None for value in chunk], dtype=torch.bool)
            batch[name] = _column(trained, name, chunk, inputs.ids[start:stop])
            batch[presence_key(name)] = present
        yield batch


def _column(trained: TrainedModel, name: str, values: list[Any], ids: list[str]) -> torch.Tensor:
    spec = trained.modalities[name]
    if spec.kind == "text":
        texts = [value if isinstance(value, str) else "" for value in values]
        for value in values:
            if value is not None and not isinstance(value, str):
                raise InputError(f"modality '{name}' takes text, got {type(value).__name__} {value!r:.60}")
        return spec.tokenizer.encode_batch(texts)
    if spec.kind == "vector":
        return torch.stack([_vector(value, spec.shape, name) for value in values])
    if spec.kind == "tabular":
        return _tabular(spec, values, ids)
    return torch.stack([_image(value, spec.shape, name) for value in values])


def _vector(value: Any, shape: tuple[int, ...], name: str) -> torch.Tensor:
    if value is None:
        return torch.zeros(shape)
    try:
        tensor = torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"modality '{name}' takes vectors of {shape[0]} numbers, got {value!r:.60}") from None
    if tuple(tensor.shape) != tuple(shape):
        raise InputError(f"modality '{name}' takes vectors of {shape[0]} numbers, got {tensor.numel()}")
    return tensor


def _tabular(spec: ModalitySpec, values: list[Any], ids: list[str]) -> torch.Tensor:
    """Encoded with the training split's schema: its categories, its means for empty numeric cells."""
    schema = schema_of(spec)
    for value in values:
        if value is not None and not isinstance(value, Mapping):
            raise InputError(f"modality '{spec.name}' takes a mapping column -> cell per sample (columns "
                             f"{', '.join([*schema.numeric, *schema.categories])}), got {value!r:.60}")
    try:
        return schema.encode(schema.column(values, lambda index: ids[index]))
    except DataError as error:
        raise InputError(f"modality '{spec.name}', {error}") from None


def _image(path: Path | torch.Tensor | None, shape: tuple[int, ...], name: str) -> torch.Tensor:
    if isinstance(path, torch.Tensor):
        if tuple(path.shape) != tuple(shape) or path.dtype != torch.uint8:
            raise InputError(f"modality '{name}' takes uint8 image tensors of shape {tuple(shape)}, got "
                             f"{path.dtype} {tuple(path.shape)} (from floats in [0, 1]: (x * 255).round().byte())")
        return path.cpu()
    channels, height, width = shape
    if channels != 3 or height != width:
        raise InputError(f"modality '{name}' takes {channels}x{height}x{width} images; predict decodes image files "
                         f"to square RGB only. Give its inputs as tensors through the Python API")
    if path is None:
        return torch.zeros(shape, dtype=torch.uint8)
    if not path.is_file():
        raise InputError(f"No image file {path} (modality '{name}')")
    try:
        decoded = decode_rgb(path, height)
    except undecodable() as error:
        raise InputError(f"Cannot decode {path} as an image (modality '{name}'): {error}") from None
    return torch.frombuffer(bytearray(decoded), dtype=torch.uint8).view(shape)


def predict(
    trained: TrainedModel,
    inputs: Any,
    modality: str | None = None,
    top_k: int = 3,
    batch_size: int = DEFAULT_BATCH,
    domain: Domain = "source",
) -> list[dict[str, Any]]:
    """One record per sample: its ``input`` name, the ``prediction`` (class name), its ``probability`` and the
    ``top_k`` classes with their probabilities, best first. ``domain`` chooses the BatchNorm statistics that
    per-domain BatchNorm kept for each domain (source: as trained; target: the target's)."""
    for name, value in (("top_k", top_k), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:  # NumPy's too
            raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
    trained.check_domain(domain)
    read = read_inputs(trained, inputs, modality)
    k, batch_size = min(int(top_k), len(trained.classes)), int(batch_size)
    records: list[dict[str, Any]] = []
    for batch in batches(trained, read, batch_size):
        probabilities = torch.softmax(trained.forward_logits(batch, domain), dim=1).cpu()
        values, indices = probabilities.topk(k, dim=1)
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            ranked = [{"class": trained.classes[i], "probability": p} for p, i in zip(row_values, row_indices)]
            records.append({"input": read.ids[len(records)], "prediction": ranked[0]["class"],
                            "probability": ranked[0]["probability"], "top_k": ranked})
    return records


def format_records(records: list[dict[str, Any]], output_format: str) -> str:
    """CSV (input, prediction, probability, then class_2, probability_2, ... for the rest of the top k) or JSONL
    (one object per line, ``top_k`` as a list)."""
    if output_format == "jsonl":
        return "".join(json.dumps(record) + "\n" for record in records)
    k = max((len(record["top_k"]) for record in records), default=1)
    header = ["input", "prediction", "probability"]
    header += [name for rank in range(2, k + 1) for name in (f"class_{rank}", f"probability_{rank}")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for record in records:
        row = [record["input"], record["prediction"], f"{record['probability']:.6f}"]
        for ranked in record["top_k"][1:]:
            row += [ranked["class"], f"{ranked['probability']:.6f}"]
        writer.writerow(row)
    return buffer.getvalue()


def write_records(records: list[dict[str, Any]], output: Path | None, output_format: str | None = None) -> None:
    """To ``output`` (format from its suffix unless given; written whole or not at all), or CSV to stdout."""
    if output is None:
        sys.stdout.write(format_records(records, output_format or "csv"))
        return
    check_output(output, output_format)
    chosen = output_format or OUTPUT_SUFFIXES[output.suffix.lower()]
    try:
        write_text_atomic(output, format_records(records, chosen))
    except OSError as error:
        raise InputError(f"--output {output}: cannot write it ({error.strerror or error}); name a file in a folder "
                         f"you can write to") from None


def _same_file(given: str, target: Path) -> bool:
    try:
        return Path(given).is_file() and Path(given).resolve() == target
    except OSError:  # a text given as input, longer than a file name can be
        return False


OUTPUT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def check_output(output: Path, output_format: str | None = None, inputs: Sequence[str] = (),
                 model_dir: Path | None = None) -> None:
    """Refuse an ``--output`` that cannot be a file, or whose format is not said, before any prediction is made;
    and one that would replace an input file or write into the model's folder (a run's or a bundle's files)."""
    if output.is_dir() or not output.name:
        raise InputError(f"--output {output}: is a folder; name the file to write, e.g. {output / 'predictions.csv'}")
    target = output.resolve()
    if any(_same_file(given, target) for given in inputs):
        raise InputError(f"--output {output}: is one of the inputs, which writing the predictions would replace; "
                         f"name another file")
    if model_dir is not None and target.is_relative_to(model_dir.resolve()):
        raise InputError(f"--output {output}: is inside the model's folder {model_dir}, whose files it could "
                         f"replace; write the predictions elsewhere")
    if not output.parent.is_dir():
        raise InputError(f"--output {output}: the folder {output.parent} does not exist")
    if output_format is None and output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"--output {output}: predictions are written as .csv or .jsonl; name such a file, or give "
                         f"--format csv or --format jsonl")
