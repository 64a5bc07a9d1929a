"""CIFAR-10 and CIFAR-100, held in memory as uint8 tensors (N, 3, 32, 32).

The archives are the "python version" of Krizhevsky (2009): pickled dicts of a (N, 3072) uint8 array
stored channel by channel, which is already (N, 3, 32, 32) once reshaped. An archive has its MD5 verified,
downloaded (by torchvision's downloader) or copied there by hand. Extracted files are checked for structure (keys,
shapes, label range) as they are read, and read with an unpickler that constructs nothing but the numpy
arrays the format holds, so a damaged or tampered file gives an error naming it, never runs code.
"""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transmodal.data import DatasetBundle, Split
from transmodal.errors import DataError

from transmodal_vision.corruptions import corrupt
from transmodal_vision.params import CifarParams


@dataclass(frozen=True)
class CifarLayout:
    title: str
    url: str
    archive: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str  # class names in the meta file
    label_key: str  # labels in each batch
    num_classes: int


def _layout(title: str, num_classes: int, label_key: str) -> CifarLayout:
    """File names, URL and checksum as torchvision's dataset classes define them."""
    from torchvision import datasets

    source = datasets.CIFAR10 if num_classes == 10 else datasets.CIFAR100
    return CifarLayout(
        title=title, url=source.url, archive=source.filename, md5=source.tgz_md5, folder=source.base_folder,
        train_files=tuple(name for name, _ in source.train_list),
        test_files=tuple(name for name, _ in source.test_list),
        meta_file=source.meta["filename"], names_key=source.meta["key"], label_key=label_key,
        num_classes=num_classes,
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays only."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} (a CIFAR batch holds only arrays)")


