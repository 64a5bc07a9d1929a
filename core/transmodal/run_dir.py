"""The run directory on disk: claimed atomically for a new run, tidied when a stopped run is resumed.

Two processes started together must never share a directory, so a new one is created with a single ``os.mkdir``
(which fails if the name exists) instead of "check, then create". A run stopped by a kill may leave a temporary
checkpoint and a damaged last line in ``metrics.jsonl``; resuming removes the first and sets the second aside.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from transmodal.config import Experiment, load_experiment, load_yaml
from transmodal.errors import CheckpointError, ConfigError, RunDirectoryError

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
DAMAGED_SUFFIX = ".damaged"
_MAX_CLASHES = 1000  # generated names tried per second before giving up


def temporary_beside(path: Path) -> tuple[int, str]:
    """An open, new file in ``path``'s folder, to be renamed to ``path`` once whole, with the permissions a plain
    ``open`` would give it (``mkstemp`` makes it readable by its owner alone)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if hasattr(os, "fchmod"):  # POSIX; on Windows, mkstemp's file is no more private than any other
        os.fchmod(handle, 0o666 & ~_umask())
    return handle, temporary


def _umask() -> int:
    umask = os.umask(0)  # read by setting it: there is no other way
    os.umask(umask)
    return umask


def open_up(folder: Path) -> None:
    """Give a folder made by ``mkdtemp`` (private to its owner) and everything in it the permissions that
    ``mkdir`` and ``open`` would have given them: what is written to be shared, a report or an exported model."""
    umask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside ``path`` and rename: a reader (or a crash) never sees half a file under the real name."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``write_text_atomic`` for bytes. The temporary file is a new one (never a planted link to follow)."""
    handle, temporary = temporary_beside(path)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def refuse_repeated(run_dirs: list[Path], purpose: str) -> None:
    """One run named twice (by another spelling or a link) would count twice in what ``purpose`` says."""
    resolved = [path.resolve() for path in run_dirs]
    repeated = next((path for path, where in zip(run_dirs, resolved) if resolved.count(where) > 1), None)
    if repeated is not None:
        raise ConfigError(f"{repeated} is named twice (or through a link); {purpose}")


