"""The library's entry point for training: accepts an experiment in any of the forms a user has at hand."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transmodal import run
from transmodal.config import Experiment, as_experiment
from transmodal.plugins import Plugins


def train(
    experiment: Experiment | Mapping[str, Any] | str | os.PathLike[str],
    quiet: bool = False,
    plugins: Plugins | None = None,
    run_dir: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Train a new run from an ``Experiment``, a dict shaped like the YAML config, or a YAML file's path;
    returns the run's summary and its directory (``run_dir``, a new or empty folder, else a new one in
    ``output.dir``)."""
    return run.train(as_experiment(experiment), quiet=quiet, plugins=plugins, run_dir=run_dir)
