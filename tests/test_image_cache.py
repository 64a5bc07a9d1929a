"""The decoded-image cache: reuse, invalidation, damaged entries, parallel decoding, the CLI, and image-folder."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
from pathlib import Path

import pytest
import torch

from transmodal import data, image_cache
from transmodal.buffer_pool import BufferPool
from transmodal.cli import main
from transmodal.data import BatchLoader, MappedColumn
from transmodal.file_list import FileList
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


def test_a_file_list_on_disk_and_a_list_of_paths_share_an_entry(tmp_path, decodes, monkeypatch, request):
    paths = _images(tmp_path / "images", 4)
    cache = ImageCache(tmp_path / "cache", num_workers=1)
    listed = FileList(paths, directory=tmp_path / "lists")
    request.addfinalizer(listed.close)
    first = cache.load(listed, 8)
    monkeypatch.chdir(tmp_path)  # relative paths are keyed by the absolute path they name
    again = cache.load([path.relative_to(tmp_path) for path in paths], 8)
    assert not first.reused and again.reused and len(decodes) == 4 and torch.equal(first.images, again.images)
    os.utime(paths[3], ns=(0, paths[3].stat().st_mtime_ns + 5_000_000_000))  # one file changes: rebuilt
    assert not cache.load(listed, 8).reused and len(decodes) == 8
    listed.append(tmp_path / "images" / "gone.png")  # one more file (missing): another entry
    grown = cache.load(listed, 8)
    assert not grown.reused and grown.status.tolist() == [STATUS_DECODED] * 4 + [STATUS_MISSING]


def _peak_python_bytes(run) -> int:
    """The most memory that Python objects took while ``run()`` ran, above what they held before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _same_png_files(folder: Path, count: int) -> list[Path]:
    """``count`` copies of one tiny PNG: quick to write and to decode."""
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), (30, 60, 90)).save(buffer, format="PNG")
    folder.mkdir(parents=True)
    paths = [folder / f"{index:05d}.png" for index in range(count)]
    for path in paths:
        path.write_bytes(buffer.getvalue())
    return paths


def test_loading_keeps_no_python_object_per_file(tmp_path):
    """The key, the file statuses and the decoding tasks are streamed: the Python memory of loading (decoding,
    then reusing the entry) hardly grows with the number of files. Keeping one str per file would add 100+ bytes
    a file; the bound leaves room for the one status byte per file and the allocator's rounding."""
    peaks = {}
    for count in (1000, 4000):
        cache = ImageCache(tmp_path / "cache", num_workers=1)
        with FileList(_same_png_files(tmp_path / f"images{count}", count), tmp_path / "lists") as files:
            peaks[count] = [_peak_python_bytes(lambda: cache.load(files, 8)) for _ in ("decode", "reuse")]
    for small, large in zip(peaks[1000], peaks[4000]):
        assert (large - small) / 3000 < 16, peaks


def test_a_file_list_keeps_its_paths_on_disk(tmp_path):
    names = ["b.png", "a/c.png", "caf\u00e9.jpg", os.fsdecode(b"raw-\xff.png")]  # a name that is not UTF-8 too
    with FileList((tmp_path / name for name in names), directory=tmp_path) as files:
        assert len(files) == 4 and list(files) == [str(tmp_path / name) for name in names] == list(files)
        assert files[2] == str(tmp_path / names[2]) and files[-1] == str(tmp_path / names[3])
        with pytest.raises(IndexError):
            files[4]
        with pytest.raises(ValueError, match="NUL"):
            files.append("bad\0name")
        files.append("last")
        assert len(files) == 5 and list(files)[-1] == "last"
    with FileList() as empty:
        assert list(empty) == [] and len(empty) == 0

    def listed(count: int) -> None:  # each path goes to the file as it is appended: memory does not grow
        with FileList((f"/data/{index:07d}.png" for index in range(count)), tmp_path):
            pass

    sizes = [_peak_python_bytes(lambda count=count: listed(count)) for count in (2000, 8000)]
    assert sizes[1] - sizes[0] < 6000 * 8, sizes


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: all Pillow needs to refuse one over its pixel limit."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_missing_and_undecodable_files_are_marked(tmp_path):
    paths = _images(tmp_path / "images", 4)
    paths[1].write_bytes(b"this is no image")
    paths[3].write_bytes(_png_header(20_000, 20_000))  # 400 Mpixel: Pillow's decompression-bomb guard
    paths.append(tmp_path / "images" / "gone.png")
    loaded = ImageCache(tmp_path / "cache", num_workers=1).load(paths, 8)
    assert loaded.status.tolist() == [STATUS_DECODED, STATUS_UNDECODABLE, STATUS_DECODED, STATUS_UNDECODABLE,
                                      STATUS_MISSING]
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