def load_run_experiment(run_dir: Path) -> Experiment:
    """The experiment a run directory trains, from its config.yaml."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    return load_saved_experiment(config, "a run's config.yaml holds the experiment it trains, so this run cannot be "
                                         "continued or evaluated without it")


def load_saved_experiment(config: Path, why_needed: str) -> Experiment:
    """The experiment saved beside a model (a run's or a bundle's config.yaml); an empty file is refused, as it
    would read as the default experiment: another model than the weights beside it."""
    if not load_yaml(config):
        raise CheckpointError(f"{config} is empty; {why_needed}")
    return load_experiment(config)


def create_run_dir(experiment: Experiment) -> Path:
    """A new, empty run directory inside ``output.dir``: ``output.name``, or the experiment's name and a
    timestamp (with ``-2``, ``-3``... when another run took that name in the same second)."""
    parent = _usable_parent(experiment.output.dir)
    if experiment.output.name is not None:
        run_dir = parent / experiment.output.name
        if not _claim(run_dir):
            raise RunDirectoryError(
                f"run directory {run_dir} already exists; continue it with: transmodal train --resume {run_dir}, "
                f"or choose another output.name"
            )
        return run_dir
    stem = f"{experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in range(1, _MAX_CLASHES + 1):
        run_dir = parent / (stem if suffix == 1 else f"{stem}-{suffix}")
        if _claim(run_dir):
            return run_dir
    raise RunDirectoryError(f"output.dir {parent}: {_MAX_CLASHES} run directories named {stem}* exist already")


def given_run_dir(path: str | os.PathLike[str]) -> Path:
    """A run directory the caller chose (``transmodal.train(..., run_dir=...)``): a new folder, or an empty one.
    One holding anything (another run's results) is refused rather than written over."""
    run_dir = Path(path).expanduser()
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunDirectoryError(f"run_dir {run_dir} is not an empty folder; a new run needs a new or empty one (to "
                                f"continue a run, resume it: transmodal train --resume {run_dir})")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirectoryError(f"run_dir {run_dir} cannot be created: {error.strerror}") from None
    return run_dir


def _usable_parent(parent: Path) -> Path:
    """``output.dir``, created if missing; a path that is not a folder or cannot be written to is refused before
    any training starts."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirectoryError(f"output.dir {parent} is not a folder; set output.dir to a folder") from None
    except OSError as error:
        raise RunDirectoryError(f"output.dir {parent} cannot be created: {error.strerror}") from None
    return parent


def nearest_existing(path: Path) -> Path:
    """``path``, or the closest folder above it that exists: what creating ``path`` leaves as it was."""
    return next(folder for folder in (path, *path.parents) if folder.exists())


def remove_unused_run_dir(run_dir: Path, existed: Path) -> None:
    """``run_dir``, and the folders above it up to ``existed`` that were made for it, removed while they hold
    nothing: a run stopped by a config or data error leaves no trace. A folder another run has written to stays."""
    for folder in (run_dir, *run_dir.parents):
        if folder == existed or existed not in folder.parents:
            return
        try:
            folder.rmdir()
        except OSError:  # not empty (another run's), or already gone
            return


def _claim(run_dir: Path) -> bool:
    """Create ``run_dir``; False if it exists (made by another run, perhaps a moment ago)."""
    try:
        os.mkdir(run_dir)
    except FileExistsError:
        return False
    except FileNotFoundError:  # output.dir was removed a moment ago by a run that stopped before it began
        _usable_parent(run_dir.parent)
        return _claim(run_dir)
    except OSError as error:
        raise RunDirectoryError(
            f"output.dir {run_dir.parent}: cannot create the run directory {run_dir.name} there: {error.strerror}"
        ) from None
    return True


def remove_temporary_checkpoints(run_dir: Path) -> None:
    """Temporary files of checkpoint writes that a kill interrupted (see checkpoint.save_checkpoint)."""
    for temporary in (run_dir / CHECKPOINTS).glob(".*.pt.*.tmp"):
        temporary.unlink(missing_ok=True)


def keep_metrics_until(run_dir: Path, epochs_done: int) -> tuple[int, Path]:
    """Keep ``metrics.jsonl``'s records of the epochs up to the checkpoint's and drop later ones (written by a run
    stopped before its next checkpoint). Lines that are not records (a partial write, damage) are appended to
    ``metrics.jsonl.damaged`` rather than lost; returns how many, and that file."""
    path = run_dir / METRICS
    damaged_path = path.with_name(path.name + DAMAGED_SUFFIX)
    if not path.exists():
        return 0, damaged_path
    kept: list[bytes] = []
    damaged: list[bytes] = []
    for line in _read_log(path).split(b"\n"):
        if not line.strip():
            continue
        record = _record(line)
        if record is None:
            damaged.append(line)
        elif record["epoch"] <= epochs_done:
            kept.append(line)
    if damaged:
        _append_in_place(damaged_path, b"".join(line + b"\n" for line in damaged))
    write_bytes_atomic(path, b"".join(line + b"\n" for line in kept))  # a kill while rewriting leaves the old log
    return len(damaged), damaged_path


def _read_log(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error.strerror}; move it aside to resume without it") from None


def _append_in_place(path: Path, data: bytes) -> None:
    """Append to ``path``, never through a symbolic link: a link planted in a run directory must not make
    transmodal write outside it."""
    try:
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        why = "it is a symbolic link" if path.is_symlink() else error.strerror
        raise CheckpointError(f"cannot set damaged lines aside in {path}: {why}; move it aside, then resume again") \
            from None
    with os.fdopen(handle, "ab") as file:
        file.write(data)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of ``metrics.jsonl`` in order, without the lines that are not records (see
    ``keep_metrics_until``); none when the file is missing."""
    path = run_dir / METRICS
    if not path.is_file():
        return []
    records = (_record(line) for line in path.read_bytes().split(b"\n") if line.strip())
    return [record for record in records if record is not None]


def _record(line: bytes) -> dict[str, Any] | None:
    """One epoch's record, or None for a line that is not one."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError, and nesting deeper than Python's stack
        return None
    epoch = record.get("epoch") if isinstance(record, dict) else None
    return record if isinstance(epoch, int) and not isinstance(epoch, bool) else None
