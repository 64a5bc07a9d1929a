"""``transmodal rank``: score candidate encoders on an experiment's labelled data without fine-tuning any of them,
so that only the most promising one need be trained.

Each candidate is an encoder (or backbone) of the registry with its parameters, or a trained run directory. The
experiment's dataset is built once; each candidate encodes the labelled samples of one split (the training split
of the source domain unless asked otherwise: the target domain's test labels are never read unless the user names
that split) and its features are scored with LogME, LEEP and H-score (:mod:`transmodal.transferability`).

What is scored, per candidate:

- an encoder of the registry: its output on the scored modality (tokens mean-pooled), built with the
  experiment's seed, in eval mode; no fusion or head, which would be untrained. LEEP needs the class
  probabilities of a source model, which a bare encoder does not have: its "source classes" are N-LEEP's
  (Li et al., CVPR 2021), the components of a Gaussian mixture fitted to its features.
- a run directory (a model trained by transmodal, on any labelled task with that modality): the input of its
  head (its fused features) from its best checkpoint, fed the scored modality alone; LEEP reads its own head's
  class probabilities, the source classes of LEEP's definition.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from transmodal.config import (
    Experiment,
    ResolvedComponent,
    format_validation_error,
    validate_components,
)
from transmodal.data import (
    BatchLoader,
    DatasetBundle,
    MappedColumn,
    ModalitySpec,
    Split,
    presence_key,
)
from transmodal.encoder import ImageInput
from transmodal.errors import ConfigError, DataError
from transmodal.fusion import pool_tokens
from transmodal.plugins import Plugins, get_plugins
from transmodal.tabular import SCHEMA_KEY, TabularColumn, TabularSchema, schema_of
from transmodal.transferability import (
    NLEEP_COMPONENTS_PER_CLASS,
    gaussian_mixture_posteriors,
    hscore,
    leep,
    logme,
)
from transmodal.yaml_limits import parse_yaml

METRICS = ("logme", "leep", "hscore")
METRIC_NAMES = {"logme": "LogME", "leep": "LEEP", "hscore": "H-score"}
TRAIN_SPLIT = "train"
_LABEL = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class Candidate:
    """One model to score: an encoder spec (``{"name": ..., **params}``) or a run directory."""

    label: str
    spec: dict[str, Any] | None = None
    run_dir: Path | None = None

    def describe(self) -> str:
        if self.run_dir is not None:
            return f"run {self.run_dir}"
        params = {key: value for key, value in (self.spec or {}).items() if key != "name"}
        shown = ", ".join(f"{key}: {value}" for key, value in params.items())
        return f"{self.spec['name']}" + (f" {{{shown}}}" if shown else "") if self.spec else "?"


@dataclass
class CandidateScore:
    label: str
    candidate: str  # what was scored, in words
    feature_dim: int
    leep_source: str  # "head": the run's own classifier; "gmm": N-LEEP's Gaussian mixture
    scores: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Ranking:
    dataset: str
    split: str
    domain: str
    modality: str
    samples: int
    classes: int
    sort_by: str
    metrics: tuple[str, ...]
    hscore_shrinkage: str
    candidates: list[CandidateScore]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "metrics": list(self.metrics)}

    def table(self) -> str:
        lines = [(f"{self.dataset}, split {self.split} ({self.domain} domain): {self.samples} labelled samples, "
                  f"{self.classes} classes, modality {self.modality}; no candidate was trained"),
                 (f"ranked by {METRIC_NAMES[self.sort_by]}; [n] is the candidate's rank by each score "
                  f"(higher is better for all)")]
        label_width = max(9, *(len(c.label) for c in self.candidates))
        header = f"{'rank':>4}  {'candidate':<{label_width}}"
        for metric in self.metrics:
            header += f"{METRIC_NAMES[metric]:>16}"
        lines.append(header + f"{'dim':>7}  LEEP source   seconds  model")
        for position, score in enumerate(self.candidates, 1):
            row = f"{position:>4}  {score.label:<{label_width}}"
            for metric in self.metrics:
                row += f"{score.scores[metric]:>11.4f} [{score.ranks[metric]}]".rjust(16)
            lines.append(row + f"{score.feature_dim:>7}  {score.leep_source:<11}{score.seconds:>9.1f}  "
                               f"{score.candidate}")
        return "\n".join(lines)


# -- candidates -----------------------------------------------------------------------------------------------


def parse_candidates(backbones: Sequence[str] = (), candidates: Sequence[str] = ()) -> list[Candidate]:
    """``--backbones a,b`` (names with their defaults) and ``--candidate [LABEL=]SPEC`` (SPEC: a YAML mapping
    ``{name: small-cnn, channels: [8, 16]}``, a component name, or a run directory) as candidates."""
    parsed: list[Candidate] = []
    for group in backbones:
        for name in (part.strip() for part in group.split(",")):
            if not name:
                raise ConfigError(f"--backbones '{group}' has an empty name; give names separated by commas, "
                                  f"e.g. --backbones small-cnn,resnet18")
            parsed.append(Candidate(name, {"name": name}))
    for text in candidates:
        label, separator, rest = text.partition("=")
        if separator and _LABEL.fullmatch(label.strip()):
            label, spec_text = label.strip(), rest.strip()
        else:
            label, spec_text = "", text.strip()
        if not spec_text:
            raise ConfigError(f"--candidate '{text}': nothing after the label; write LABEL=SPEC, SPEC being a "
                              f"component name, a mapping such as '{{name: small-cnn, channels: [8, 16]}}', or a "
                              f"run directory")
        parsed.append(_candidate(label, spec_text, text))
    if not parsed:
        raise ConfigError("no candidates to rank: name them with --backbones a,b,c (each with its default "
                          "parameters) or --candidate LABEL=SPEC (repeatable)")
    seen: set[str] = set()
    for candidate in parsed:
        if candidate.label in seen:
            raise ConfigError(f"two candidates are labelled '{candidate.label}'; give each its own label with "
                              f"--candidate LABEL=SPEC")
        seen.add(candidate.label)
    return parsed


def _candidate(label: str, spec_text: str, original: str) -> Candidate:
    path = Path(spec_text).expanduser()
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"--candidate '{original}': {path} is a folder but not a run directory (no "
                              f"config.yaml); give a run directory that transmodal train wrote")
        return Candidate(label or path.name, run_dir=path)
    if not spec_text.startswith("{") and ("/" in spec_text or spec_text.startswith((".", "~"))):
        raise ConfigError(f"--candidate '{original}': there is no run directory {path}; give the folder that "
                          f"transmodal train wrote, a component name, or a mapping such as "
                          f"'{{name: small-cnn, channels: [8, 16]}}'")
    value = parse_yaml(spec_text, f"--candidate {original}")
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ConfigError(f"--candidate '{original}': write a component name or a mapping with a name, e.g. "
                          f"'{{name: small-cnn, channels: [8, 16]}}'")
    return Candidate(label or value["name"], dict(value))


def _as_candidates(items: Sequence[Any]) -> list[Candidate]:
    candidates: list[Candidate] = []
    for item in items:
        if isinstance(item, Candidate):
            candidates.append(item)
        elif isinstance(item, Mapping):
            if not isinstance(item.get("name"), str):
                raise ConfigError(f"candidate {dict(item)!r} has no name; write {{'name': 'small-cnn', ...}}")
            candidates.append(Candidate(item["name"], dict(item)))
        elif isinstance(item, (str, os.PathLike)):
            candidates.extend(parse_candidates([], [os.fspath(item)]))
        else:
            raise TypeError(f"a candidate is a Candidate, a name, a spec dict or a run directory, got {item!r}")
    if not candidates:
        raise ConfigError("no candidates to rank")
    labels = [c.label for c in candidates]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"two candidates are labelled '{repeated[0]}'; give each its own label")
    return candidates


def resolve_candidates(candidates: Sequence[Candidate], plugins: Plugins) -> dict[str, ResolvedComponent]:
    """Each encoder candidate's component and validated parameters; every unknown name or bad parameter at once,
    with the registry's suggestions."""
    resolved: dict[str, ResolvedComponent] = {}
    problems: list[str] = []
    encoders, backbones = plugins.registry("encoder"), plugins.registry("backbone")
    for candidate in candidates:
        if candidate.spec is None:
            continue
        name = candidate.spec["name"]
        component = encoders.components.get(name) or backbones.components.get(name)
        if component is None:
            problems.append(f"candidate '{candidate.label}': {encoders.unknown_message(name, also=(backbones,))}")
            continue
        params = {key: value for key, value in candidate.spec.items() if key != "name"}
        try:
            resolved[candidate.label] = ResolvedComponent(f"candidate {candidate.label}", component,
                                                          component.params.model_validate(params))
        except ValidationError as error:
            problems.append(format_validation_error(error, f"candidate '{candidate.label}' ({component.kind} "
                                                           f"'{name}')", component.params))
    if problems:
        raise ConfigError("\n".join(problems))
    return resolved


