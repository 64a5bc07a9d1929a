"""The experiment config: a pydantic model loaded from YAML, with ``--set a.b=c`` overrides.

Validation runs in two phases: :func:`parse_experiment` checks the structure (this module knows every
field but not the components' own parameters); :func:`validate_components` then looks up each named
component in the loaded plugins and validates its parameters against the component's model. Both phases
raise :class:`ConfigError` with the path to the bad field, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from transmodal.errors import ConfigError, UnknownComponentError
from transmodal.registry import Component
from transmodal.yaml_limits import MAX_CONFIG_BYTES, decode_config, parse_yaml


# Bounds that keep every value within what the engine can represent and allocate: a fuzzed or mistyped value is
# refused here, with its path, rather than failing deep inside torch.
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 100_000
MAX_BATCH = 2**20
MAX_THREADS = 1024
MAX_NAME_LENGTH = 100
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]{1,2})?")


NAME_MAX_BYTES = 255  # the longest file name ext4, xfs, btrfs and APFS allow


def _file_name(max_bytes: int) -> AfterValidator:
    """A name used as one folder name inside output.dir: never a path that could lead outside it."""

    def check(name: str) -> str:
        if name in ("", ".", "..") or "/" in name or os.sep in name or (os.altsep and os.altsep in name):
            raise ValueError("must be a single folder name (no '/', not '.' or '..'), used inside output.dir")
        if "\0" in name:
            raise ValueError("must not contain a NUL character")
        if len(name.encode("utf-8", "surrogateescape")) > max_bytes:
            raise ValueError(f"is longer than the {max_bytes} bytes a folder name may have here")
        return name

    return AfterValidator(check)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, data: Any) -> Any:
        slip = boolean_slip(cls, data) if isinstance(data, Mapping) else None
        if slip is not None:
            raise ValueError(f"{slip}: {str(data[slip]).lower()} is a boolean, not a number")
        return data


def boolean_slip(model: type[BaseModel], values: Mapping[str, Any]) -> str | None:
    """The first of ``values`` that is a boolean for a field of ``model`` that takes only numbers: pydantic would
    read true as 1, but `epochs: true` or `lr: yes` is a slip, not a value."""
    for name, value in values.items():
        field = model.model_fields.get(name) if isinstance(name, str) else None
        if isinstance(value, bool) and field is not None and _takes_only_numbers(field.annotation):
            return name
    return None


def _takes_only_numbers(annotation: Any) -> bool:
    """int or float, optionally None too (but no bool)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = set(typing.get_args(annotation)) if union else {annotation}
    kinds.discard(type(None))
    return bool(kinds) and kinds <= {int, float}


