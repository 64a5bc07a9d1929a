"""The ``manifest`` dataset: your own multimodal data, one row per sample in a CSV, TSV, JSONL or Parquet file.

The config maps columns to modalities (any number of each kind: image paths, texts, vectors of numeric columns,
tables of numeric and categorical columns),
names the label column, and optionally a domain column (which values are source, which target) and a split
column (train/val/test). A cell without a value marks that modality absent for that sample, which the model
passes to the fusion as its presence mask. Images are decoded once into the shared image cache
(``image_cache.py``) and served from memory or, with ``storage: mmap``, straight from the cache file. What is
not about the file (columns, domains, labels, splits) is :mod:`transmodal.datasets.mapped_rows`'.

Every mistake in the file is reported before anything trains, as one line naming the file and the line.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence

import torch

from transmodal.data import DatasetBundle, MappedColumn
from transmodal.datasets.manifest_params import ManifestParams
from transmodal.datasets.mapped_rows import MappedRows, Modality, build_bundle
from transmodal.errors import DataError
from transmodal.file_list import FileList
from transmodal.image_cache import STATUS_DECODED, STATUS_UNDECODABLE, ImageCache
from transmodal.tables import LINE, file_format, is_missing, read_rows

WHAT = "manifest"
SHOWN = 3  # paths or values named in one error message


class _Manifest(MappedRows):
    """The rows of one manifest file; image cells name files, relative to the manifest's folder."""

    def __init__(self, params: ManifestParams) -> None:
        self.path = params.path.expanduser().absolute()
        rows = read_rows(self.path, file_format(self.path, params.format, WHAT), params.encoding, WHAT)
        self.lines = [row[LINE] for row in rows]
        self.cache = ImageCache(params.cache_dir, params.num_workers)
        self.on_missing = params.on_missing
        super().__init__(params, rows, WHAT, str(self.path), split=params.split)

    def where(self, index: int) -> str:
        return f"{WHAT}: {self.path} line {self.lines[index]}"

    def images(self, name: str, column: str) -> Modality:
        folder = self.path.parent  # relative paths name files beside the manifest, wherever we run from
        rows = torch.full((len(self.rows),), -1, dtype=torch.int64)
        first_row = array("q")  # per file: the first row naming it, for error messages
        # the paths on disk, not as Python objects; os.path, not Path, which would intern every file's name
        with FileList(directory=self.cache.root) as paths:
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
            if self.on_missing == "error":
                missing = bytearray(not os.path.isfile(path) for path in paths)  # one byte per file
                self._refuse(name, column, first_row, torch.frombuffer(missing, dtype=torch.bool) if missing
                             else torch.zeros(0, dtype=torch.bool), "missing")
            decoded = self.cache.load(paths, self.params.image_size)
        if self.on_missing == "error":
            self._refuse(name, column, first_row, decoded.status == STATUS_UNDECODABLE, "undecodable")
        notes = []
        failed = torch.cat([decoded.status != STATUS_DECODED, torch.tensor([False])])  # [-1]: rows without a file
        bad_rows = failed[rows]
        if bool(bad_rows.any()):
            if self.on_missing == "absent":
                rows[bad_rows] = -1
            else:
                self.keep &= ~bad_rows
            action = "marked absent" if self.on_missing == "absent" else "skipped"
            notes.append(f"{name}: {int(bad_rows.sum())} rows with a missing or undecodable image {action}")
        return Modality("image", MappedColumn(decoded.images, rows), rows >= 0, notes)

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


def build_manifest(params: ManifestParams, seed: int = 0) -> DatasetBundle:
    return build_bundle(_Manifest(params), params.storage)
