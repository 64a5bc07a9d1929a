"""Errors that reach users. The CLI prints their message without a traceback."""

from __future__ import annotations


class TransmodalError(Exception):
    """Base class: a mistake the user can fix, reported by message alone."""


class ConfigError(TransmodalError):
    """The experiment config is malformed or names invalid values (CLI exit status 2)."""


class RunDirectoryError(ConfigError):
    """``output.dir`` cannot hold a new run directory (not a folder, not writable) or ``output.name`` is taken."""


class InputError(ConfigError):
    """An input given to ``predict`` or ``evaluate --data`` cannot be used: a missing or undecodable file, a
    modality the model does not have, an image where text is expected (CLI exit status 2)."""


class UnknownComponentError(ConfigError):
    """A component name that no loaded plugin registers."""


class DuplicateComponentError(TransmodalError):
    """Two providers registered the same name for the same kind. Plugin loading keeps the first and warns; a
    registry used directly raises this."""


class PluginLoadError(TransmodalError):
    """A plugin, or one of its components, failed to load while strict plugin loading is on (CLI exit status 1)."""


class ComponentBuildError(TransmodalError):
    """A component's factory raised something other than a transmodal error: a bug in the plugin that provides
    it, not in the config (CLI exit status 1)."""


class DataError(TransmodalError):
    """Data is missing, corrupt or does not fit what the experiment needs."""


class CheckpointError(TransmodalError):
    """A checkpoint or run directory cannot be read, written, or does not fit the model (CLI exit status 1)."""


class TrainingDiverged(TransmodalError):
    """The training loss became NaN or infinite (CLI exit status 1); the epoch's checkpoint is not written."""


class DistributedError(TransmodalError):
    """A process of a run under torchrun stopped or stopped answering, so the others stop too (CLI exit status 1)."""


class DataWarning(UserWarning):
    """Data was read, but not all of it as given (files skipped, a cache entry rebuilt): the CLI shows it as one
    plain line."""