# -- ranking --------------------------------------------------------------------------------------------------


def rank(
    experiment: Experiment | Mapping[str, Any] | str | os.PathLike[str],
    candidates: Sequence[Candidate | str | Mapping[str, Any] | os.PathLike[str]],
    modality: str | None = None,
    split: str = TRAIN_SPLIT,
    max_samples: int | None = None,
    metrics: Sequence[str] = METRICS,
    sort_by: str = "logme",
    hscore_shrinkage: str = "none",
    device: str | None = None,
    batch_size: int | None = None,
    plugins: Plugins | None = None,
    progress: Callable[[str], None] | None = None,
) -> Ranking:
    """Score every candidate on ``split`` of the experiment's dataset and rank them by ``sort_by``.

    ``experiment`` is an ``Experiment``, a dict shaped like the YAML file or a YAML path (its dataset, tokenizer
    and trainer settings are used). A candidate is a :class:`Candidate`, a component name or ``"LABEL=SPEC"``
    string as ``--candidate`` takes, an encoder spec ``{"name": ..., **params}``, or a run directory's path.
    ``split`` is ``"train"`` (the labelled source training split, the default) or an evaluation split's name;
    ``max_samples`` scores a random subset of that many (drawn with the experiment's seed)."""
    from transmodal.config import as_experiment
    from transmodal.devices import resolve_device

    experiment = as_experiment(experiment)
    # One name given where a list belongs would be read letter by letter.
    candidates = _as_candidates([candidates] if isinstance(candidates, str | os.PathLike) else candidates)

    metrics = tuple(dict.fromkeys([metrics] if isinstance(metrics, str) else metrics))
    unknown = [m for m in (*metrics, sort_by) if m not in METRICS]
    if unknown or not metrics:
        raise ConfigError(f"unknown score {unknown or metrics}; choose among {', '.join(METRICS)}")
    if sort_by not in metrics:
        raise ConfigError(f"--sort-by {sort_by} is not among the scores computed ({', '.join(metrics)})")
    if hscore_shrinkage not in ("none", "ledoit-wolf"):
        raise ConfigError(f"H-score shrinkage '{hscore_shrinkage}': use none or ledoit-wolf")
    if max_samples is not None and max_samples < 2:
        raise ConfigError(f"--max-samples {max_samples}: at least 2 samples are needed to score anything")
    say = progress or (lambda message: None)
    plugins = plugins or get_plugins()
    components = validate_components(experiment, plugins, only=("data.",))
    resolved = resolve_candidates(candidates, plugins)
    for candidate in candidates:
        if candidate.run_dir is not None and not (candidate.run_dir / "config.yaml").is_file():
            raise ConfigError(f"candidate '{candidate.label}': {candidate.run_dir} is not a run directory")
    trainer = experiment.trainer
    if trainer.num_threads is not None:
        torch.set_num_threads(trainer.num_threads)
    target_device = resolve_device(device or trainer.device)
    seed = trainer.seed

    say(f"building dataset {experiment.data.dataset.name}")
    bundle: DatasetBundle = components["data.dataset"].component.create(components["data.dataset"].params, seed)
    modality = _scored_modality(experiment, bundle, modality, candidates, resolved)
    chosen, domain = _split(bundle, split)
    rows = _rows(chosen, modality, max_samples, seed, split)
    labels = chosen.data["label"][rows].to(torch.int64)
    classes = int(torch.unique(labels).numel())
    if classes < 2:
        raise DataError(f"split {split} has samples of a single class ({int(labels[0])}) for modality "
                        f"{modality}: no ranking can tell candidates apart on it; score another split")
    column = chosen.data[modality]
    kind = bundle.modalities[modality]
    eval_batch = batch_size or trainer.eval_batch_size

    encoder_inputs = None  # (spec, values), made once for all encoder candidates
    results: list[CandidateScore] = []
    for index, candidate in enumerate(candidates, 1):
        say(f"[{index}/{len(candidates)}] {candidate.label}: {candidate.describe()}")
        start = time.perf_counter()
        if candidate.run_dir is not None:
            features, probabilities = _run_features(candidate, modality, kind, column, rows, target_device,
                                                    eval_batch)
            source = "head"
        else:
            if encoder_inputs is None:
                encoder_inputs = _encoder_inputs(experiment, components, bundle, modality, kind, column, rows)
            spec, values = encoder_inputs
            torch.manual_seed(seed)
            encoder = resolved[candidate.label].component.create(resolved[candidate.label].params, spec)
            features = _encoder_features(encoder, kind, values, target_device, eval_batch)
            probabilities = None
            source = "gmm"
        scores: dict[str, float] = {}
        if "logme" in metrics:
            scores["logme"] = logme(features, labels)
        if "leep" in metrics:
            if probabilities is None:
                probabilities = gaussian_mixture_posteriors(features, NLEEP_COMPONENTS_PER_CLASS * classes, seed)
            scores["leep"] = leep(probabilities, labels)
        if "hscore" in metrics:
            scores["hscore"] = hscore(features, labels, shrinkage=hscore_shrinkage)  # type: ignore[arg-type]
        results.append(CandidateScore(candidate.label, candidate.describe(), int(features.shape[1]),
                                      source if "leep" in metrics else "-", scores,
                                      seconds=time.perf_counter() - start))
    for metric in metrics:
        for position, score in enumerate(sorted(results, key=lambda s: -s.scores[metric]), 1):
            score.ranks[metric] = position
    results.sort(key=lambda s: s.ranks[sort_by])
    return Ranking(experiment.data.dataset.name, split, domain, modality, len(rows), classes, sort_by, metrics,
                   hscore_shrinkage, results)