def test_mapped_batches_stay_valid_while_held_and_their_buffers_are_reused_once_dropped(tmp_path, monkeypatch):
    """A batch is never overwritten while anything references it (the batch, a view of it, a NumPy array of it),
    so code that keeps batches, as evaluation and prediction keep their outputs, gets them intact; a loop that
    drops each batch reuses the buffers instead of allocating one per step."""
    monkeypatch.setattr(data, "BATCH_BUFFERS", BufferPool(slots=4))  # none lent out by other tests
    paths = _images(tmp_path / "images", 20)
    array = ImageCache(tmp_path / "cache", num_workers=1).load(paths, 8).images
    column = MappedColumn(array, torch.arange(20))
    loader = BatchLoader({"image": column}, batch_size=4, shuffle=True, seed=3)
    expected = [array[indices] for indices in loader.order(0).split(4)]

    kept = [batch["image"] for batch in loader.epoch(0)]
    view, numpy_array = kept[0][1:], kept[1].numpy()
    del kept
    later = [batch["image"] for batch in loader.epoch(0)]  # must not reuse the buffers the view and array hold
    assert torch.equal(view, expected[0][1:]) and torch.equal(torch.from_numpy(numpy_array), expected[1])
    assert all(torch.equal(batch, wanted) for batch, wanted in zip(later, expected, strict=True))
    del view, numpy_array, later

    allocated, empty = [], torch.empty
    monkeypatch.setattr(torch, "empty", lambda *shape, **options: allocated.append(shape) or empty(*shape, **options))
    for batch, wanted in zip(loader.epoch(0), expected, strict=True):
        assert torch.equal(batch["image"], wanted)
    # the pool's buffers, held by the dropped batches before, serve the whole epoch: no new batch buffer
    assert [shape for shape in allocated if shape != (0,)] == []


def test_cache_list_and_clear(tmp_path, capsys):
    paths = _images(tmp_path / "images", 3)
    ImageCache(tmp_path / "cache", num_workers=1).load(paths, 8)
    (tmp_path / "cache" / "keep-me.txt").write_text("not ours")
    (tmp_path / "cache" / "images-train").mkdir()  # a user's folder that only looks like an entry by its prefix
    (tmp_path / "cache" / "images-train" / "cat.png").write_bytes(b"a photo")
    (tmp_path / "cache" / "images-notes").write_text("a file, not a folder")
    assert main(["cache", "list", "--dir", str(tmp_path / "cache")]) == 0
    listed = capsys.readouterr().out
    assert "3 files, 8x8" in listed and str(tmp_path / "images") in listed
    assert main(["cache", "clear", "--dir", str(tmp_path / "cache")]) == 0
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == ["images-notes", "images-train",
                                                                          "keep-me.txt"]
    assert (tmp_path / "cache" / "images-train" / "cat.png").read_bytes() == b"a photo"
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


def test_image_folder_keeps_no_python_object_per_image(tmp_path):
    """Listing the folders, labelling and loading the cache: the dataset's Python memory hardly grows with the
    number of images (only one folder's names are held at a time, to sort them)."""
    pytest.importorskip("transmodal_vision")
    from transmodal_vision.image_folder import build_image_folder
    from transmodal_vision.params import ImageFolderParams

    peaks = []
    for count in (400, 1600):
        for name in ("cats", "dogs", "fish", "owls"):
            _same_png_files(tmp_path / f"photos{count}" / name, count // 4)
        params = ImageFolderParams(root=tmp_path / f"photos{count}", image_size=8, num_workers=1, storage="mmap",
                                   cache_dir=tmp_path / "cache")
        build_image_folder(params)  # decode once: what follows is a run that reuses the entry
        peaks.append(_peak_python_bytes(lambda params=params: build_image_folder(params)))
    # one Path per image (as sorted(rglob) gives) would add several hundred bytes an image
    assert (peaks[1] - peaks[0]) / 1200 < 64, peaks


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_a_cache_folder_that_cannot_be_one_is_named_with_its_variable(tmp_path, monkeypatch, capsys, where):
    from transmodal.errors import ConfigError

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TRANSMODAL_CACHE_DIR", str(tmp_path / where))
    with pytest.raises(ConfigError, match=f"TRANSMODAL_CACHE_DIR {tmp_path / where} cannot hold the image cache"):
        ImageCache(num_workers=1).load(_images(tmp_path / "images", 2), 8)
    if where == "a-file":
        assert main(["cache", "list"]) == 2
        assert "cannot hold the image cache: it, or a folder above it, is a file" in capsys.readouterr().err


def test_16_bit_greyscale_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    from transmodal.images import decode_rgb

    for value, expected in ((1000, 4), (60000, 233), (65535, 255)):  # round(value / 257), give or take one
        Image.new("I;16", (8, 8), value).save(tmp_path / "grey16.png")
        assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
        assert all(abs(byte - expected) <= 1 for byte in decode_rgb(tmp_path / "grey16.png", 4))
