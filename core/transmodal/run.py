"""Runs: a run directory per training, resuming a stopped run, evaluating a finished one.

A run directory holds ``config.yaml`` (the resolved experiment, every component parameter with its value or
default), ``model.json`` (the modalities' kinds and shapes and the class names: with the config and a checkpoint,
all that rebuilding the model needs, see ``trained_model.py``), ``metrics.jsonl`` (one line per epoch), what
``output.loggers`` write (``steps.jsonl``, ``steps.csv`` and ``metrics.csv``, ``tensorboard/``: see ``loggers.py``),
``checkpoints/last.pt`` (full training state) and ``checkpoints/best.pt`` (weights chosen by
the experiment's ``validator``), ``tokenizers/`` and ``summary.json``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from transmodal.checkpoint import read_checkpoint, restoring_from
from transmodal.config import MAX_SEED, Experiment, resolved_config
from transmodal.devices import resolve_device
from transmodal.distributed import World, lost_peer, process_group
from transmodal.errors import CheckpointError, ConfigError, DistributedError, RunDirectoryError
from transmodal.experiment import assemble
from transmodal.loggers import check_loggers, trim_logs
from transmodal.plugins import Plugins
from transmodal.run_dir import (
    CHECKPOINTS, METRICS, create_run_dir, given_run_dir, keep_metrics_until, load_run_experiment, read_metrics,
    remove_temporary_checkpoints, write_text_atomic,
)
from transmodal.initial_weights import read_initial_weights
from transmodal.trained_model import model_info, write_model_info
from transmodal.trainer import Metrics, Trainer


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # seeds CUDA too


def _configure_threads(experiment: Experiment) -> None:
    if experiment.trainer.num_threads is not None:
        torch.set_num_threads(experiment.trainer.num_threads)


def _seed_rank(experiment: Experiment, world: World) -> None:
    """Under torchrun, after the model is built alike on every rank: each rank draws its own augmentations and
    dropout masks (rank 0 keeps the seed's stream)."""
    if world.rank > 0:
        seed_everything(experiment.trainer.seed + world.rank * (MAX_SEED + 1))


def train(
    experiment: Experiment, quiet: bool = False, plugins: Plugins | None = None,
    run_dir: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Train a new run; returns its summary and run directory (``run_dir``, a new or empty folder, else a new one in
    ``output.dir``). Under torchrun every process calls this, and rank 0 alone writes the run directory."""
    _configure_threads(experiment)
    with process_group(experiment.trainer, resolve_device(experiment.trainer.device)) as world:
        return _train(experiment, world, quiet, plugins, run_dir, new=True)


def _train(experiment: Experiment, world: World, quiet: bool, plugins: Plugins | None,
           run_dir: str | os.PathLike[str] | None, new: bool) -> tuple[dict[str, Any], Path]:
    """``new``: ``run_dir`` was given for a new run (it must be new or empty), not a run to train again."""
    quiet = quiet or not world.is_main
    check_loggers(experiment.output.loggers)  # before anything is built or written
    seed_everything(experiment.trainer.seed)
    initial = read_initial_weights(experiment.model.init_from) if experiment.model.init_from is not None else None
    assembled = assemble(experiment, plugins, tokenizer_states=initial.tokenizer_states if initial else None)
    if initial is not None:
        initial.load_into(assembled.model, assembled.data.bundle.classes)
    # Built before the run directory: config errors leave nothing.
    trainer = Trainer(assembled, quiet=quiet, world=world)
    if initial is not None:
        initial.load_target_statistics(trainer.target_statistics)
    _seed_rank(experiment, world)
    run_dir = _shared_run_dir(experiment, world, run_dir, new)
    trainer.run_dir = run_dir
    if world.is_main:
        config = resolved_config(experiment, assembled.components)
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        write_model_info(run_dir, model_info(assembled.data.modalities, assembled.data.bundle.classes))
        tokenizer_dir = run_dir / "tokenizers"
        for modality, tokenizer in assembled.data.tokenizers.items():
            tokenizer_dir.mkdir(exist_ok=True)
            write_text_atomic(tokenizer_dir / f"{modality}.json", tokenizer.state())
    if not quiet:
        print(f"run directory: {run_dir}", flush=True)
    return _fit(trainer, run_dir), run_dir


def _shared_run_dir(experiment: Experiment, world: World, run_dir: str | os.PathLike[str] | None, new: bool) -> Path:
    """Rank 0 claims the run directory (``run_dir``, or a new one); every rank gets its path, or rank 0's error."""
    claimed: Path | RunDirectoryError | None = None
    if world.is_main:
        try:
            if run_dir is None:
                claimed = create_run_dir(experiment)
            else:
                claimed = given_run_dir(run_dir) if new else Path(run_dir)
        except RunDirectoryError as error:
            claimed = error
    claimed = world.from_main(claimed)
    if isinstance(claimed, RunDirectoryError):
        raise claimed
    assert claimed is not None
    return claimed


def _fit(trainer: Trainer, run_dir: Path) -> dict[str, Any]:
    try:
        return trainer.fit()
    except RuntimeError as error:
        world = trainer.world
        if not world.distributed or not lost_peer(error):
            raise
        then = ("Continue from the last checkpoint" if (run_dir / CHECKPOINTS / "last.pt").is_file()
                else "No checkpoint was written yet; train it again from the beginning")
        raise DistributedError(
            f"rank {world.rank} of {world.world_size}: another process of this run stopped or did not answer within "
            f"trainer.distributed_timeout ({trainer.config.distributed_timeout:g} s), so this one stops too "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). {then} with the same number of "
            f"processes: torchrun --nproc_per_node ... -m transmodal train --resume {run_dir}"
        ) from None


def resume(run_dir: str | os.PathLike[str], quiet: bool = False, plugins: Plugins | None = None) -> dict[str, Any]:
    """Continue a stopped run from its last checkpoint; ends as the uninterrupted run would have. A run stopped
    before its first checkpoint starts again from the beginning, in the same directory, with its saved config.
    Under torchrun it needs as many processes as the run had (every rank reads the checkpoint: across nodes, the
    run directory must be on a shared file system)."""
    run_dir = Path(run_dir)
    experiment = load_run_experiment(run_dir)
    _configure_threads(experiment)
    with process_group(experiment.trainer, resolve_device(experiment.trainer.device)) as world:
        return _resume(run_dir, experiment, world, quiet, plugins)


def _resume(run_dir: Path, experiment: Experiment, world: World, quiet: bool,
            plugins: Plugins | None) -> dict[str, Any]:
    quiet = quiet or not world.is_main
    check_loggers(experiment.output.loggers)
    path = run_dir / CHECKPOINTS / "last.pt"
    if world.is_main:
        remove_temporary_checkpoints(run_dir)
    if not path.exists():
        _check_never_checkpointed(run_dir, path)
        if world.is_main:
            _keep_metrics_until(run_dir, 0, path)
            trim_logs(run_dir, 0, 0)
            _notice(f"{run_dir} stopped before its first checkpoint; training it from the beginning with its "
                    f"saved config")
        summary, _ = _train(experiment, world, quiet, plugins, run_dir, new=False)
        return summary
    state = read_checkpoint(path, resumable=True)
    processes = state.get("world_size", 1)  # absent from checkpoints of runs before torchrun support: one process
    if processes != world.world_size:
        raise ConfigError(
            f"{run_dir} was trained by {_processes(processes)} and can only be resumed by as many (each rank's data "
            f"shard and random state are in its checkpoint), not {world.world_size}: "
            + ("transmodal train --resume" if processes == 1 else f"torchrun --nproc_per_node {processes} -m "
               f"transmodal train --resume (or the same total over several nodes)") + f" {run_dir}")
    seed_everything(experiment.trainer.seed)
    with restoring_from(path):
        assembled = assemble(experiment, plugins, tokenizer_states=state["tokenizers"])
        trainer = Trainer(assembled, run_dir=run_dir, quiet=quiet, world=world)
        trainer.load_state_dict(state)
    if world.is_main:
        _keep_metrics_until(run_dir, trainer.epoch, path)
        trim_logs(run_dir, trainer.epoch, trainer.step)
    if not quiet:
        epochs = experiment.trainer.epochs
        where = (f"at step {trainer.step} (batch {trainer.position['batch']}/{trainer.steps_per_epoch} of epoch "
                 f"{trainer.epoch + 1}/{epochs})" if trainer.position else f"after epoch {trainer.epoch}/{epochs}")
        print(f"resuming {run_dir} {where}", flush=True)
    return _fit(trainer, run_dir)


def _check_never_checkpointed(run_dir: Path, path: Path) -> None:
    """Refuse to start a run again from the beginning (overwriting its logs and best.pt) when its missing
    ``last.pt`` must once have existed: the log records a second epoch, which is only trained after the first
    epoch's ``last.pt`` was written and never removed."""
    if path.parent.exists() and not path.parent.is_dir():
        raise CheckpointError(f"{path.parent} is not a folder; move it aside, then resume again")
    epochs = [record["epoch"] for record in read_metrics(run_dir)]
    if epochs and max(epochs) > 1:
        raise CheckpointError(
            f"{path} is missing, though {run_dir / METRICS} records {max(epochs)} epochs: it was moved or deleted. "
            f"Resuming would train the run again from the beginning over its results; put it back, or train a "
            f"new run from {run_dir / 'config.yaml'} with another output.name"
        )


def _processes(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes"


def _keep_metrics_until(run_dir: Path, epochs_done: int, checkpoint: Path) -> None:
    damaged, damaged_path = keep_metrics_until(run_dir, epochs_done)
    if damaged:
        _notice(f"{damaged} damaged line{'s' * (damaged > 1)} of {run_dir / METRICS} set aside in "
                f"{damaged_path}; the run continues from {checkpoint.name} (epoch {epochs_done})")


def _notice(message: str) -> None:
    """Something the user should know even with --quiet: it is about their run directory, not progress."""
    print(message, file=sys.stderr, flush=True)


def evaluate_run(
    run_dir: str | os.PathLike[str], checkpoint: str = "best", drop_modalities: tuple[str, ...] = (),
    plugins: Plugins | None = None, detailed: bool = False, via: tuple[str, ...] = (),
) -> tuple[Metrics, dict[str, Any]]:
    """Metrics of a saved checkpoint on every evaluation split (``detailed``: per class, and the confusion
    matrix; where the run aligned two modalities, retrieval and zero-shot metrics, and with ``via``, cross-modal
    transfer to each of these modalities: see ``cross_modal.py``); returns them and the checkpoint's header."""
    saved = saved_run_trainer(run_dir, checkpoint, plugins)
    check_modalities(saved.trainer, drop_modalities)
    saved.load_weights()
    return saved.trainer.evaluate(drop_modalities, detailed=detailed, via=via), saved.header


@dataclass
class SavedRun:
    """A trainer on a run's own data with the model the run started from (the same seed, so the same initial and
    pretrained weights), and one of its checkpoints, read but not yet loaded."""

    trainer: Trainer
    state: dict[str, Any]
    path: Path  # the checkpoint's

    @property
    def header(self) -> dict[str, Any]:
        return {"checkpoint": self.path.stem, "epoch": self.state["epoch"],
                "selected_by": self.state.get("selected_by")}

    def load_weights(self) -> None:
        with restoring_from(self.path):
            self.trainer.load_weights(self.state)


def saved_run_trainer(run_dir: str | os.PathLike[str], checkpoint: str = "best",
                      plugins: Plugins | None = None) -> SavedRun:
    run_dir = Path(run_dir)
    experiment = load_run_experiment(run_dir)
    _configure_threads(experiment)
    path = run_dir / CHECKPOINTS / f"{checkpoint}.pt"
    state = read_checkpoint(path)
    seed_everything(experiment.trainer.seed)
    with restoring_from(path):
        assembled = assemble(experiment, plugins, tokenizer_states=state["tokenizers"])
    return SavedRun(Trainer(assembled, quiet=True), state, path)


def check_modalities(trainer: Trainer, drop_modalities: tuple[str, ...]) -> None:
    unknown = [m for m in drop_modalities if m not in trainer.model.modalities]
    if unknown:
        raise CheckpointError(
            f"--drop-modality {', '.join(unknown)}: the model's modalities are {', '.join(trainer.model.modalities)}"
        )
    if set(trainer.model.modalities) <= set(drop_modalities):
        raise ConfigError(f"--drop-modality: dropping every modality ({', '.join(trainer.model.modalities)}) leaves "
                          f"the model no input to classify; keep at least one")
