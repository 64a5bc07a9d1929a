"""The decoded-image cache: reuse, invalidation, damaged entries, parallel decoding, the CLI, and image-folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from transmodal import image_cache
from transmodal.cli import main
from transmodal.data import BatchLoader, MappedColumn
from transmodal.image_cache import STATUS_DECODED, STATUS_MISSING, STATUS_UNDECODABLE, ImageCache

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index}.png"
        Image.new("RGB", (12 + index, 10), (index * 20 % 256, 100, 50)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """Every file decoded in this process (num_workers=1), in order."""
    seen: list[Path] = []
    original = image_cache.decode_rgb

    def counting(path: Path, size: int) -> bytes:
        seen.append(path)
        return original(path, size)

    monkeypatch.setattr(image_cache, "decode_rgb", counting)
    return seen


def test_second_load_decodes_nothing(tmp_path, decodes):
    paths = _images(tmp_path / "images", 5)
    cache = ImageCache(tmp_path / "cache", num_workers=1)
    first = cache.load(paths, 8)
    assert len(decodes) == 5 and not first.reused
    second = ImageCache(tmp_path / "cache", num_workers=1).load(paths, 8)
    assert len(decodes) == 5 and second.reused
    assert torch.equal(first.images, second.images) and first.images.shape == (5, 3, 8, 8)
    assert second.status.eq(STATUS_DECODED).all()
    ImageCache(tmp_path / "cache", num_workers=1).load(paths, 16)  # other preprocessing: another entry
    assert len(decodes) == 10


@pytest.mark.parametrize("change", ["rewrite", "touch", "add", "remove"])
def test_a_changed_added_or_removed_file_invalidates_the_entry(tmp_path, decodes, change):
    paths = _images(tmp_path / "images", 4)
    cache = ImageCache(tmp_path / "cache", num_workers=1)
    before = cache.load(paths, 8)
    if change == "rewrite":  # new content, new size
        Image.new("RGB", (30, 30), (255, 255, 255)).save(paths[2])
    elif change == "touch":  # same bytes, new modification time
        stat = paths[2].stat()
        os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    elif change == "add":
        paths += _images(tmp_path / "more", 1)
    else:
        paths = paths[:-1]
    after = cache.load(paths, 8)
    assert not after.reused and len(decodes) == 4 + len(paths)  # the whole entry is decoded again
    if change == "rewrite":
        assert not torch.equal(before.images[2], after.images[2]) and after.images[2].eq(255).all()


def test_missing_and_undecodable_files_are_marked(tmp_path):
    paths = _images(tmp_path / "images", 3)
    paths[1].write_bytes(b"this is no image")
    paths.append(tmp_path / "images" / "gone.png")
    loaded = ImageCache(tmp_path / "cache", num_workers=1).load(paths, 8)
    assert loaded.status.tolist() == [STATUS_DECODED, STATUS_UNDECODABLE, STATUS_DECODED, STATUS_MISSING]
    assert loaded.images[1].eq(0).all() and loaded.images[3].eq(0).all()


@pytest.mark.parametrize("damage", ["truncate", "header", "other-key", "no-status"])
def test_a_damaged_entry_is_rebuilt_never_used(tmp_path, decodes, damage):
    paths = _images(tmp_path / "images", 4)
    cache = ImageCache(tmp_path / "cache", num_workers=1)
    good = cache.load(paths, 8).images.clone()
    (entry,) = [path for path in (tmp_path / "cache").iterdir()]
    if damage == "truncate":
        with open(entry / "images.u8", "r+b") as file:
            file.truncate(100)
    elif damage == "header":
        (entry / "header.json").write_text((entry / "header.json").read_text()[:-20])
    elif damage == "other-key":  # a header edited to claim these files: its own checksum no longer matches
        header = json.loads((entry / "header.json").read_text())
        header["key_sha256"] = "0" * 64
        (entry / "header.json").write_text(json.dumps(header))
    else:
        (entry / "status.u8").unlink()
    with pytest.warns(UserWarning, match="unusable"):
        rebuilt = cache.load(paths, 8)
    assert not rebuilt.reused and len(decodes) == 8 and torch.equal(rebuilt.images, good)
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [entry.name]  # no temporary left behind


def test_parallel_decoding_gives_the_same_array(tmp_path):
    paths = _images(tmp_path / "images", 150)  # three chunks of 64
    serial = ImageCache(tmp_path / "serial", num_workers=1).load(paths, 8)
    parallel = ImageCache(tmp_path / "parallel", num_workers=2).load(paths, 8)
    assert torch.equal(serial.images, parallel.images) and torch.equal(serial.status, parallel.status)


def test_mapped_column_gathers_like_a_tensor(tmp_path):
    paths = _images(tmp_path / "images", 20)
    array = ImageCache(tmp_path / "cache", num_workers=1).load(paths, 8).images
    rows = torch.tensor([5, -1, 19, 0, 7, 7, 12])
    column = MappedColumn(array, rows)
    indices = torch.tensor([6, 1, 0, 3, 2])
    expected = torch.stack([array[r] if r >= 0 else torch.zeros(3, 8, 8, dtype=torch.uint8)
                            for r in rows[indices].tolist()])
    assert torch.equal(column[indices], expected)
    loader = BatchLoader({"image": column, "label": torch.arange(7)}, batch_size=3, shuffle=True, seed=1)
    in_memory = BatchLoader({"image": column.load(), "label": torch.arange(7)}, batch_size=3, shuffle=True, seed=1)
    for mapped, loaded in zip(loader.epoch(2), in_memory.epoch(2)):
        assert torch.equal(mapped["image"], loaded["image"]) and torch.equal(mapped["label"], loaded["label"])


def test_cache_list_and_clear(tmp_path, capsys):
    paths = _images(tmp_path / "images", 3)
    ImageCache(tmp_path / "cache", num_workers=1).load(paths, 8)
    (tmp_path / "cache" / "keep-me.txt").write_text("not ours")
    assert main(["cache", "list", "--dir", str(tmp_path / "cache")]) == 0
    listed = capsys.readouterr().out
    assert "3 files, 8x8" in listed and str(tmp_path / "images") in listed
    assert main(["cache", "clear", "--dir", str(tmp_path / "cache")]) == 0
    assert [path.name for path in (tmp_path / "cache").iterdir()] == ["keep-me.txt"]
    main(["cache", "list", "--dir", str(tmp_path / "cache")])
    assert "no cached images" in capsys.readouterr().out


def test_default_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TRANSMODAL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ImageCache().root == tmp_path / "xdg" / "transmodal"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ImageCache().root == tmp_path / "home" / ".cache" / "transmodal"


def test_image_folder_reuses_the_cache_and_can_stay_memory_mapped(tmp_path, decodes):
    pytest.importorskip("transmodal_vision")
    from transmodal.plugins import get_plugins

    for name, colour in (("cats", (200, 0, 0)), ("dogs", (0, 200, 0))):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (20, 16), colour).save(tmp_path / "photos" / name / f"{index}.png")
    dataset = get_plugins().get("dataset", "image-folder")
    params = {"root": str(tmp_path / "photos"), "image_size": 8, "num_workers": 1, "val_fraction": 0.25}
    memory = dataset.build(0, **params)
    assert len(decodes) == 8
    mapped = dataset.build(0, **params, storage="mmap")
    assert len(decodes) == 8 and isinstance(mapped.train.data["image"], MappedColumn)
    assert torch.equal(mapped.train.data["image"].load(), memory.train.data["image"])
