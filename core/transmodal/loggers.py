"""Where a run's records go besides ``metrics.jsonl``: the loggers of ``output.loggers``.

Two kinds of record reach them, from rank 0 alone under torchrun:

- a *step record* every ``trainer.log_every`` optimizer steps (and at each epoch's last step): the mean of every
  loss term and logged strategy metric over the steps since the previous record (``steps`` says how many), the
  learning rate (``lr``; ``lr/<first layer group>`` for each optimizer group when strategies give groups their own
  rates) and the training throughput (``samples_per_second``, all processes together);
- an *epoch record*: the line ``metrics.jsonl`` gets (train losses, each split's metrics, the validators' scores).

``metrics.jsonl`` is always written: it is the run's own record, which ``--resume``, ``report`` and ``compare``
read. The loggers are

- ``jsonl`` (the default): the step records in ``steps.jsonl``, one JSON object a line;
- ``csv``: ``metrics.csv`` (epoch records) and ``steps.csv`` (step records), nested keys joined with ``/``;
- ``tensorboard``: event files under ``tensorboard/`` (``pip install "transmodal[tensorboard]"``), every value a
  scalar against the optimizer step.

A resumed run appends: :func:`trim_logs` first drops what a stopped run logged after its last checkpoint, and the
TensorBoard writer purges those steps, so no step or epoch appears twice. This module imports torch only for
TensorBoard's writer.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transmodal.errors import ConfigError, RunDirectoryError
from transmodal.run_dir import write_bytes_atomic, write_text_atomic

LOGGERS = ("jsonl", "csv", "tensorboard")
STEPS_JSONL = "steps.jsonl"
METRICS_CSV = "metrics.csv"
STEPS_CSV = "steps.csv"
TENSORBOARD_DIR = "tensorboard"


def check_loggers(names: Sequence[str]) -> None:
    """Refuse, before anything is trained or written, a logger whose package is not installed."""
    if "tensorboard" in names and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError('output.loggers: tensorboard needs the tensorboard package: pip install '
                          '"transmodal[tensorboard]" (or pip install tensorboard), or remove it from output.loggers')


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level, keys joined with ``/`` ("source/val" + "accuracy" -> "source/val/accuracy")."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


class Logger:
    """A destination of step and epoch records."""

    def log_step(self, record: dict[str, Any]) -> None:
        pass

    def log_epoch(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlLogger(Logger):
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / STEPS_JSONL

    def log_step(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")


class CsvLogger(Logger):
    def __init__(self, run_dir: Path) -> None:
        self.steps = _CsvFile(run_dir / STEPS_CSV)
        self.epochs = _CsvFile(run_dir / METRICS_CSV)

    def log_step(self, record: dict[str, Any]) -> None:
        self.steps.append(flatten(record))

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.epochs.append(flatten(record))


class _CsvFile:
    """A CSV file appended a row at a time. Its header is the first row's keys; a row with a key the header lacks
    (a validator that scores from a later epoch on) rewrites the file once with the column added."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header: list[str] | None = None
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as file:
                self.header = next(csv.reader(file), None)

    def append(self, row: dict[str, Any]) -> None:
        if self.header is None:
            self.header = list(row)
            _write_csv(self.path, self.header, [row])
            return
        new = [key for key in row if key not in self.header]
        if new:
            self.header += new
            _write_csv(self.path, self.header, [*_read_csv(self.path), row])
            return
        with self.path.open("a", newline="", encoding="utf-8") as file:
            csv.DictWriter(file, self.header, restval="").writerow(row)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _write_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    """The whole file, written beside it and renamed: a kill leaves the old file or the new one."""
    text = io.StringIO()
    writer = csv.DictWriter(text, header, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


class TensorBoardLogger(Logger):
    def __init__(self, run_dir: Path, steps_done: int) -> None:
        check_loggers(["tensorboard"])
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events a stopped run wrote after its last checkpoint (steps after steps_done) are dropped.
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=steps_done + 1)

    def log_step(self, record: dict[str, Any]) -> None:
        step = record["step"]
        for key, value in record.items():
            if key in ("epoch", "step", "steps") or not _is_number(value):
                continue
            if key == "lr" or key.startswith("lr/") or key == "samples_per_second":
                tag = f"step/{key}"
            else:
                tag = f"step/train/{key}"
            self.writer.add_scalar(tag, value, step)

    def log_epoch(self, record: dict[str, Any]) -> None:
        step = record["step"]
        for key, value in flatten(record).items():
            if key not in ("epoch", "step") and _is_number(value):
                self.writer.add_scalar(f"epoch/{key}", value, step)
        self.writer.add_scalar("epoch/epoch", record["epoch"], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Loggers(Logger):
    """All the run's loggers as one; none when the process is not rank 0 or the run has no directory."""

    def __init__(self, loggers: Sequence[Logger] = ()) -> None:
        self.loggers = list(loggers)

    @property
    def wants_steps(self) -> bool:
        return bool(self.loggers)

    def log_step(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_step(record)

    def log_epoch(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_epoch(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_loggers(names: Sequence[str], run_dir: Path, steps_done: int) -> Loggers:
    """The loggers ``names`` writing into ``run_dir``, appending after ``steps_done`` optimizer steps."""
    factories: dict[str, Callable[[], Logger]] = {
        "jsonl": lambda: JsonlLogger(run_dir),
        "csv": lambda: CsvLogger(run_dir),
        "tensorboard": lambda: TensorBoardLogger(run_dir, steps_done),
    }
    loggers = []
    for name in names:
        try:
            loggers.append(factories[name]())
        except OSError as error:  # a log folder that is a file, or cannot be written
            Loggers(loggers).close()
            raise RunDirectoryError(f"output.loggers: {name} cannot write its logs in {run_dir} "
                                    f"({error.strerror or error}); make that place writable, or leave {name} out "
                                    f"of output.loggers") from None
    return Loggers(loggers)


def trim_logs(run_dir: Path, epochs_done: int, steps_done: int) -> None:
    """Before a run resumes from a checkpoint after ``epochs_done`` epochs and ``steps_done`` steps: drop the step
    and epoch records logged after it (and lines a kill left half-written), so none is logged twice."""
    _trim_jsonl(run_dir / STEPS_JSONL, "step", steps_done)
    _trim_csv(run_dir / STEPS_CSV, "step", steps_done)
    _trim_csv(run_dir / METRICS_CSV, "epoch", epochs_done)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return None


def _trim_jsonl(path: Path, key: str, last: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_bytes().split(b"\n"):
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:
            continue
        position = _as_int(record.get(key)) if isinstance(record, dict) else None
        if position is not None and position <= last:
            kept.append(line + b"\n")
    write_bytes_atomic(path, b"".join(kept))


def _trim_csv(path: Path, key: str, last: int) -> None:
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        header = list(reader.fieldnames or [])
        rows = []
        for row in reader:
            position = _as_int(row.get(key))
            # A row a kill cut short has fewer fields (None) than the header: dropped with the rest.
            if position is not None and position <= last and None not in row.values():
                rows.append(row)
    if header:
        _write_csv(path, header, rows)
    else:
        path.unlink()
