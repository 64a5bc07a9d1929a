"""transmodal: transfer learning and cross-modal learning from one config.

Public API. Importing transmodal loads torch, pluggy and pydantic only: plugin components (torchvision,
tokenizers, ...) are imported when they are built.
"""

from transmodal.config import ComponentSpec, Experiment, load_experiment, validate_components
from transmodal.data import PAD_ID, UNK_ID, BatchLoader, DatasetBundle, MappedColumn, ModalitySpec, Split, presence_key
from transmodal.encoder import Encoder, ImageInput
from transmodal.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DuplicateComponentError,
    PluginLoadError,
    RunDirectoryError,
    TransmodalError,
    UnknownComponentError,
)
from transmodal.experiment import Assembled, assemble
from transmodal.fusion import Fusion, pool_tokens, presence
from transmodal.hookspecs import hookimpl
from transmodal.image_cache import ImageCache
from transmodal.model import ModelOutput, TransmodalModel
from transmodal.plugins import PluginWarning, get_plugins
from transmodal.registry import NoParams
from transmodal.run import evaluate_run, resume, train
from transmodal.strategy import ParamGroup, StepData, Strategy, TrainingContext
from transmodal.trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "Assembled", "BatchLoader", "CheckpointError", "ComponentSpec", "ConfigError", "DataError", "DatasetBundle",
    "DuplicateComponentError", "Encoder", "Experiment", "Fusion", "ImageCache", "ImageInput", "MappedColumn", "ModalitySpec", "ModelOutput",
    "NoParams", "PAD_ID", "ParamGroup", "PluginLoadError", "PluginWarning", "RunDirectoryError", "Split",
    "StepData", "Strategy", "Trainer", "TrainingContext", "TransmodalError", "TransmodalModel", "UNK_ID",
    "UnknownComponentError", "assemble", "evaluate_run", "get_plugins", "hookimpl", "load_experiment",
    "pool_tokens", "presence", "presence_key", "resume", "train", "validate_components",
]
