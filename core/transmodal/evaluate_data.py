"""Evaluating a saved model on data other than its run's: a config file's dataset, or a labelled manifest.

The model is rebuilt from the run directory alone (``trained_model.py``), so the training data may be gone. Labels
are matched to the model's classes by name; a label the model never learnt is refused rather than counted wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from transmodal.config import load_experiment, validate_components
from transmodal.data import Batch, BatchLoader, DatasetBundle, Split, presence_key, split_columns
from transmodal.errors import InputError
from transmodal.plugins import Plugins, get_plugins
from transmodal.predict import batches, read_manifest
from transmodal.tables import FORMATS
from transmodal.tabular import schema_of
from transmodal.trained_model import Domain, TrainedModel, load
from transmodal.trainer import SOURCE_PREFIX


def evaluate_on(
    run_dir: Path, data: Path, checkpoint: str = "best", domain: Domain = "source", plugins: Plugins | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Metrics (with per-class scores and the confusion matrix) of ``run_dir``'s checkpoint on ``data``: a
    manifest file (one split, evaluated as ``domain``) or a config file whose dataset's evaluation splits are
    evaluated as their names say (``source/...`` as source, the rest as target)."""
    trained = load(run_dir, checkpoint, plugins=plugins)
    if data.is_dir():
        raise InputError(f"--data {data} is a folder; give a manifest file (.csv, .tsv, .jsonl or .parquet) whose rows "
                         f"name their files and labels")
    if not data.is_file():
        raise InputError(f"--data {data}: no such file")
    if data.suffix.lower() in FORMATS:
        splits = {data.name: (_manifest_batches(trained, data), domain)}
    else:
        bundle = _dataset(data, plugins)
        splits = {name: (_split_batches(trained, bundle, name), _domain_of(name))
                  for name, split in bundle.evaluation.items()}
    header = {**trained.header, "data": str(data)}
    return trained.evaluate(splits), header


def _domain_of(split: str) -> Domain:
    return "source" if split.startswith(SOURCE_PREFIX) else "target"


def _class_index(trained: TrainedModel, names: list[str | None], where: str) -> torch.Tensor:
    index = {name: position for position, name in enumerate(trained.classes)}
    unknown = sorted({str(name) for name in names if name not in index})
    if unknown:
        raise InputError(f"{where}: labels {', '.join(unknown[:5])} are not among the model's classes "
                         f"({', '.join(trained.classes[:20])})")
    return torch.tensor([index[name] for name in names if name is not None], dtype=torch.int64)


def _manifest_batches(trained: TrainedModel, path: Path) -> list[Batch]:
    inputs = read_manifest(trained, path)
    if inputs.labels is None:
        raise InputError(f"--data {path}: evaluating needs a 'label' column (predict needs none)")
    unlabelled = [inputs.ids[i] for i, label in enumerate(inputs.labels) if label is None]
    if unlabelled:
        raise InputError(f"--data {path}: {len(unlabelled)} rows have no label, e.g. {unlabelled[0]}; "
                         f"evaluate only labelled rows")
    labels = _class_index(trained, inputs.labels, f"--data {path}")
    result = []
    start = 0
    for batch in batches(trained, inputs):
        size = next(iter(batch.values())).shape[0]
        result.append({**batch, "label": labels[start:start + size]})
        start += size
    return result


def _dataset(path: Path, plugins: Plugins | None) -> DatasetBundle:
    experiment = load_experiment(path)
    components = validate_components(experiment, plugins or get_plugins(), only=("data.dataset",))
    resolved = components["data.dataset"]
    return resolved.component.create(resolved.params, experiment.trainer.seed)


def _split_batches(trained: TrainedModel, bundle: DatasetBundle, name: str) -> Iterator[Batch]:
    split: Split = bundle.evaluation[name]
    for modality, spec in trained.modalities.items():
        if modality not in bundle.modalities:
            raise InputError(f"--data: the dataset has no modality '{modality}' (it has "
                             f"{', '.join(sorted(bundle.modalities))}); the model takes {modality}")
        if bundle.modalities[modality] != spec.kind:
            raise InputError(f"--data: the dataset's '{modality}' is {bundle.modalities[modality]}, the model's is "
                             f"{spec.kind}")
        if spec.kind in ("image", "vector") and tuple(split.data[modality].shape[1:]) != tuple(spec.shape):
            raise InputError(f"--data: the dataset's '{modality}' samples have shape "
                             f"{tuple(split.data[modality].shape[1:])}, the model takes {tuple(spec.shape)}; give "
                             f"data of the model's shape (for images: the image size it was trained at)")
    columns: dict[str, Any] = {}
    for modality, spec in trained.modalities.items():
        value = split.data[modality]
        if spec.kind == "text":
            value = spec.tokenizer.encode_batch(list(value))
        elif spec.kind == "tabular":  # the training split's categories and means, not this dataset's
            value = schema_of(spec).encode(value)
        columns[modality] = value
        if presence_key(modality) in split.data:
            columns[presence_key(modality)] = split.data[presence_key(modality)]
    names = [bundle.classes[i] for i in split.data["label"].tolist()]
    columns["label"] = _class_index(trained, names, f"--data: split {name}")
    text_keys = tuple(m for m, spec in trained.modalities.items() if spec.kind == "text")
    loader = BatchLoader(split_columns(Split(columns), list(columns)), trained.experiment.trainer.eval_batch_size,
                         shuffle=False, text_keys=text_keys)
    return loader.epoch()
