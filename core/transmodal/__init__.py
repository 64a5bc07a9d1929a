"""transmodal: transfer learning and cross-modal learning from one config.

Public API. Importing transmodal imports neither torch nor any plugin: each name below is imported from its
module on first use (PEP 562), so the CLI's listing and validation commands start without torch's import cost.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

# torch warns at import when NumPy is missing; nothing in the core needs NumPy, so the warning only alarms.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("ComponentSpec", "Experiment", "load_experiment", "validate_components"), "transmodal.config"),
    **dict.fromkeys(("PAD_ID", "UNK_ID", "BatchLoader", "DatasetBundle", "MappedColumn", "ModalitySpec", "Split",
                     "presence_key"), "transmodal.data"),
    **dict.fromkeys(("Encoder", "ImageInput"), "transmodal.encoder"),
    **dict.fromkeys(("CheckpointError", "ConfigError", "DataError", "DataWarning", "DuplicateComponentError",
                     "PluginLoadError", "InputError", "RunDirectoryError", "TransmodalError", "UnknownComponentError"),
                  "transmodal.errors"),
    **dict.fromkeys(("Assembled", "assemble"), "transmodal.experiment"),
    **dict.fromkeys(("Fusion", "pool_tokens", "presence"), "transmodal.fusion"),
    "FileList": "transmodal.file_list",
    "hookimpl": "transmodal.hookspecs",
    "ImageCache": "transmodal.image_cache",
    **dict.fromkeys(("ModelOutput", "TransmodalModel"), "transmodal.model"),
    **dict.fromkeys(("PluginWarning", "get_plugins"), "transmodal.plugins"),
    **dict.fromkeys(("Candidate", "rank"), "transmodal.ranking"),
    "NoParams": "transmodal.registry",
    **dict.fromkeys(("evaluate_run", "resume"), "transmodal.run"),
    "train": "transmodal.api",
    **dict.fromkeys(("ParamGroup", "StepData", "Strategy", "TrainingContext"), "transmodal.strategy"),
    "Trainer": "transmodal.trainer",
    **dict.fromkeys(("TabularColumn", "TabularSchema"), "transmodal.tabular"),
    **dict.fromkeys(("TrainedModel", "load"), "transmodal.trained_model"),
    **dict.fromkeys(("Outputs", "ValidationContext", "Validator"), "transmodal.validator"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'transmodal' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from transmodal.api import train
    from transmodal.config import ComponentSpec, Experiment, load_experiment, validate_components
    from transmodal.data import PAD_ID, UNK_ID, BatchLoader, DatasetBundle, MappedColumn, ModalitySpec, Split, presence_key
    from transmodal.encoder import Encoder, ImageInput
    from transmodal.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        DataWarning,
        DuplicateComponentError,
        InputError,
        PluginLoadError,
        RunDirectoryError,
        TransmodalError,
        UnknownComponentError,
    )
    from transmodal.experiment import Assembled, assemble
    from transmodal.file_list import FileList
    from transmodal.fusion import Fusion, pool_tokens, presence
    from transmodal.hookspecs import hookimpl
    from transmodal.image_cache import ImageCache
    from transmodal.model import ModelOutput, TransmodalModel
    from transmodal.plugins import PluginWarning, get_plugins
    from transmodal.ranking import Candidate, rank
    from transmodal.registry import NoParams
    from transmodal.run import evaluate_run, resume
    from transmodal.strategy import ParamGroup, StepData, Strategy, TrainingContext
    from transmodal.trained_model import TrainedModel, load
    from transmodal.tabular import TabularColumn, TabularSchema
    from transmodal.trainer import Trainer
    from transmodal.validator import Outputs, ValidationContext, Validator