def _load_pickle(path: Path, layout: CifarLayout) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            loaded = _ArrayUnpickler(file, encoding="latin1").load()
    except Exception as error:
        raise _corrupt(path, layout, f"{type(error).__name__}: {error}") from None
    if not isinstance(loaded, dict):
        raise _corrupt(path, layout, f"expected a dict, found {type(loaded).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in loaded.items()}


def _corrupt(path: Path, layout: CifarLayout, reason: str) -> DataError:
    return DataError(
        f"{path} is damaged or not a {layout.title} python-version batch ({reason}). Delete "
        f"{path.parent} and the archive {path.parent.parent / layout.archive}, then download again "
        f"(download: true) or copy a good archive there."
    )


def _read_batch(path: Path, layout: CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    entry = _load_pickle(path, layout)
    data, labels = entry.get("data"), entry.get(layout.label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _corrupt(path, layout, f"'data' should be a uint8 array (N, 3072), found {found}")
    if not isinstance(labels, list | np.ndarray) or len(labels) != data.shape[0]:
        raise _corrupt(path, layout, f"'{layout.label_key}' should list one label per image ({data.shape[0]})")
    label_tensor = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if len(label_tensor) and (label_tensor.min() < 0 or label_tensor.max() >= layout.num_classes):
        raise _corrupt(path, layout, f"labels outside 0..{layout.num_classes - 1}")
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32).clone()
    return images, label_tensor


def _read_split(folder: Path, files: tuple[str, ...], layout: CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_batch(folder / name, layout) for name in files]
    return torch.cat([images for images, _ in parts]), torch.cat([labels for _, labels in parts])


def _read_classes(folder: Path, layout: CifarLayout) -> list[str]:
    path = folder / layout.meta_file
    names = _load_pickle(path, layout).get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.num_classes:
        raise _corrupt(path, layout, f"'{layout.names_key}' should list {layout.num_classes} class names")
    return [name.decode("latin1") if isinstance(name, bytes) else str(name) for name in names]


def locate(root: Path, layout: CifarLayout, download: bool) -> Path:
    """The extracted folder: extracted already, extracted now from an archive on disk, or downloaded."""
    folder = root / layout.folder
    expected = [*layout.train_files, *layout.test_files, layout.meta_file]
    if all((folder / name).is_file() for name in expected):
        return folder
    archive = root / layout.archive
    if archive.is_file():
        from torchvision.datasets.utils import check_integrity, extract_archive

        if not check_integrity(str(archive), layout.md5):  # placed by hand: checked as a download would be
            raise DataError(
                f"{archive} does not have the MD5 checksum of the {layout.title} python version ({layout.md5}): it "
                f"is damaged, incomplete or another file. Delete it and download again (download: true), or copy "
                f"the archive from {layout.url} there."
            )
        try:
            extract_archive(str(archive), str(root))
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DataError(
                f"{archive} cannot be extracted ({type(error).__name__}: {error}). Delete it and download "
                f"again (download: true), or copy a good archive there."
            ) from None
    elif download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(layout.url, str(root), filename=layout.archive, md5=layout.md5)
        except (OSError, RuntimeError) as error:  # no network; a checksum mismatch
            raise DataError(
                f"Downloading {layout.title} from {layout.url} failed ({type(error).__name__}: {error}). "
                f"On a machine without network, download the archive elsewhere and copy it to {archive}."
            ) from None
    else:
        raise DataError(
            f"{layout.title} is not in {root}: expected the extracted folder {folder} or the archive {archive}. "
            f"Set download: true to fetch it from {layout.url} (about 170 MB, checksum-verified), or download "
            f"that file elsewhere and copy it to {archive}."
        )
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{archive} did not provide {', '.join(missing)} in {folder}; is it the {layout.title} python version "
            f"({layout.url})?"
        )
    return folder


def _subset(images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> Split:
    return Split({"image": images[index], "label": labels[index]})


def build_cifar(layout: CifarLayout, params: CifarParams) -> DatasetBundle:
    folder = locate(params.root.expanduser(), layout, params.download)
    classes = _read_classes(folder, layout)
    train_images, train_labels = _read_split(folder, layout.train_files, layout)
    test_images, test_labels = _read_split(folder, layout.test_files, layout)
    if params.val_size >= len(train_labels):
        raise DataError(f"val_size {params.val_size} leaves no training images of {len(train_labels)}")

    generator = torch.Generator().manual_seed(params.seed)
    order = torch.randperm(len(train_labels), generator=generator)
    val_index = order[: params.val_size]
    train_index = order[params.val_size :][: params.train_size]
    test_index = torch.randperm(len(test_labels), generator=generator)[: params.test_size]

    evaluation = {"source/test": _subset(test_images, test_labels, test_index)}
    if params.val_size > 0:
        evaluation = {"source/val": _subset(train_images, train_labels, val_index), **evaluation}
    unlabelled = None
    description = f"{layout.title}: {len(train_index)} training, {params.val_size} validation, {len(test_index)} test"
    corruption = params.corruption
    if corruption is not None:
        corrupted = corrupt(test_images[test_index], corruption.name, corruption.severity, params.seed)
        count = round(len(test_index) * corruption.unlabelled_fraction)
        if not 0 < count < len(test_index):
            raise DataError(
                f"corruption.unlabelled_fraction {corruption.unlabelled_fraction} of {len(test_index)} test images "
                f"leaves an empty unlabelled or target/test split; use more test images"
            )
        unlabelled = Split({"image": corrupted[:count]})
        evaluation["target/test"] = Split({"image": corrupted[count:], "label": test_labels[test_index[count:]]})
        description += (
            f"; target: {corruption.name} severity {corruption.severity} on test images, {count} unlabelled "
            f"for training and {len(test_index) - count} for target/test (Hendrycks and Dietterich, 2019)"
        )
    return DatasetBundle(
        modalities={"image": "image"},
        classes=classes,
        train=_subset(train_images, train_labels, train_index),
        evaluation=evaluation,
        unlabelled=unlabelled,
        description=description,
    )


def build_cifar10(params: CifarParams, seed: int = 0) -> DatasetBundle:
    # Splits and corruption noise follow params.seed, so runs with different training seeds share them.
    return build_cifar(_layout("CIFAR-10", 10, "labels"), params)


def build_cifar100(params: CifarParams, seed: int = 0) -> DatasetBundle:
    return build_cifar(_layout("CIFAR-100", 100, "fine_labels"), params)
