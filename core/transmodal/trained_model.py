"""A trained model rebuilt from its run directory (or an exported bundle) alone: no dataset, no training files.

What rebuilding needs is saved beside the weights: ``config.yaml`` names the components and their parameters,
``model.json`` holds what the model's shape was read from in the dataset (each modality's kind and per-sample
shape, what was learnt from the training split for it, such as a tabular modality's statistics and categories, and
the class names), and each checkpoint holds the weights and the fitted tokenizers. Encoders are built with
``ModalitySpec.from_checkpoint`` set, so that pretrained weights and word vectors are not read again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from transmodal.checkpoint import read_checkpoint, restoring_from
from transmodal.config import Experiment, validate_components
from transmodal.data import Batch, ModalitySpec, presence_key
from transmodal.devices import resolve_device
from transmodal.domain_norm import TargetStatistics
from transmodal.errors import CheckpointError, ConfigError
from transmodal.experiment import build_model, tokenizer_for
from transmodal.metrics import ClassificationMeter
from transmodal.model import TransmodalModel
from transmodal.plugins import Plugins, get_plugins
from transmodal.run_dir import CHECKPOINTS, load_run_experiment, write_text_atomic
from transmodal.strategy import Strategy
from transmodal.tabular import schema_of
from transmodal.trainer import load_model_weights

MODEL_INFO = "model.json"
MODEL_INFO_FORMAT = 1
TOKENIZERS = "tokenizers"
Domain = Literal["source", "target"]
# The components a model is built from; the dataset and the strategies are not needed.
MODEL_COMPONENTS = ("data.tokenizer", "model.", "adaptation.")


def model_info(modalities: Mapping[str, ModalitySpec], classes: Sequence[str]) -> dict[str, Any]:
    """What the model's shape depends on besides the config: written to ``model.json`` when a run starts."""
    return {
        "format": MODEL_INFO_FORMAT,
        "classes": list(classes),
        "modalities": {name: {"kind": spec.kind, **({"shape": list(spec.shape)} if spec.kind != "text" else {}),
                              **({"extras": spec.extras} if spec.extras else {})}
                       for name, spec in modalities.items()},
    }


def write_model_info(directory: Path, info: dict[str, Any]) -> None:
    write_text_atomic(directory / MODEL_INFO, json.dumps(info, indent=2) + "\n")


def read_model_info(directory: Path) -> dict[str, Any]:
    path = directory / MODEL_INFO
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no {MODEL_INFO}: it was trained by an older transmodal, which did not save the "
            f"modalities and classes the model is built from. Evaluate it with its own dataset (transmodal evaluate "
            f"{directory}), or train it again.")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        modalities = {name: (entry["kind"], tuple(entry.get("shape", ())), dict(entry.get("extras", {})))
                      for name, entry in info["modalities"].items()}
        classes = [str(name) for name in info["classes"]]
        newer = int(info.get("format", 1)) > MODEL_INFO_FORMAT
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path} is damaged ({type(error).__name__}: {error})") from None
    if newer:
        raise CheckpointError(f"{path} has format {info['format']}, from a newer transmodal; upgrade transmodal")
    repeated = sorted({name for name in classes if classes.count(name) > 1})
    if repeated:
        raise CheckpointError(f"{path} is damaged: its classes name {repeated} more than once; a prediction could "
                              f"not say which class it means. Restore the file from the run or export it again")
    return {**info, "modalities": modalities, "classes": classes}


@dataclass
class TrainedModel:
    """A model ready for inference: weights loaded, in eval mode, with the tokenizers and class names it was
    trained with. ``predict`` and ``export`` work on it; ``forward_logits`` is what both call."""

    experiment: Experiment
    model: nn.Module  # a TransmodalModel, or a TorchScript or ONNX model loaded from an exported bundle
    modalities: dict[str, ModalitySpec]  # text specs carry their tokenizer
    classes: list[str]
    device: torch.device
    header: dict[str, Any]  # checkpoint, epoch, selected_by
    target_statistics: TargetStatistics | None = None
    evaluation_strategies: tuple[str, ...] = ()  # strategies that change the model before target evaluation
    traced_domain: Domain | None = None  # TorchScript, ONNX: the domain whose BatchNorm statistics are built in

    def check_domain(self, domain: Domain) -> None:
        """Refuse a domain this model cannot serve as its evaluation did, rather than serve it differently."""
        if domain not in ("source", "target"):
            raise ConfigError(f"domain '{domain}': a model serves the source or the target domain")
        if self.traced_domain is not None and domain != self.traced_domain:
            raise ConfigError(f"this bundle was exported for the {self.traced_domain} domain; predict "
                              f"with domain {self.traced_domain}, or export again with --domain {domain}")
        if domain == "target" and self.evaluation_strategies:
            raise ConfigError(
                f"{', '.join(self.evaluation_strategies)} re-estimates the model on unlabelled target data before "
                f"every target evaluation, which a saved model does not have; predict with domain source, or "
                f"evaluate the run on its own dataset (transmodal evaluate RUN_DIR)")

    def full_batch(self, batch: Batch) -> Batch:
        """Every modality and every presence mask, on the device: absent modalities as zeros marked absent, so
        that the model (and a traced copy of it) always sees the same keys."""
        size = next(iter(batch.values())).shape[0]
        full: Batch = {}
        for name, spec in sorted(self.modalities.items()):
            value = batch.get(name)
            present = batch.get(presence_key(name))
            if value is None:
                shape = (size, 1) if spec.kind == "text" else (size, *spec.shape)
                dtype = {"text": torch.int64, "image": torch.uint8}.get(spec.kind, torch.float32)
                value, present = torch.zeros(shape, dtype=dtype), torch.zeros(size, dtype=torch.bool)
            elif present is None:
                present = torch.ones(size, dtype=torch.bool)
            full[name] = value.to(self.device)
            full[presence_key(name)] = present.to(self.device)
        return full

    @torch.inference_mode()
    def forward_logits(self, batch: Batch, domain: Domain = "source") -> torch.Tensor:
        """Logits (B, classes) of a batch of model inputs (as the loader serves them), with ``domain``'s
        BatchNorm statistics (per-domain BatchNorm keeps the target's apart)."""
        self.check_domain(domain)
        full = self.full_batch(batch)
        if isinstance(self.model, TransmodalModel):
            statistics = self.target_statistics if domain == "target" else None
            with statistics.active() if statistics is not None else contextlib.nullcontext():
                return self.model(full).logits.float()
        return self.model(full).float()

    def evaluate(self, splits: Mapping[str, tuple[Iterable[Batch], Domain]]) -> dict[str, dict[str, Any]]:
        """Metrics, per-class metrics and the confusion matrix of each split: (its batches with "label", the
        domain it is evaluated as)."""
        results = {}
        for name, (batches, domain) in splits.items():
            meter = ClassificationMeter(len(self.classes), torch.device("cpu"))
            for batch in batches:
                meter.update(self.forward_logits(batch, domain).cpu(), batch["label"])
            results[name] = meter.compute(self.classes)
        return results

    def predict(self, inputs: Any, **options: Any) -> list[dict[str, Any]]:
        """Predictions for ``inputs``; see :func:`transmodal.predict.predict` for what they may be."""
        from transmodal.predict import predict

        return predict(self, inputs, **options)

    def export(self, directory: Path, format: str = "safetensors", domain: Domain = "source") -> Path:
        """A self-contained bundle that :func:`load` reads back; see :mod:`transmodal.export`."""
        from transmodal.export import export

        return export(self, Path(directory), format, domain)