class ComponentSpec(BaseModel):
    """A component by name; every other key is one of the component's own parameters."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(max_length=MAX_NAME_LENGTH)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AugmentConfig(_Strict):
    crop_padding: int = Field(0, ge=0, le=256, description="Random crop after zero padding by this many pixels.")
    hflip: bool = Field(False, description="Random horizontal flip.")
    invert: float = Field(
        0.0, ge=0.0, le=1.0, description="Probability of inverting an image's intensities (dark on light becomes "
        "light on dark): a model trained on one polarity then reads the other.",
    )


class DataConfig(_Strict):
    dataset: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="synthetic-shapes"))
    tokenizer: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="word"), description="Fitted on the texts of tokenizer_fit."
    )
    tokenizer_fit: Literal["train", "train+unlabelled"] = Field(
        "train", description="Texts the tokenizer's vocabulary is learnt from: the labelled training split, or also "
        "the unlabelled target texts (no labels are read), so that words only the target domain uses get their "
        "own tokens for adaptation to align.",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Batched image augmentation.")
    image_normalization: Literal["dataset", "per-image"] = Field(
        "dataset", description="dataset: the encoder's fixed mean and std; per-image: each image's channels "
        "standardised by their own mean and std (instance normalisation of the input), so brightness, contrast and "
        "colour cast no longer tell domains apart.",
    )
    bucket_by_length: bool = Field(False, description="Group texts of similar length into batches.")


class ModelConfig(_Strict):
    encoders: dict[str, ComponentSpec] = Field(
        default_factory=lambda: {"image": ComponentSpec(name="small-cnn"), "text": ComponentSpec(name="bow")},
        description="One encoder (or backbone) per modality used, keyed by the dataset's modality name.",
    )
    fusion: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="concat"))
    head: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="linear"))
    modality_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Drop each modality with this probability.")
    late_fusion: bool = Field(
        False, description="One head per modality, probabilities averaged over the modalities present."
    )
    init_from: str | None = Field(
        None, description="A run directory whose best.pt weights, and tokenizers, a new run starts from instead of "
        "fresh ones (a second stage: DIRT-T after VADA, or fine-tuning on other data). Its model and classes must "
        "match this config's; relative to the working directory.",
    )

    @model_validator(mode="after")
    def _some_encoder(self) -> ModelConfig:
        if not self.encoders:
            raise ValueError("at least one encoder is needed, e.g. encoders: {image: {name: small-cnn}}")
        return self


class OptimizerConfig(_Strict):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD only.")
    nesterov: bool = Field(False, description="SGD only.")
    grad_clip: float | None = Field(None, gt=0.0, description="Clip the gradient norm to this value.")


class ScheduleConfig(_Strict):
    name: Literal["constant", "cosine", "step", "annealed"] = Field(
        "cosine", description="annealed: lr / (1 + alpha p)^beta over training progress p (Ganin et al., 2016)."
    )
    warmup_epochs: float = Field(0.0, ge=0.0, le=MAX_EPOCHS,
                                 description="Linear warm-up, in epochs (fractions allowed).")
    step_epochs: int = Field(10, ge=1, le=MAX_EPOCHS,
                             description="step: multiply the rate by gamma every this many epochs.")
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    min_lr_scale: float = Field(0.0, ge=0.0, le=1.0, description="cosine: final rate as a fraction of lr.")
    alpha: float = Field(10.0, ge=0.0, description="annealed: how fast the rate falls (the paper's 10).")
    beta: float = Field(0.75, ge=0.0, description="annealed: exponent of the decay (the paper's 0.75).")


class EarlyStoppingConfig(_Strict):
    patience: int = Field(ge=1, le=MAX_EPOCHS, description="Stop after this many epochs in a row in which the "
                          "validator's score did not improve on its best.")


class TrainerConfig(_Strict):
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(128, ge=1, le=MAX_BATCH, description="Labelled source samples per optimizer step: "
                            "global, divided between the processes under torchrun.")
    target_batch_size: int | None = Field(None, ge=1, le=MAX_BATCH, description="Unlabelled target batch; default "
                                          "batch_size. Global, like batch_size.")
    eval_batch_size: int = Field(512, ge=1, le=MAX_BATCH, description="Global, like batch_size.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="fp16 needs CUDA.")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    log_every: int = Field(20, ge=1, le=10**9,
                           description="Steps between progress updates and step records of output.loggers "
                                       "(each one syncs the device).")
    num_threads: int | None = Field(None, ge=1, le=MAX_THREADS,
                                    description="CPU threads for torch; default: torch's choice.")
    flush_denormal: bool = Field(True, description="Flush denormal floats on CPU (LSTM backward collapses without).")
    batchnorm: Literal["per-domain", "joint"] = Field(
        "per-domain", description="How target batches meet BatchNorm in training. per-domain: each domain is "
                                  "normalised by its own statistics, in training and in evaluation (Chang et al., "
                                  "2019); joint: one pass over both domains, normalised by their mixture.")
    sync_batchnorm: bool = Field(False, description="Under torchrun (CUDA only): BatchNorm normalises by the "
                                 "statistics of the whole global batch instead of each process's share.")
    distributed_timeout: float = Field(600, ge=1, le=86_400, description="Under torchrun: seconds a process waits "
                                       "for the others before the run stops with an error (a rank died or hangs).")
    checkpoint_every: int | None = Field(
        None, ge=1, le=10**9, description="Also write checkpoints/last.pt every this many optimizer steps inside an "
                                          "epoch, so that --resume repeats at most that many steps.")
    checkpoint_every_minutes: float | None = Field(
        None, gt=0, le=10**6, description="Also write checkpoints/last.pt inside an epoch once this many minutes "
                                          "have passed since the last one (looked at every log_every steps).")
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="{patience: N}: stop when the run's validator has not improved for N epochs; best.pt "
                          "keeps the best epoch. Default: train every epoch.")
    compile: bool = Field(False, description="torch.compile the model in place (nn.Module.compile: parameter names "
                          "and checkpoints stay as they are); the first steps, and each new input shape, pay the "
                          "compilation.")
    ema_decay: float | None = Field(
        None, gt=0.0, lt=1.0, description="Evaluate, select and save an exponential moving average of the weights "
                                          "(Polyak averaging), updated after every optimizer step with this decay, "
                                          "e.g. 0.998 as in Shu et al. (2018); the first updates decay less (see "
                                          "transmodal/weight_average.py). Default: the weights as trained.")
    score_validators: bool = Field(True, description="After each epoch also score every built-in label-free "
                                   "validator (on bounded samples); summary.json says which epoch each would pick.")

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not DEVICE_PATTERN.fullmatch(device):
            raise ValueError(f"'{device[:40]}' is not a device transmodal trains on; use auto, cpu, cuda or cuda:N")
        return device


class OutputConfig(_Strict):
    dir: Path = Field(Path("runs"), description="Parent folder of run directories.")
    name: Annotated[str, _file_name(NAME_MAX_BYTES)] | None = Field(
        None, description="Run directory name inside dir; default: experiment name and a timestamp.")
    loggers: list[Literal["jsonl", "csv", "tensorboard"]] = Field(
        default_factory=lambda: ["jsonl"], max_length=3,
        description="Where step records (every trainer.log_every steps: loss terms, learning rates, samples/s) and "
                    "epoch records go besides metrics.jsonl: jsonl (steps.jsonl), csv (steps.csv, metrics.csv), "
                    "tensorboard (tensorboard/, the tensorboard extra). [] for none.")

    @field_validator("dir")
    @classmethod
    def _no_nul(cls, folder: Path) -> Path:  # no file system takes one; train would fail only when creating it
        if "\0" in str(folder):
            raise ValueError("must not contain a NUL character")
        return folder

    @field_validator("loggers")
    @classmethod
    def _distinct_loggers(cls, loggers: list[str]) -> list[str]:
        if len(set(loggers)) != len(loggers):
            raise ValueError("names a logger twice")
        return loggers


class Experiment(_Strict):
    """One experiment: data x model x adaptation x optimisation."""

    name: Annotated[str, _file_name(MAX_NAME_LENGTH)] = Field(
        "experiment", description="Also the start of generated run directory names.")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    adaptation: list[ComponentSpec] = Field(
        default_factory=lambda: [ComponentSpec(name="finetune")], description="Strategies, applied in order."
    )
    validator: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="source-val"), description="Picks the best checkpoint."
    )
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)


# -- loading --------------------------------------------------------------------------------------------------


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}.{did_you_mean(path)}") from None
    except OSError as error:
        raise ConfigError(f"Cannot read config file {path}: {error.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES // 1024} KiB, far more than any experiment "
                          f"config needs; is it the right file?")
    loaded = parse_yaml(decode_config(data, str(path)), str(path))
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must contain a mapping of settings at the top level, got {type(loaded).__name__}")
    return loaded


def did_you_mean(path: Path) -> str:
    """A hint naming the entry of ``path``'s folder whose name is closest to ``path``'s, or "" if none is close."""
    try:
        siblings = [entry.name for entry in path.parent.iterdir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, [name for name in siblings if name != path.name], n=1)
    return f" Did you mean: {path.parent / close[0]}?" if close else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str], defaults: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Apply ``path.to.key=value`` overrides; values are parsed as YAML ("3" is 3, "[1, 2]" a list). A section
    that ``raw`` leaves out starts as its value in ``defaults`` (what it would have been without the override),
    so that setting one key of it keeps the others."""
    for override in overrides:
        path, separator, text = override.partition("=")
        if not separator or not path.strip():
            raise ConfigError(f"--set expects path.to.key=value, got '{override}'")
        try:
            value = parse_yaml(text, f"--set {path.strip()}")
        except ConfigError as error:
            if not isinstance(error.__cause__, yaml.YAMLError):
                raise  # a value too large or too deep is refused, not kept as a string
            value = text
        _set_path(raw, path.strip().split("."), value, override, defaults)
    return raw


