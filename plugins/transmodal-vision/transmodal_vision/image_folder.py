"""A dataset from folders of images, one sub-folder per class, optionally a second folder as target domain.

Images are decoded once, in parallel, into the core's on-disk image cache (resized on the shorter side and
centre-cropped to one square size); later runs on the same files reuse it. Splits hold them in memory as uint8
tensors like every other dataset, or, with ``storage: mmap``, read them batch by batch from the cache file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transmodal.data import DatasetBundle, MappedColumn, Split, select_rows
from transmodal.errors import DataError
from transmodal.image_cache import STATUS_DECODED, ImageCache

from transmodal_vision.params import ImageFolderParams

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp"})


def scan(root: Path, what: str) -> dict[str, list[Path]]:
    """Image files per class folder (sorted), hidden files and folders skipped."""
    if not root.is_dir():
        raise DataError(
            f"image-folder {what} {root} is not a folder; it should hold one sub-folder of images per class"
        )
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(f"image-folder {what} {root} has no class sub-folders (expected {root}/<class>/<image>)")
    files = {
        name: sorted(
            path for path in (root / name).rglob("*")
            if path.is_file() and path.suffix.lower() in EXTENSIONS
            and not any(part.startswith(".") for part in path.relative_to(root).parts)
        )
        for name in classes
    }
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise DataError(
            f"image-folder {what} {root}: no images ({', '.join(sorted(EXTENSIONS))}) in class folder(s) "
            f"{', '.join(empty)}"
        )
    return files


def _load(files: dict[str, list[Path]], class_index: dict[str, int], params: ImageFolderParams,
          ) -> tuple[MappedColumn, torch.Tensor]:
    """Every image of ``files`` (from the image cache, still on disk) and its label."""
    paths = [path for class_paths in files.values() for path in class_paths]
    decoded = ImageCache(params.cache_dir, params.num_workers).load(paths, params.image_size)
    failed = [str(path) for path, status in zip(paths, decoded.status.tolist()) if status != STATUS_DECODED]
    if failed:  # the folders were listed a moment ago, so a failure is a file that cannot be decoded
        raise DataError(f"image-folder: cannot decode image files ({len(failed)}): {', '.join(failed[:3])}"
                        f"{', ...' if len(failed) > 3 else ''}; remove or replace them")
    labels = [class_index[name] for name, class_paths in files.items() for _ in class_paths]
    return MappedColumn(decoded.images, torch.arange(len(paths))), torch.tensor(labels, dtype=torch.int64)


def build_image_folder(params: ImageFolderParams, seed: int = 0) -> DatasetBundle:
    # Splits follow params.seed, so runs with different training seeds share them.
    source_files = scan(params.root.expanduser(), "root")
    classes = list(source_files)
    class_index = {name: index for index, name in enumerate(classes)}
    images, labels = _load(source_files, class_index, params)
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
        target_files = scan(params.target_root.expanduser(), "target_root")
        unknown = sorted(set(target_files) - set(classes))
        if unknown:
            raise DataError(
                f"image-folder: target_root class folders {', '.join(unknown)} are not among the source classes "
                f"({', '.join(classes)}); the two folders must use the same class names"
            )
        target_images, target_labels = _load(target_files, class_index, params)
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
