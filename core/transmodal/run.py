"""Runs: a run directory per training, resuming a stopped run, evaluating a finished one.

A run directory holds ``config.yaml`` (the resolved experiment, every component parameter with its value or
default), ``model.json`` (the modalities' kinds and shapes and the class names: with the config and a checkpoint,
all that rebuilding the model needs, see ``trained_model.py``), ``metrics.jsonl`` (one line per epoch),
``checkpoints/last.pt`` (full training state) and ``checkpoints/best.pt`` (weights chosen by
the experiment's ``validator``), ``tokenizers/`` and ``summary.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from transmodal.checkpoint import read_checkpoint, restoring_from
from transmodal.config import Experiment, load_experiment, resolved_config
from transmodal.errors import CheckpointError
from transmodal.experiment import assemble
from transmodal.plugins import Plugins
from transmodal.run_dir import (
    CHECKPOINTS, METRICS, create_run_dir, keep_metrics_until, remove_temporary_checkpoints, write_text_atomic,
)
from transmodal.trained_model import model_info, write_model_info
from transmodal.trainer import Metrics, Trainer


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # seeds CUDA too


def _configure_threads(experiment: Experiment) -> None:
    if experiment.trainer.num_threads is not None:
        torch.set_num_threads(experiment.trainer.num_threads)


def train(
    experiment: Experiment, quiet: bool = False, plugins: Plugins | None = None, run_dir: Path | None = None
) -> tuple[dict[str, Any], Path]:
    """Train a new run; returns its summary and run directory."""
    _configure_threads(experiment)
    seed_everything(experiment.trainer.seed)
    assembled = assemble(experiment, plugins)
    trainer = Trainer(assembled, quiet=quiet)  # built before the run directory: config errors leave nothing
    run_dir = run_dir or create_run_dir(experiment)
    trainer.run_dir = run_dir
    config = resolved_config(experiment, assembled.components)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_model_info(run_dir, model_info(assembled.data.modalities, assembled.data.bundle.classes))
    tokenizer_dir = run_dir / "tokenizers"
    for modality, tokenizer in assembled.data.tokenizers.items():
        tokenizer_dir.mkdir(exist_ok=True)
        (tokenizer_dir / f"{modality}.json").write_text(tokenizer.state())
    if not quiet:
        print(f"run directory: {run_dir}", flush=True)
    return trainer.fit(), run_dir


def load_run_experiment(run_dir: Path) -> Experiment:
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    return load_experiment(run_dir / "config.yaml")


def resume(run_dir: Path, quiet: bool = False, plugins: Plugins | None = None) -> dict[str, Any]:
    """Continue a stopped run from its last checkpoint; ends as the uninterrupted run would have. A run stopped
    before its first checkpoint starts again from the beginning, in the same directory, with its saved config."""
    experiment = load_run_experiment(run_dir)
    remove_temporary_checkpoints(run_dir)
    path = run_dir / CHECKPOINTS / "last.pt"
    if not path.exists():
        _keep_metrics_until(run_dir, 0, path)
        _notice(f"{run_dir} stopped before its first checkpoint; training it from the beginning with its saved config")
        summary, _ = train(experiment, quiet=quiet, plugins=plugins, run_dir=run_dir)
        return summary
    _configure_threads(experiment)
    state = read_checkpoint(path, resumable=True)
    seed_everything(experiment.trainer.seed)
    with restoring_from(path):
        assembled = assemble(experiment, plugins, tokenizer_states=state["tokenizers"])
        trainer = Trainer(assembled, run_dir=run_dir, quiet=quiet)
        trainer.load_state_dict(state)
    _keep_metrics_until(run_dir, trainer.epoch, path)
    if not quiet:
        print(f"resuming {run_dir} after epoch {trainer.epoch}/{experiment.trainer.epochs}", flush=True)
    return trainer.fit()


def _keep_metrics_until(run_dir: Path, epochs_done: int, checkpoint: Path) -> None:
    damaged, damaged_path = keep_metrics_until(run_dir, epochs_done)
    if damaged:
        _notice(f"{damaged} damaged line{'s' * (damaged > 1)} of {run_dir / METRICS} set aside in "
                f"{damaged_path}; the run continues from {checkpoint.name} (epoch {epochs_done})")


def _notice(message: str) -> None:
    """Something the user should know even with --quiet: it is about their run directory, not progress."""
    print(message, file=sys.stderr, flush=True)


def evaluate_run(
    run_dir: Path, checkpoint: str = "best", drop_modalities: tuple[str, ...] = (), plugins: Plugins | None = None,
    detailed: bool = False,
) -> tuple[Metrics, dict[str, Any]]:
    """Metrics of a saved checkpoint on every evaluation split (``detailed``: per class, and the confusion
    matrix); returns them and the checkpoint's header."""
    experiment = load_run_experiment(run_dir)
    _configure_threads(experiment)
    path = run_dir / CHECKPOINTS / f"{checkpoint}.pt"
    state = read_checkpoint(path)
    seed_everything(experiment.trainer.seed)
    with restoring_from(path):
        assembled = assemble(experiment, plugins, tokenizer_states=state["tokenizers"])
    unknown = [m for m in drop_modalities if m not in assembled.model.modalities]
    if unknown:
        raise CheckpointError(
            f"--drop-modality {', '.join(unknown)}: the model's modalities are {', '.join(assembled.model.modalities)}"
        )
    trainer = Trainer(assembled, quiet=True)
    with restoring_from(path):
        trainer.load_weights(state)
    header = {"checkpoint": checkpoint, "epoch": state["epoch"], "selected_by": state.get("selected_by")}
    return trainer.evaluate(drop_modalities, detailed=detailed), header
