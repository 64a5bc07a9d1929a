"""An on-disk cache of decoded, resized images, shared by every dataset that reads image files.

Images are decoded once, in parallel worker processes, into one uint8 array (N, 3, S, S) on disk, which later
runs memory-map instead of decoding again. An entry is keyed by the ordered file list, each file's size and
modification time, the image side S and the decoding method; any change to one file (or a file added or removed)
gives another key, so the whole entry is rebuilt: simple, and a partial update could not be verified anyway.
The key is streamed into SHA-256 one file at a time and the decoding tasks are made a few at a time, so loading
keeps no Python object per file: with the paths in a :class:`~transmodal.file_list.FileList`, memory stays flat
however many files there are.

An entry is a folder ``images-<key>/`` holding ``images.u8``, ``status.u8`` (per file: decoded, missing or
undecodable) and ``header.json`` (shape, the key's SHA-256 and a checksum of the header itself). It is written
to a temporary folder and renamed into place, so a reader sees a whole entry or none; an entry whose header or
sizes do not match (truncated, edited, damaged) is rebuilt with a warning, never used. The pixel data is not
checksummed: reading it all back would cost as much as decoding, and the atomic rename already guards it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from transmodal.errors import ConfigError, DataWarning
from transmodal.images import decode_rgb, undecodable

CACHE_FORMAT = 2  # 2: the key streamed into SHA-256 file by file (1 hashed one JSON list)
STATUS_MISSING, STATUS_DECODED, STATUS_UNDECODABLE = 0, 1, 2
ENTRY_PREFIX = "images-"
IMAGES, STATUS, HEADER = "images.u8", "status.u8", "header.json"
CHUNK = 64  # files per worker task: large enough to amortise the task's overhead, small enough to balance
QUEUED_PER_WORKER = 4  # tasks queued per worker process: keeps them busy without making every task up front

DECODER = "pillow-rgb-16-bit-scaled-bilinear-centre-crop"  # part of the key: change it when decode_rgb's output changes


_ENTRY_NAME = re.compile(rf"{ENTRY_PREFIX}[0-9a-f]{{32}}")
_TEMPORARY_NAME = re.compile(rf"\.tmp-{ENTRY_PREFIX}[0-9a-f]{{32}}-\d+-[0-9a-f]{{8}}")


def _is_cache_folder(path: Path, name: re.Pattern[str]) -> bool:
    """Whether ``path`` is a folder this cache wrote: its name, and nothing in it but an entry's files."""
    if not name.fullmatch(path.name) or path.is_symlink() or not path.is_dir():
        return False
    return all(child.name in (IMAGES, STATUS, HEADER) and child.is_file() and not child.is_symlink()
               for child in path.iterdir())