def _set_path(node: Any, keys: list[str], value: Any, override: str, default: Any) -> None:
    """Set ``keys`` in ``node``, walking ``default`` (the same structure's defaults, or None) alongside."""
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {override}: '{key}' is not an index of a list of {len(node)} items")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
                default = default[int(key)] if isinstance(default, list) and int(key) < len(default) else None
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                default = default.get(key) if isinstance(default, Mapping) else None
                if key not in node:
                    node[key] = copy.deepcopy(default) if isinstance(default, (dict, list)) else {}
                node = node[key]
        else:
            walked = ".".join(keys[:depth])
            raise ConfigError(f"--set {override}: '{walked}' is a value, not a section")


def parse_experiment(raw: dict[str, Any], source: str = "config") -> Experiment:
    """Phase one: the structure of the experiment."""
    try:
        return Experiment.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, f"{source} is invalid", Experiment)) from None


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None) -> Experiment:
    raw = load_yaml(path) if path is not None else default_experiment_dict()
    apply_overrides(raw, overrides or [], Experiment().model_dump(mode="json"))
    _fill_default_names(raw, Experiment)
    return parse_experiment(raw, str(path) if path is not None else "the default experiment")


def as_experiment(source: Experiment | Mapping[str, Any] | str | os.PathLike[str]) -> Experiment:
    """An experiment given as an ``Experiment``, a dict shaped like the YAML file, or the path of a YAML file."""
    if isinstance(source, Experiment):
        return source
    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))  # default names are filled in place; the caller's dict stays as given
        _fill_default_names(raw, Experiment)
        return parse_experiment(raw, "the experiment dict")
    if isinstance(source, (str, os.PathLike)):
        return load_experiment(source)
    raise TypeError(f"expected an Experiment, a dict or the path of a YAML file, got {type(source).__name__}")


