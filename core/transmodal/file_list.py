"""A list of file paths kept in a temporary file on disk instead of as Python objects in memory.

A dataset of 400k image files listed as ``Path`` objects holds about 100 MiB of Python objects (a few hundred
bytes a path) just to name its files, and that grows with every file. A :class:`FileList` writes each path, as it
is added, to an anonymous temporary file (its bytes from ``os.fsencode``, each ended by NUL: the one byte no path
can hold) and reads them back through a memory map of that file, whose pages belong to the file, not to the
process's own memory. So its memory does not depend on its length, and it can be iterated as often as needed.

Reading is sequential; ``files[i]`` scans from the start, for the few paths that an error message names.
"""

from __future__ import annotations

import itertools
import mmap
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

END = b"\0"


class FileList:
    """Paths in the order they were appended, stored in a temporary file under ``directory`` (default: the
    system's temporary folder; pass a folder on disk where that one is held in memory, as a tmpfs /tmp is)."""

    def __init__(self, paths: Iterable[str | os.PathLike[str]] = (), directory: Path | None = None) -> None:
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=directory)  # removed when closed or collected
        self._count = 0
        self.extend(paths)

    def append(self, path: str | os.PathLike[str]) -> None:
        data = os.fsencode(path)
        if END in data:
            raise ValueError(f"a file path cannot contain a NUL byte: {path!r}")
        self._file.write(data + END)
        self._count += 1

    def extend(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        for path in paths:
            self.append(path)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        self._file.flush()
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(self._file.fileno(), size, access=mmap.ACCESS_READ) as data:
            start = 0
            for _ in range(self._count):  # the paths appended by now, even if more are appended meanwhile
                end = data.find(END, start)
                yield os.fsdecode(data[start:end])
                start = end + 1

    def __getitem__(self, index: int) -> str:
        if not -self._count <= index < self._count:
            raise IndexError(f"FileList index {index} out of range ({self._count} paths)")
        paths = iter(self)
        try:
            return next(itertools.islice(paths, index % self._count, None))
        finally:
            paths.close()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FileList:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileList({self._count} paths)"