def default_cache_dir() -> Path:
    """``$TRANSMODAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/transmodal``, else ``~/.cache/transmodal``."""
    if os.environ.get("TRANSMODAL_CACHE_DIR"):
        return Path(os.environ["TRANSMODAL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "transmodal"


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class DecodedImages:
    """A cache entry opened for reading: ``images`` is memory-mapped, not loaded."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    status: torch.Tensor  # (N,) uint8: STATUS_DECODED, STATUS_MISSING or STATUS_UNDECODABLE
    entry: Path | None
    reused: bool  # True when nothing was decoded


@dataclass
class CacheEntry:
    path: Path
    header: dict[str, Any]
    bytes: int


class ImageCache:
    """Decoded images on disk under ``root``, decoded by ``num_workers`` processes (1: in this process)."""

    def __init__(self, root: Path | None = None, num_workers: int | None = None) -> None:
        self.root = (root or default_cache_dir()).expanduser()
        self.num_workers = num_workers or default_workers()
        # Where the folder was named, for an error about it
        self._origin = ("the cache folder given" if root is not None else "TRANSMODAL_CACHE_DIR"
                        if os.environ.get("TRANSMODAL_CACHE_DIR") else "the default cache folder")

    def checked_root(self) -> Path:
        """The cache folder, refused (with where it was named) if it or the nearest existing folder above it is a
        file; nothing is created yet."""
        existing = next(path for path in (self.root, *self.root.parents) if path.exists())
        if not existing.is_dir():
            self._refuse_unusable_root()
        return self.root

    def load(self, files: Collection[str | os.PathLike[str]], size: int) -> DecodedImages:
        """The decoded images of ``files`` (in order) at side ``size``, from the cache or decoded now.

        ``files`` is read twice at most, one path at a time (a list, or a :class:`~transmodal.file_list.FileList`
        for many files): nothing here keeps a Python object per file, so memory does not grow with their number.
        """
        if len(files) == 0:
            return DecodedImages(torch.empty(0, 3, size, size, dtype=torch.uint8),
                                 torch.empty(0, dtype=torch.uint8), None, True)
        key_sha, status = _key(files, size)
        entry = self.root / f"{ENTRY_PREFIX}{key_sha[:32]}"
        shape = [len(status), 3, size, size]
        if entry.exists():
            problem = _check(entry, key_sha, shape)
            if problem is None:
                return _open(entry, shape, reused=True)
            warnings.warn(f"image cache entry {entry} is unusable ({problem}); decoding the images again",
                          DataWarning, stacklevel=2)
            shutil.rmtree(entry, ignore_errors=True)
        self._build(entry, files, status, size, key_sha, shape)
        return _open(entry, shape, reused=False)

    def _refuse_unusable_root(self, error: OSError | None = None) -> None:
        """A cache folder that is a file, or that cannot be made, named with where its path came from."""
        why = f" ({error.strerror or error})" if error is not None else ": it, or a folder above it, is a file"
        raise ConfigError(f"{self._origin} {self.root} cannot hold the image cache{why}; point data.dataset.cache_dir "
                          f"(or TRANSMODAL_CACHE_DIR, or `transmodal cache --dir`) at a folder you can write")

    def entries(self) -> list[CacheEntry]:
        if self.root.exists() and not self.root.is_dir():
            self._refuse_unusable_root()
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.glob(f"{ENTRY_PREFIX}*")):
            if not _is_cache_folder(path, _ENTRY_NAME):
                continue
            try:
                header = json.loads((path / HEADER).read_text())
            except (OSError, ValueError):
                header = {}
            found.append(CacheEntry(path, header, sum(f.stat().st_size for f in path.iterdir() if f.is_file())))
        return found

    def clear(self) -> int:
        """Remove every entry and leftover temporary folder; returns the bytes freed. Nothing else is touched, so
        a cache folder shared with other files is safe to clear: a folder is removed only if its name is an entry's
        (``images-`` and a 32-digit key) and it holds nothing but an entry's files."""
        if self.root.exists() and not self.root.is_dir():
            self._refuse_unusable_root()
        if not self.root.is_dir():
            return 0
        freed = 0
        candidates = [*self.root.glob(f"{ENTRY_PREFIX}*"), *self.root.glob(f".tmp-{ENTRY_PREFIX}*")]
        for path in candidates:
            if not (_is_cache_folder(path, _ENTRY_NAME) or _is_cache_folder(path, _TEMPORARY_NAME)):
                continue
            freed += sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            shutil.rmtree(path, ignore_errors=True)
        return freed

    def _build(self, entry: Path, files: Collection[str | os.PathLike[str]], status: bytearray, size: int,
               key_sha: str, shape: list[int]) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a file in its place or above it, a folder not writable
            self._refuse_unusable_root(error)
        temporary = self.root / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temporary.mkdir()
        try:
            with open(temporary / IMAGES, "wb") as file:
                file.truncate(_nbytes(shape))
            source = self._decode_all(temporary / IMAGES, files, status, size)
            (temporary / STATUS).write_bytes(bytes(status))
            header = {"format": CACHE_FORMAT, "key_sha256": key_sha, "shape": shape, "decoder": DECODER,
                      "files": shape[0], "source": source, "created": time.time(),
                      "decoded": status.count(STATUS_DECODED)}
            (temporary / HEADER).write_text(json.dumps({**header, "header_sha256": _digest(header)}))
            for name in (IMAGES, STATUS, HEADER):
                _fsync(temporary / name)
            try:
                os.rename(temporary, entry)
            except OSError:  # another process finished the same entry first: keep theirs if it is whole
                if _check(entry, key_sha, shape) is not None:
                    raise
                shutil.rmtree(temporary, ignore_errors=True)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise

    def _decode_all(self, target: Path, files: Collection[str | os.PathLike[str]], status: bytearray,
                    size: int) -> str:
        """Decode every file that exists (status not STATUS_MISSING) into ``target``, setting ``status`` to
        STATUS_DECODED where that worked; returns the folder that holds all the files (for ``cache list``)."""
        todo = len(status) - status.count(STATUS_MISSING)
        source = _CommonFolder()

        def tasks() -> Iterator[tuple[str, list[int], list[str], int]]:
            indices: list[int] = []
            paths: list[str] = []
            for index, path in enumerate(map(_absolute, files)):
                source.add(path)
                if status[index] != STATUS_MISSING:
                    indices.append(index)
                    paths.append(path)
                if len(indices) == CHUNK:
                    yield str(target), indices, paths, size
                    indices, paths = [], []
            if indices:
                yield str(target), indices, paths, size

        workers = min(self.num_workers, -(-todo // CHUNK))
        bar = tqdm(total=todo, desc="decoding images", unit="image", disable=not sys.stderr.isatty(),
                   leave=False)
        with bar:
            for chunk, codes in self._map(_decode_chunk, tasks(), workers):
                for index, code in zip(chunk, codes):
                    status[index] = code
                bar.update(len(chunk))
        return source.folder

    @staticmethod
    def _map(function: Callable[..., Any], tasks: Iterable[tuple[Any, ...]], workers: int) -> Iterator[Any]:
        """``function(*task)`` for each task, in order; at most a few tasks per worker made and queued at a time,
        so that the tasks (each a chunk of paths) never all exist at once."""
        if workers <= 1:
            yield from (function(*task) for task in tasks)
            return
        # fork on Linux: spawn and forkserver would re-run the user's unguarded script in every worker. Forking a
        # process that has used torch's thread pool is safe here only because the workers never call torch.
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            pending: collections.deque[Future[Any]] = collections.deque()
            try:
                for task in tasks:
                    pending.append(pool.submit(function, *task))
                    if len(pending) >= QUEUED_PER_WORKER * workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()


def _decode_chunk(target: str, indices: list[int], paths: list[str], size: int) -> tuple[list[int], list[int]]:
    """Decode ``paths`` into rows ``indices`` of the array file ``target``; returns each file's status."""
    per_image = 3 * size * size
    codes = []
    descriptor = os.open(target, os.O_WRONLY)
    try:
        for index, path in zip(indices, paths):
            try:
                data = decode_rgb(path, size)  # a str: a Path would intern each file's name for good
            except undecodable():
                codes.append(STATUS_UNDECODABLE)
                continue
            os.pwrite(descriptor, data, index * per_image)
            codes.append(STATUS_DECODED)
    finally:
        os.close(descriptor)
    return indices, codes


def _absolute(path: str | os.PathLike[str]) -> str:
    """``path`` made absolute against the working directory, as ``Path.absolute`` does, without a Path object."""
    path = os.fspath(path)
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def _key(files: Collection[str | os.PathLike[str]], size: int) -> tuple[str, bytearray]:
    """The entry's key (SHA-256 of the preprocessing, then each file's absolute path, size and modification time,
    streamed into the digest) and each file's first status: STATUS_MISSING where it does not exist, else
    STATUS_UNDECODABLE until it is decoded."""
    digest = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "size": size, "decoder": DECODER}).encode())
    status = bytearray()
    for path in map(_absolute, files):
        try:
            stat = os.stat(path)
        except OSError:
            status.append(STATUS_MISSING)
            described = b"-"
        else:
            status.append(STATUS_UNDECODABLE)
            described = b"%d %d" % (stat.st_size, stat.st_mtime_ns)
        # NUL ends the path (no path holds one) and the stat has neither NUL nor newline: the record is unambiguous
        digest.update(os.fsencode(path) + b"\0" + described + b"\n")
    return digest.hexdigest(), status


class _CommonFolder:
    """The deepest folder holding every path added so far: ``os.path.commonpath`` over the whole list, computed
    one path at a time without keeping the list (and cheaply: most paths already start with it)."""

    def __init__(self) -> None:
        self.folder = ""
        self._prefix = ""

    def add(self, path: str) -> None:
        if not self.folder:
            self.folder = os.path.dirname(path)
        elif not path.startswith(self._prefix):
            self.folder = os.path.commonpath([self.folder, path])
        self._prefix = self.folder.rstrip(os.sep) + os.sep


def _check(entry: Path, key_sha: str, shape: list[int]) -> str | None:
    """Why ``entry`` cannot be used for this key, or None when it is whole."""
    try:
        header = json.loads((entry / HEADER).read_text())
    except (OSError, ValueError):
        return "no readable header"
    if not isinstance(header, dict) or header.pop("header_sha256", None) != _digest(header):
        return "header checksum mismatch"
    if header.get("key_sha256") != key_sha or header.get("shape") != shape:
        return "header for other files"
    for name, expected in ((IMAGES, _nbytes(shape)), (STATUS, shape[0])):
        try:
            actual = (entry / name).stat().st_size
        except OSError:
            return f"{name} missing"
        if actual != expected:
            return f"{name} has {actual} bytes, expected {expected}"
    return None


def _open(entry: Path, shape: list[int], reused: bool) -> DecodedImages:
    # shared=False maps the file copy-on-write: readable without write permission, never modified
    images = torch.from_file(str(entry / IMAGES), shared=False, size=_nbytes(shape), dtype=torch.uint8)
    status = torch.frombuffer(bytearray((entry / STATUS).read_bytes()), dtype=torch.uint8)
    return DecodedImages(images.view(*shape), status, entry, reused)


def _nbytes(shape: list[int]) -> int:
    count = 1
    for dimension in shape:
        count *= dimension
    return count


def _digest(header: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())
