"""A dataset from folders of images, one sub-folder per class, optionally a second folder as target domain.

Images are decoded once, in parallel, into the core's on-disk image cache (resized on the shorter side and
centre-cropped to one square size); later runs on the same files reuse it. Splits hold them in memory as uint8
tensors like every other dataset, or, with ``storage: mmap``, read them batch by batch from the cache file.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transmodal.data import DatasetBundle, MappedColumn, Split, select_rows
from transmodal.errors import DataError, DataWarning
from transmodal.file_list import FileList
from transmodal.image_cache import STATUS_DECODED, ImageCache
from transmodal.images import IMAGE_SUFFIXES

from transmodal_vision.params import ImageFolderParams

# The suffixes `transmodal predict` takes as images, so a model can be trained on every kind of file it predicts on.
EXTENSIONS = IMAGE_SUFFIXES


@dataclass
class Listing:
    """The image files under one root: ``files`` class after class, ``counts[i]`` of them in ``classes[i]``.

    The paths are a :class:`FileList` (on disk, not Python objects), so listing a folder of any size keeps memory
    flat: only one directory's names are held at a time, to sort them."""

    classes: list[str]
    files: FileList
    counts: list[int]


def scan(root: Path, what: str, directory: Path | None = None) -> Listing:
    """Image files per class folder, in sorted path order (as ``sorted(folder.rglob("*"))``), hidden files and
    folders skipped; the list is kept in a temporary file under ``directory``."""
    if not root.is_dir():
        raise DataError(
            f"image-folder {what} {root} is not a folder; it should hold one sub-folder of images per class"
        )
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(f"image-folder {what} {root} has no class sub-folders (expected {root}/<class>/<image>)")
    files = FileList(directory=directory)
    counts = []
    skipped: Counter[str] = Counter()  # suffixes of the files that are not images, so their number can be told
    for name in classes:
        before = len(files)
        files.extend(_images_under(os.path.join(root, name), skipped))
        counts.append(len(files) - before)
    if skipped:
        kinds = ", ".join(f"{suffix or 'no suffix'}: {count}" for suffix, count in sorted(skipped.items()))
        warnings.warn(f"image-folder {what} {root}: skipped {skipped.total()} file(s) that are not images ({kinds}); "
                      f"images are {', '.join(sorted(EXTENSIONS))}", DataWarning, stacklevel=2)
    empty = [name for name, count in zip(classes, counts) if count == 0]
    if empty:
        files.close()
        raise DataError(
            f"image-folder {what} {root}: no images ({', '.join(sorted(EXTENSIONS))}) in class folder(s) "
            f"{', '.join(empty)}"
        )
    return Listing(classes, files, counts)


def _images_under(folder: str, skipped: Counter[str]) -> Iterator[str]:
    """The image files under ``folder``, depth first with each folder's entries sorted by name (the order of
    sorting the whole tree's paths); hidden entries skipped, symbolic links to folders not followed (as rglob).
    Other files are counted in ``skipped`` by their (lower-case) suffix."""
    with os.scandir(folder) as entries:
        listed = sorted((entry.name, entry.is_dir() and not entry.is_symlink(), entry.is_file())
                        for entry in entries if not entry.name.startswith("."))
    for name, is_folder, is_file in listed:
        path = os.path.join(folder, name)
        if is_folder:
            yield from _images_under(path, skipped)
        elif is_file:
            suffix = os.path.splitext(name)[1].lower()
            if suffix in EXTENSIONS:
                yield path
            else:
                skipped[suffix] += 1


def _load(listing: Listing, class_index: dict[str, int], params: ImageFolderParams,
          ) -> tuple[MappedColumn, torch.Tensor]:
    """Every image of ``listing`` (from the image cache, still on disk) and its label; closes the listing."""
    with listing.files as files:
        decoded = ImageCache(params.cache_dir, params.num_workers).load(files, params.image_size)
        failed = (decoded.status != STATUS_DECODED).nonzero().flatten()
        if len(failed):  # the folders were listed a moment ago, so a failure is a file that cannot be decoded
            shown = [files[index] for index in failed[:3].tolist()]
            raise DataError(f"image-folder: cannot decode image files ({len(failed)}): {', '.join(shown)}"
                            f"{', ...' if len(failed) > 3 else ''}; remove or replace them")
    labels = torch.repeat_interleave(torch.tensor([class_index[name] for name in listing.classes]),
                                     torch.tensor(listing.counts))
    return MappedColumn(decoded.images, torch.arange(len(labels))), labels


def build_image_folder(params: ImageFolderParams, seed: int = 0) -> DatasetBundle:
    # Splits follow params.seed, so runs with different training seeds share them.
    listing_folder = ImageCache(params.cache_dir).checked_root()  # the file lists on disk beside the cache
    source = scan(params.root.expanduser(), "root", listing_folder)
    classes = source.classes
    class_index = {name: index for index, name in enumerate(classes)}
    images, labels = _load(source, class_index, params)
    generator = torch.Generator().manual_seed(params.seed)
    order = torch.randperm(len(labels), generator=generator)
    n_val = round(len(order) * params.val_fraction)
    n_test = round(len(order) * params.test_fraction)
    if len(order) - n_val - n_test < 1:
        raise DataError(f"image-folder: {len(order)} images leave none for training after the val and test fractions")
    val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]

    def split(index: torch.Tensor) -> Split:
        index = index.sort().values  # file order: memory-mapped reads stay sequential
        return Split({"image": select_rows(images, index, params.storage), "label": labels[index]})

    evaluation = {name: split(index) for name, index in (("source/val", val), ("source/test", test)) if len(index)}
    unlabelled = None
    description = f"{len(classes)} classes from {params.root}: {len(train)} training images"
    if params.target_root is not None:
        target = scan(params.target_root.expanduser(), "target_root", listing_folder)
        unknown = sorted(set(target.classes) - set(classes))
        if unknown:
            target.files.close()
            raise DataError(
                f"image-folder: target_root class folders {', '.join(unknown)} are not among the source classes "
                f"({', '.join(classes)}); the two folders must use the same class names"
            )
        target_images, target_labels = _load(target, class_index, params)
        target_order = torch.randperm(len(target_labels), generator=generator)
        n_target_test = round(len(target_order) * params.target_test_fraction)
        if not 0 < n_target_test < len(target_order):
            raise DataError(
                f"image-folder: {len(target_order)} target images cannot be split into unlabelled training images "
                f"and target/test with target_test_fraction {params.target_test_fraction}"
            )
        test_index = target_order[:n_target_test].sort().values
        unlabelled_index = target_order[n_target_test:].sort().values
        evaluation["target/test"] = Split({"image": select_rows(target_images, test_index, params.storage),
                                           "label": target_labels[test_index]})
        unlabelled = Split({"image": select_rows(target_images, unlabelled_index, params.storage)})
        description += f"; target {params.target_root}: {len(unlabelled_index)} unlabelled, {n_target_test} test"
    return DatasetBundle(
        modalities={"image": "image"},
        classes=classes,
        train=split(train),
        evaluation=evaluation,
        unlabelled=unlabelled,
        description=description,
    )
