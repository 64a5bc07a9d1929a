"""Writing the embedded dataset as files: PNG images and a manifest.csv that the ``manifest`` dataset reads.

It shows the manifest format on real files, and gives a starting point to replace with one's own data.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from transmodal.builtin.datasets import SyntheticShapesParams, build_synthetic_shapes
from transmodal.data import Split
from transmodal.errors import ConfigError
from transmodal.images import pillow

MANIFEST = "manifest.csv"
COLUMNS = ["path", "caption", "label", "domain", "split"]


def export_synthetic_shapes(directory: Path, params: SyntheticShapesParams) -> tuple[Path, int]:
    """Write ``directory/images/<domain>-<split>/<n>.png`` and ``directory/manifest.csv``; returns the manifest's
    path and its number of rows. Target training rows are written without their label, as unlabelled data."""
    image = pillow()
    manifest = directory / MANIFEST
    if manifest.exists():
        raise ConfigError(f"{manifest} exists; export into another folder, or delete it first")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file in the way, a read-only place
        raise ConfigError(f"{directory}: cannot make the folder there ({error.strerror}); choose another") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{directory}: cannot write into it; choose a folder you can write to")
    bundle = build_synthetic_shapes(params)
    parts: list[tuple[str, str, Split | None, bool]] = [
        ("source", "train", bundle.train, True),
        ("source", "val", bundle.evaluation["source/val"], True),
        ("target", "train", bundle.unlabelled, False),
        ("target", "test", bundle.evaluation["target/test"], True),
    ]
    rows = []
    for domain, split_name, split, labelled in parts:
        if split is None:
            continue
        folder = directory / "images" / f"{domain}-{split_name}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = split.data["image"].permute(0, 2, 3, 1).contiguous()  # PNG wants (H, W, C)
        height, width = pixels.shape[1:3]
        for index in range(len(split)):
            path = folder / f"{index:05d}.png"
            image.frombytes("RGB", (width, height), bytes(pixels[index].clone().untyped_storage())).save(path)
            rows.append({
                "path": path.relative_to(directory).as_posix(),
                "caption": split.data["text"][index],
                "label": bundle.classes[int(split.data["label"][index])] if labelled else "",
                "domain": domain,
                "split": split_name,
            })
    temporary = manifest.with_suffix(".csv.tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, manifest)  # a manifest is either whole or absent
    return manifest, len(rows)
