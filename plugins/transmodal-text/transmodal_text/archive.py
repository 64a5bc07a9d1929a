"""Downloading with a checksum, and tar extraction that cannot write outside its folder.

Only the standard library: a dataset download must not need torchvision. Both steps are atomic: a download
is written to ``.part`` and renamed once its checksum matches; an archive is extracted into a temporary
folder that is renamed into place only when every member was extracted, so an interrupted or refused
extraction leaves nothing half-done behind.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from transmodal.errors import DataError

_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, sha256: str) -> None:
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise DataError(
            f"{path} does not have the expected SHA-256 (expected {sha256}, got {actual}): it is truncated or "
            f"a different file. Delete it and download it again."
        )


def download(url: str, destination: Path, sha256: str, timeout: float = 60.0) -> None:
    """Fetch ``url`` to ``destination``, checking its SHA-256 before it gets its final name."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as file:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                file.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as error:
        partial.unlink(missing_ok=True)
        reason = getattr(error, "reason", error)
        raise DataError(
            f"could not download {url}: {reason}. Download it yourself and put it at {destination}."
        ) from None
    if digest.hexdigest() != sha256.lower():
        partial.unlink(missing_ok=True)
        raise DataError(
            f"the download from {url} does not have the expected SHA-256 (expected {sha256}, got "
            f"{digest.hexdigest()}); it was interrupted or the file changed. Try again, or download it yourself "
            f"to {destination}."
        )
    os.replace(partial, destination)


def _member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """The member's relative path, refusing anything that could land outside the extraction folder."""
    name = member.name
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts:
        raise DataError(f"{archive}: refusing to extract member '{name}': its path leaves the target folder")
    if not (member.isfile() or member.isdir()):
        kind = "a link" if member.issym() or member.islnk() else "not a regular file or folder"
        raise DataError(f"{archive}: refusing to extract member '{name}': it is {kind}")
    return path


def safe_extract(archive: Path, destination: Path) -> None:
    """Extract a (compressed) tar archive into ``destination``: regular files and folders only."""
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=destination))
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                relative = _member_path(member, archive)
                target = staging.joinpath(*relative.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular files always have data
                with source, target.open("wb") as file:
                    shutil.copyfileobj(source, file, _CHUNK)
        for entry in staging.iterdir():
            final = destination / entry.name
            if final.exists():
                raise DataError(f"extracting {archive}: {final} already exists (an incomplete earlier copy?); "
                                f"delete it and run again")
            os.replace(entry, final)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(
            f"{archive} is truncated or corrupt ({type(error).__name__}: {error}). Delete it and download it again."
        ) from None
    except OSError as error:
        raise DataError(f"cannot extract {archive} into {destination}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