def _fill_default_names(raw: dict[str, Any], model: type[BaseModel]) -> None:
    """Name the default component where ``raw`` gives a component's parameters without its name.

    ``--set data.dataset.train_size=400`` (or ``fusion: {hidden: 64}`` in a file) means "the default dataset,
    with this parameter", so it keeps the name of the field's default (synthetic-shapes). Entries of a list
    (adaptation) replace the default list as a whole, so they have no default to keep and must be named.
    """
    for key, value in raw.items():
        field = model.model_fields.get(key)
        if field is None or not isinstance(value, dict):
            continue
        annotation = _model_in(field.annotation)
        origin = typing.get_origin(annotation)  # before issubclass: list[X] passes isinstance(.., type) on 3.10
        if annotation is ComponentSpec:
            default = field.get_default(call_default_factory=True)
            if "name" not in value and isinstance(default, ComponentSpec):
                raw[key] = {"name": default.name, **value}
        elif origin is dict and typing.get_args(annotation)[-1] is ComponentSpec:
            defaults = field.get_default(call_default_factory=True) or {}
            for entry, spec in value.items():
                if isinstance(spec, dict) and "name" not in spec and entry in defaults:
                    value[entry] = {"name": defaults[entry].name, **spec}
        elif origin is None and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _fill_default_names(value, annotation)


def default_experiment_dict() -> dict[str, Any]:
    """The experiment ``transmodal train`` runs without a config: image + caption, concat fusion, DANN."""
    return {
        "name": "default",
        "model": {
            "encoders": {"image": {"name": "small-cnn"}, "text": {"name": "bow"}},
            "fusion": {"name": "concat", "hidden": 128},
        },
        "adaptation": [{"name": "dann"}],
        "trainer": {"epochs": 6},
    }


# -- phase two: components ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedComponent:
    path: str  # where in the config, e.g. "model.fusion"
    component: Component
    params: BaseModel