def _scored_modality(experiment: Experiment, bundle: DatasetBundle, modality: str | None,
                     candidates: Sequence[Candidate], resolved: dict[str, ResolvedComponent]) -> str:
    available = sorted(bundle.modalities)
    if modality is not None:
        if modality not in bundle.modalities:
            raise ConfigError(f"--modality {modality}: dataset '{experiment.data.dataset.name}' has no such "
                              f"modality; it has {', '.join(available)}")
        return modality
    used = [m for m in experiment.model.encoders if m in bundle.modalities] or available
    if len(used) == 1:
        return used[0]
    images = [m for m in used if bundle.modalities[m] == "image"]
    only_backbones = all(c.label in resolved and resolved[c.label].component.kind == "backbone"
                         for c in candidates if c.run_dir is None)
    if only_backbones and len(images) == 1:
        return images[0]
    raise ConfigError(f"the experiment uses the modalities {', '.join(used)}; say which one the candidates encode "
                      f"with --modality NAME")


def _split(bundle: DatasetBundle, split: str) -> tuple[Split, str]:
    if split == TRAIN_SPLIT:
        return bundle.train, "source"
    if split in ("unlabelled", "target/unlabelled"):
        raise ConfigError(f"split '{split}' holds the target samples whose labels are hidden: it has no labels to "
                          f"score against. Score the labelled training split (the default) or an evaluation split")
    if split not in bundle.evaluation:
        names = ", ".join([TRAIN_SPLIT, *bundle.evaluation])
        raise ConfigError(f"no split '{split}' in this dataset; the labelled splits are: {names}")
    chosen = bundle.evaluation[split]
    if not chosen.has_labels:
        raise ConfigError(f"split '{split}' carries no labels; score a labelled split ({TRAIN_SPLIT} by default)")
    return chosen, "source" if split.startswith("source/") else "target"