def load(
    path: str | Path, checkpoint: str = "best", device: str | None = None, plugins: Plugins | None = None
) -> TrainedModel:
    """A trained model from a run directory (``checkpoint``: best or last) or from a bundle that ``export``
    wrote. ``device`` defaults to the run's ``trainer.device``."""
    from transmodal.export import is_bundle, load_bundle  # export imports this module

    path = Path(path).expanduser()
    if not path.is_dir():
        raise ConfigError(f"No run directory or exported model at {path}.")
    if is_bundle(path):
        return load_bundle(path, device, plugins)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path} is neither a run directory (no config.yaml) nor an exported model")
    experiment = load_run_experiment(path)
    info = read_model_info(path)
    state_path = path / CHECKPOINTS / f"{checkpoint}.pt"
    state = read_checkpoint(state_path)
    header = {"checkpoint": checkpoint, "epoch": state["epoch"], "selected_by": state.get("selected_by")}
    with restoring_from(state_path):
        return build_trained_model(experiment, info, state, header, device, plugins)


def build_trained_model(
    experiment: Experiment,
    info: dict[str, Any],
    state: dict[str, Any],
    header: dict[str, Any],
    device: str | None,
    plugins: Plugins | None,
) -> TrainedModel:
    """Build the model from ``info`` (what :func:`read_model_info` returns) and load ``state``: the weights
    ("model"), the tokenizers and, when the run kept them, the target domain's BatchNorm statistics."""
    if list(state["classes"]) != info["classes"]:
        raise CheckpointError(f"its classes {state['classes'][:5]}... differ from {MODEL_INFO}'s")
    components = validate_components(experiment, plugins or get_plugins(), only=MODEL_COMPONENTS)
    specs: dict[str, ModalitySpec] = {}
    for name in experiment.model.encoders:
        if name not in info["modalities"]:
            raise CheckpointError(f"{MODEL_INFO} has no modality '{name}', which model.encoders names")
        kind, shape, extras = info["modalities"][name]
        if kind == "text":
            if name not in state["tokenizers"]:
                raise CheckpointError(f"it has no tokenizer for the text modality '{name}'")
            tokenizer = tokenizer_for(components["data.tokenizer"], [], name, state["tokenizers"][name])
            specs[name] = ModalitySpec(name, kind, vocab_size=tokenizer.vocab_size, tokenizer=tokenizer,
                                       from_checkpoint=True)
        else:
            specs[name] = ModalitySpec(name, kind, shape=shape, extras=extras, from_checkpoint=True)
            if kind == "tabular":
                schema_of(specs[name])  # a damaged schema is the run's fault, not the encoder's
    target = resolve_device(device or experiment.trainer.device)
    model = build_model(experiment, components, specs, len(info["classes"]))
    strategies = [(spec.name, components[f"adaptation.{index}"].component.create(
        components[f"adaptation.{index}"].params)) for index, spec in enumerate(experiment.adaptation)]
    for _, strategy in strategies:
        strategy.reshape_model(model)  # the layers the checkpoint's weights were saved from (adapters)
    load_model_weights(model, state["model"])
    model = model.to(target).eval()
    statistics = None
    if "target_batchnorm" in state:
        statistics = TargetStatistics(model)
        try:
            statistics.load_state_dict(state["target_batchnorm"])
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"its target BatchNorm statistics do not fit the model ({error})") from None
    evaluation_strategies = tuple(name for name, strategy in strategies if _changes_model_before_evaluation(strategy))
    return TrainedModel(experiment, model, specs, info["classes"], target, header,
                        statistics, evaluation_strategies)


def _changes_model_before_evaluation(strategy: Strategy) -> bool:
    return type(strategy).before_evaluate is not Strategy.before_evaluate