def component_specs(experiment: Experiment) -> list[tuple[str, tuple[str, ...], ComponentSpec]]:
    """(path, kinds to look in, spec) for every component the experiment names."""
    specs: list[tuple[str, tuple[str, ...], ComponentSpec]] = [
        ("data.dataset", ("dataset",), experiment.data.dataset),
        ("data.tokenizer", ("tokenizer",), experiment.data.tokenizer),
    ]
    for modality, spec in experiment.model.encoders.items():
        specs.append((f"model.encoders.{modality}", ("encoder", "backbone"), spec))
    specs.append(("model.fusion", ("fusion",), experiment.model.fusion))
    specs.append(("model.head", ("head",), experiment.model.head))
    for index, spec in enumerate(experiment.adaptation):
        specs.append((f"adaptation.{index}", ("strategy",), spec))
    specs.append(("validator", ("validator",), experiment.validator))
    return specs


def validate_components(
    experiment: Experiment, plugins: Any, only: tuple[str, ...] | None = None
) -> dict[str, ResolvedComponent]:
    """Phase two: every named component exists and its parameters fit its model. All errors at once. ``only``
    limits it to the components whose path starts with one of these (a saved model needs no dataset)."""
    resolved: dict[str, ResolvedComponent] = {}
    problems: list[str] = []
    for path, kinds, spec in component_specs(experiment):
        if only is not None and not path.startswith(only):
            continue
        component = next((plugins.registry(k).components.get(spec.name) for k in kinds
                          if spec.name in plugins.registry(k)), None)
        if component is None:
            message = plugins.registry(kinds[0]).unknown_message(
                spec.name, also=tuple(plugins.registry(kind) for kind in kinds[1:])
            )
            problems.append(f"{path}.name: {message}")
            continue
        slip = boolean_slip(component.params, spec.params)
        if slip is not None:
            problems.append(f"{path}.{slip}: {str(spec.params[slip]).lower()} is a boolean, not a number")
            continue
        try:
            params = component.params.model_validate(spec.params)
        except ValidationError as error:
            message = format_validation_error(error, f"{path} ({component.kind} '{spec.name}')",
                                              component.params, prefix=path)
            if any(item["type"] == "extra_forbidden" for item in error.errors()):
                # Often another component's parameters, left behind by `--set path.name=...`.
                message += (f"\n  To swap in a component with its own defaults, replace the whole entry: "
                            f"--set '{path}={{name: {spec.name}}}'")
            problems.append(message)
            continue
        resolved[path] = ResolvedComponent(path, component, params)
    if problems:
        unknown_only = all("Unknown " in problem for problem in problems)
        error_class = UnknownComponentError if unknown_only else ConfigError
        raise error_class("\n".join(problems))
    return resolved


def resolved_config(experiment: Experiment, components: Mapping[str, ResolvedComponent]) -> dict[str, Any]:
    """The experiment as plain data with every component's parameters filled in from its model, defaults
    included: the run is pinned even if a later version changes a default."""
    config = experiment.model_dump(mode="json")
    for path, resolved in components.items():
        node: Any = config
        for key in path.split("."):
            node = node[int(key)] if isinstance(node, list) else node[key]
        node.update(resolved.params.model_dump(mode="json"))
    return config


# -- error messages -------------------------------------------------------------------------------------------


def format_validation_error(
    error: ValidationError, title: str, model: type[BaseModel], prefix: str = ""
) -> str:
    lines = [f"{title}:"]
    for item in error.errors():
        location = [str(part) for part in item["loc"]]
        path = ".".join(([prefix] if prefix else []) + location) or "(top level)"
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, item["loc"][:-1])
            key = location[-1]
            hint = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f" Did you mean: {hint[0]}?" if hint else ""
            lines.append(f"  {path}: unknown key.{suggestion} Allowed keys: {', '.join(allowed) or 'none'}")
            continue
        value = item.get("input")
        shown = "" if isinstance(value, dict) or item["type"] == "missing" else f" (got {_short_repr(value)})"
        lines.append(f"  {path}: {item['msg']}{shown}")
    return "\n".join(lines)


def _short_repr(value: Any, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown)} characters)"


def _allowed_keys(model: type[BaseModel], location: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model found at ``location`` inside ``model``."""
    annotation: Any = model
    for part in location:
        annotation = _model_in(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        else:
            args = typing.get_args(annotation)  # list[X] / dict[str, X]: step into X
            annotation = args[-1] if args else None
    annotation = _model_in(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return sorted(annotation.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """Unwrap Optional[...] to the model inside, if any."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation
