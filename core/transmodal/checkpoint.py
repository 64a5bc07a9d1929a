"""Checkpoints written atomically and read with ``weights_only=True`` (no code runs on load), then checked for the
structure the trainer writes, so that a wrong file is named with what is wrong instead of failing deep inside."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from transmodal.errors import CheckpointError
from transmodal.run_dir import temporary_beside

# Version of the layout below; written into every checkpoint. Checkpoints from before the field read as version 1.
CHECKPOINT_FORMAT = 1

# What evaluation and prediction need (best.pt holds only these) ...
WEIGHTS_FIELDS: dict[str, type] = {"epoch": int, "model": dict, "tokenizers": dict, "classes": list}
# ... and what a resumed run needs on top (last.pt).
TRAINING_FIELDS: dict[str, type] = {
    "step": int, "optimizer": dict, "scheduler": dict, "scaler": dict, "strategies": list, "best": dict,
    "history": list, "rng": dict,
}

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_WRITER_FAILURE = ("inline_container", "PytorchStreamWriter")  # torch's RuntimeError when a write fails
_READER_FAILURE = ("PytorchStreamReader",)  # ... and when a file is not a whole checkpoint archive


def class_difference(saved: list[str], current: list[str]) -> str | None:
    """How a checkpoint's classes differ from those the data gives now, in words naming the first difference (a
    list of a hundred classes printed whole would hide it); None when they are the same."""
    if saved == current:
        return None
    added, removed = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    if added or removed:
        return (f"the classes {removed[:5]} of the checkpoint are not in the data, {added[:5]} of the data are not in "
                f"the checkpoint")
    if len(saved) != len(current):
        return f"the checkpoint has {len(saved)} classes, the data {len(current)}"
    index = next(i for i, (a, b) in enumerate(zip(saved, current)) if a != b)
    return (f"the classes are in another order: output {index} is '{saved[index]}' in the checkpoint, "
            f"'{current[index]}' in the data")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename: a crash never leaves a
    half-written checkpoint under the real name, and a failed write (a full disk) leaves the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = temporary_beside(path)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) or (isinstance(error, RuntimeError) and any(
                marker in str(error) for marker in _WRITER_FAILURE)):
            raise _write_failure(path, error) from None
        raise


def _write_failure(path: Path, error: BaseException) -> CheckpointError:
    if isinstance(error, RuntimeError):
        reason = "torch could not write it, most likely because the disk is full"
    elif getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        reason = "the disk is full"
    else:
        reason = getattr(error, "strerror", None) or str(error)
    free = shutil.disk_usage(path.parent).free
    kept = "the previous checkpoint is unchanged" if path.exists() else "no earlier checkpoint exists"
    return CheckpointError(
        f"cannot write checkpoint {path}: {reason} ({free / 2**20:.0f} MiB free there); {kept}. "
        f"Free some space, then continue with: transmodal train --resume {path.parent.parent}"
    )


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """Whatever ``path`` holds, loaded without running code; a file that would run code is refused."""
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}." if not path.exists() else f"{path} is not a file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Cannot read checkpoint {path}: it is empty (0 bytes), the trace of an interrupted "
                              f"copy or write.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except RuntimeError as error:
        if any(marker in str(error) for marker in _READER_FAILURE):  # torch's advice in it is for its own users
            raise CheckpointError(f"Cannot read checkpoint {path}: it is truncated or damaged (not a whole zip "
                                  f"archive as torch.save writes)") from None
        raise CheckpointError(f"Cannot read checkpoint {path}: it is damaged or not a checkpoint "
                              f"(RuntimeError: {error})") from None
    except pickle.UnpicklingError as error:
        code = _UNSUPPORTED_GLOBAL.search(str(error))
        if code is not None:
            raise CheckpointError(
                f"{path} is not a transmodal checkpoint and must not be trusted: loading it would import and run "
                f"{code.group(1)}, which transmodal checkpoints never hold. Refused."
            ) from None
        raise CheckpointError(f"Cannot read checkpoint {path}: it is damaged or not a checkpoint.") from None
    except Exception as error:  # what torch's fallback reader of old-style files raises on other bytes
        raise CheckpointError(f"Cannot read checkpoint {path}: it is damaged or not a checkpoint "
                              f"({type(error).__name__}: {error})") from None


def read_checkpoint(path: Path, resumable: bool = False) -> dict[str, Any]:
    """A checkpoint written by the trainer: its weights (``best.pt``), or with ``resumable`` the whole training
    state (``last.pt``). A file of another structure is refused, naming what is wrong."""
    state = load_checkpoint(path)
    problems = structure_problems(state, resumable)
    if problems:
        raise CheckpointError(f"{path} is not a {'resumable ' if resumable else ''}transmodal checkpoint: "
                              + "; ".join(problems))
    return state


def structure_problems(state: Any, resumable: bool) -> list[str]:
    """What in ``state`` differs from the structure the trainer writes (empty if nothing)."""
    if not isinstance(state, dict):
        return [f"it holds a {type(state).__name__}, not a dict"]
    version = state.get("format", 1)
    if not _is(version, int) or version < 1:
        return [f"its format {version!r} is not a checkpoint format version"]
    if version > CHECKPOINT_FORMAT:
        return [f"it has format {version}, from a newer transmodal (this one reads up to {CHECKPOINT_FORMAT}); "
                f"upgrade transmodal"]
    if resumable and not any(key in state for key in TRAINING_FIELDS) and not _field_problems(state, WEIGHTS_FIELDS):
        return ["it holds weights only (a copy of best.pt?), not the training state that --resume needs"]
    fields = {**WEIGHTS_FIELDS, **(TRAINING_FIELDS if resumable else {})}
    problems = _field_problems(state, fields)
    if problems:
        return problems
    # a negative count would make --resume train extra epochs and drop the run's metrics as "later" ones
    problems += [f"'{key}' should be 0 or more, found {state[key]}" for key in ("epoch", "step")
                 if key in fields and state[key] < 0]
    if not all(_is(key, str) and isinstance(value, torch.Tensor) for key, value in state["model"].items()):
        problems.append("'model' should map parameter names to tensors")
    if not all(_is(key, str) and _is(value, str) for key, value in state["tokenizers"].items()):
        problems.append("'tokenizers' should map modalities to saved tokenizer states (strings)")
    kept = state.get("strategy_weights", {})  # only runs whose strategies are part of the model have it
    if not (isinstance(kept, dict) and all(_is(key, str) and isinstance(weights, dict) and all(
            _is(name, str) and isinstance(value, torch.Tensor) for name, value in weights.items())
            for key, weights in kept.items())):
        problems.append("'strategy_weights' should map strategies to their parameter tensors")
    if resumable:
        problems += _training_problems(state)
    return problems


def _training_problems(state: dict[str, Any]) -> list[str]:
    problems = []
    rng = state["rng"].get("torch")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        problems.append(f"'rng.torch' should be a uint8 tensor (torch.get_rng_state()), found {type(rng).__name__}")
    if not all(isinstance(entry, dict) and _is(entry.get("name"), str) and isinstance(entry.get("module"), dict)
               and "state" in entry for entry in state["strategies"]):
        problems.append("each entry of 'strategies' should hold a strategy's name, state and module")
    if not {"value", "epoch"} <= set(state["best"]):
        problems.append("'best' should hold the best epoch and its value")
    position = state.get("position")  # None (or absent) at an epoch's end; a step checkpoint says where it stood
    if position is not None and not (
            isinstance(position, dict) and _is(position.get("batch"), int) and isinstance(position.get("totals"), dict)
            and all(isinstance(total, torch.Tensor) for total in position["totals"].values())):
        problems.append("'position' should hold the batches done in its epoch and the epoch's loss sums")
    details = state.get("final_details", {})  # absent before summary.json had per-class metrics
    if not (isinstance(details, dict) and all(isinstance(split, dict) for split in details.values())):
        problems.append("'final_details' should map evaluation splits to their per-class metrics")
    return problems


def _field_problems(state: dict[str, Any], fields: dict[str, type]) -> list[str]:
    missing = [key for key in fields if key not in state]
    problems = [f"it lacks {', '.join(repr(key) for key in missing)}"] if missing else []
    problems += [f"'{key}' should be a {kind.__name__}, found {type(state[key]).__name__}"
                 for key, kind in fields.items() if key in state and not _is(state[key], kind)]
    return problems


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


@contextlib.contextmanager
def restoring_from(path: Path) -> Iterator[None]:
    """Name ``path`` in checkpoint errors raised while its contents are put back into a model or a trainer."""
    try:
        yield
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