def _rows(chosen: Split, modality: str, max_samples: int | None, seed: int, split: str) -> torch.Tensor:
    """The rows scored: those that have the modality, at most ``max_samples`` of them drawn at random."""
    rows = torch.arange(len(chosen))
    present = chosen.data.get(presence_key(modality))
    if present is not None:
        rows = rows[present.to(torch.bool)]
    if len(rows) < 2:
        raise DataError(f"split {split} has {len(rows)} samples with modality {modality}; at least 2 are needed")
    if max_samples is not None and len(rows) > max_samples:
        generator = torch.Generator().manual_seed(seed)
        rows = rows[torch.randperm(len(rows), generator=generator)[:max_samples]].sort().values
    return rows


def _take(column: Any, rows: torch.Tensor) -> Any:
    if isinstance(column, MappedColumn | TabularColumn):
        return column.select(rows)
    if isinstance(column, torch.Tensor):
        return column[rows]
    return [column[int(i)] for i in rows]  # texts


def _encoder_inputs(experiment: Experiment, components: dict[str, ResolvedComponent], bundle: DatasetBundle,
                    modality: str, kind: str, column: Any, rows: torch.Tensor) -> tuple[ModalitySpec, Any]:
    """The encoder's spec and the scored rows, tokenised as training would (texts: the experiment's tokenizer,
    fitted on the training texts as ``data.tokenizer_fit`` says)."""
    from transmodal.experiment import _tokenizer_texts, tokenizer_for

    values = _take(column, rows)
    if kind == "tabular":  # encoded as training does: with the training split's statistics and categories
        schema = TabularSchema.fit(bundle.train.data[modality])
        return (ModalitySpec(modality, kind, shape=(schema.width,), extras={SCHEMA_KEY: schema.to_dict()}),
                schema.encode(values))
    if kind != "text":
        return ModalitySpec(modality, kind, shape=tuple(column.shape[1:])), values
    texts = _tokenizer_texts(bundle, modality, experiment.data.tokenizer_fit)
    tokenizer = tokenizer_for(components["data.tokenizer"], texts, modality, None)
    spec = ModalitySpec(modality, kind, vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)
    return spec, tokenizer.encode_batch(list(values))


def _batches(values: Any, kind: str, batch_size: int) -> BatchLoader:
    return BatchLoader({"x": values}, batch_size, shuffle=False, text_keys=("x",) if kind == "text" else ())


@torch.inference_mode()
def _encoder_features(encoder: Any, kind: str, values: Any, device: torch.device, batch_size: int) -> torch.Tensor:
    pipeline = None
    if kind == "image":
        channels = values.shape[1]
        pipeline = ImageInput(mean=getattr(encoder, "input_mean", (0.5,) * channels),
                              std=getattr(encoder, "input_std", (0.5,) * channels),
                              size=getattr(encoder, "input_size", None)).to(device).eval()
    encoder = encoder.to(device).eval()
    chunks = []
    for batch in _batches(values, kind, batch_size).epoch(0, whole=True):
        x = batch["x"].to(device)
        encoded = encoder(pipeline(x) if pipeline is not None else x)
        if encoded.dim() == 3:
            mask = encoder.token_mask(x) if hasattr(encoder, "token_mask") else None
            encoded = pool_tokens(encoded, mask)
        chunks.append(encoded.float().cpu())
    return torch.cat(chunks)


@torch.inference_mode()
def _run_features(candidate: Candidate, modality: str, kind: str, column: Any, rows: torch.Tensor,
                  device: torch.device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained run's fused features (its head's input) and its head's class probabilities on the scored
    modality alone (its other modalities, if any, marked absent)."""
    from transmodal.model import TransmodalModel
    from transmodal.trained_model import load

    assert candidate.run_dir is not None
    trained = load(candidate.run_dir, "best", str(device))
    spec = trained.modalities.get(modality)
    if spec is None or spec.kind != kind:
        has = ", ".join(f"{name} ({s.kind})" for name, s in sorted(trained.modalities.items()))
        raise ConfigError(f"candidate '{candidate.label}': the run {candidate.run_dir} has no {kind} modality "
                          f"'{modality}' (it has {has}); rank it on data with that modality, or choose --modality")
    values = _take(column, rows)
    if kind == "text":
        values = spec.tokenizer.encode_batch(list(values))
    elif kind == "tabular":  # the run's own schema: its training split's statistics and categories
        values = schema_of(spec).encode(values)
    elif kind == "image" and tuple(values.shape[1:2]) != tuple(spec.shape[:1]):
        raise DataError(f"candidate '{candidate.label}': the run was trained on {spec.shape[0]}-channel images, "
                        f"these have {values.shape[1]} channels")
    elif kind == "vector" and tuple(values.shape[1:]) != tuple(spec.shape):
        raise DataError(f"candidate '{candidate.label}': the run's '{modality}' vectors have shape {spec.shape}, "
                        f"these {tuple(values.shape[1:])}")
    model = trained.model
    if not isinstance(model, TransmodalModel):
        raise ConfigError(f"candidate '{candidate.label}': rank needs the model's features, which a TorchScript "
                          f"or ONNX bundle does not give (only its logits); give the run directory, or a bundle "
                          f"exported with --format safetensors")
    features, probabilities = [], []
    for batch in _batches(values, kind, batch_size).epoch(0, whole=True):
        full = trained.full_batch({modality: batch["x"]})
        output = model(full)
        features.append(output.features.float().cpu())
        probabilities.append(torch.softmax(output.logits.float(), dim=1).cpu())
    return torch.cat(features), torch.cat(probabilities)
