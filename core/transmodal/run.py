"""Runs: a run directory per training, resuming a stopped run, evaluating a finished one.

A run directory holds ``config.yaml`` (the resolved experiment), ``metrics.jsonl`` (one line per epoch),
``checkpoints/last.pt`` (full training state) and ``checkpoints/best.pt`` (weights chosen by
the experiment's ``validator``), ``tokenizers/`` and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from transmodal.checkpoint import load_checkpoint
from transmodal.config import Experiment, load_experiment
from transmodal.errors import CheckpointError
from transmodal.experiment import assemble
from transmodal.plugins import Plugins
from transmodal.trainer import Metrics, Trainer


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # seeds CUDA too


def _configure_threads(experiment: Experiment) -> None:
    if experiment.trainer.num_threads is not None:
        torch.set_num_threads(experiment.trainer.num_threads)


def new_run_dir(experiment: Experiment) -> Path:
    parent = experiment.output.dir
    if experiment.output.name is not None:
        run_dir = parent / experiment.output.name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise CheckpointError(
                f"run directory {run_dir} already exists; continue it with --resume {run_dir}, "
                f"or choose another output.name"
            )
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir, suffix = parent / f"{experiment.name}-{stamp}", 1
        while run_dir.exists():
            suffix += 1
            run_dir = parent / f"{experiment.name}-{stamp}-{suffix}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(
    experiment: Experiment, quiet: bool = False, plugins: Plugins | None = None, run_dir: Path | None = None
) -> tuple[dict[str, Any], Path]:
    """Train a new run; returns its summary and run directory."""
    _configure_threads(experiment)
    seed_everything(experiment.trainer.seed)
    assembled = assemble(experiment, plugins)
    trainer = Trainer(assembled, quiet=quiet)  # built before the run directory: config errors leave nothing
    run_dir = run_dir or new_run_dir(experiment)
    trainer.run_dir = run_dir
    (run_dir / "config.yaml").write_text(yaml.safe_dump(experiment.model_dump(mode="json"), sort_keys=False))
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
    """Continue a stopped run from its last checkpoint; ends as the uninterrupted run would have."""
    experiment = load_run_experiment(run_dir)
    _configure_threads(experiment)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    seed_everything(experiment.trainer.seed)
    assembled = assemble(experiment, plugins, tokenizer_states=state["tokenizers"])
    trainer = Trainer(assembled, run_dir=run_dir, quiet=quiet)
    trainer.load_state_dict(state)
    _truncate_metrics(run_dir / "metrics.jsonl", trainer.epoch)
    if not quiet:
        print(f"resuming {run_dir} after epoch {trainer.epoch}/{experiment.trainer.epochs}", flush=True)
    return trainer.fit()


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop lines of epochs after the checkpoint (written by a run stopped before its next checkpoint)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= epochs_done]
    path.write_text("".join(line + "\n" for line in kept))


def evaluate_run(
    run_dir: Path, checkpoint: str = "best", drop_modalities: tuple[str, ...] = (), plugins: Plugins | None = None
) -> tuple[Metrics, dict[str, Any]]:
    """Metrics of a saved checkpoint on every evaluation split; returns them and the checkpoint's header."""
    experiment = load_run_experiment(run_dir)
    _configure_threads(experiment)
    state = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt")
    seed_everything(experiment.trainer.seed)
    assembled = assemble(experiment, plugins, tokenizer_states=state["tokenizers"])
    unknown = [m for m in drop_modalities if m not in assembled.model.modalities]
    if unknown:
        raise CheckpointError(
            f"--drop-modality {', '.join(unknown)}: the model's modalities are {', '.join(assembled.model.modalities)}"
        )
    trainer = Trainer(assembled, quiet=True)
    trainer.load_weights(state)
    header = {"checkpoint": checkpoint, "epoch": state["epoch"], "selected_by": state.get("selected_by")}
    return trainer.evaluate(drop_modalities), header
