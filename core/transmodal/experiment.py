"""Assembly: from a validated config to data loaders, a model and strategies."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from torch import nn

from transmodal.config import ComponentSpec, Experiment, ResolvedComponent, validate_components
from transmodal.data import UNK_ID, BatchLoader, DatasetBundle, ModalitySpec, Split, presence_key, split_columns
from transmodal.devices import resolve_device
from transmodal.encoder import Encoder, ImageInput
from transmodal.errors import CheckpointError, ConfigError, DataError
from transmodal.model import LateFusionHeads, TransmodalModel
from transmodal.model_size import build_if_it_fits
from transmodal.plugins import Plugins, get_plugins
from transmodal.strategy import Strategy
from transmodal.tabular import SCHEMA_KEY, TabularColumn, TabularSchema
from transmodal.validator import Validator


@dataclass
class PreparedData:
    bundle: DatasetBundle
    modalities: dict[str, ModalitySpec]  # the modalities the model uses
    train: BatchLoader
    unlabelled: BatchLoader | None
    evaluation: dict[str, BatchLoader]
    tokenizers: dict[str, Any]  # text modality -> fitted tokenizer


@dataclass
class Assembled:
    experiment: Experiment
    components: dict[str, ResolvedComponent]
    data: PreparedData
    model: TransmodalModel
    strategies: list[Strategy]
    validator: Validator


def assemble(
    experiment: Experiment, plugins: Plugins | None = None, tokenizer_states: dict[str, str] | None = None
) -> Assembled:
    """Build everything a run needs. ``tokenizer_states`` restores saved tokenizers instead of fitting."""
    plugins = plugins or get_plugins()
    components = validate_components(experiment, plugins)
    data = prepare_data(experiment, components, tokenizer_states or {})
    model = build_model(experiment, components, data.modalities, len(data.bundle.classes))
    strategies = build_strategies(experiment, components, data, model)
    validator = _build(components["validator"])
    if validator.name == Validator.name:  # a plugin's that set none: its registered name, as for a strategy
        validator.name = experiment.validator.name
    if validator.needs_unlabelled_target and data.unlabelled is None:
        raise ConfigError(f"validator: '{experiment.validator.name}' scores unlabelled target data, but dataset "
                          f"'{experiment.data.dataset.name}' provides none; use source-val")
    validator.check(list(data.bundle.evaluation))
    return Assembled(experiment, components, data, model, strategies, validator)


def _build(resolved: ResolvedComponent, *context: Any, **keywords: Any) -> Any:
    return resolved.component.create(resolved.params, *context, **keywords)


def _tokenizer_texts(bundle: DatasetBundle, modality: str, fit_on: str) -> list[str]:
    texts = list(bundle.train.data[modality])
    if fit_on == "train+unlabelled" and bundle.unlabelled is not None and modality in bundle.unlabelled.data:
        texts += list(bundle.unlabelled.data[modality])
    return texts


def tokenizer_for(resolved: ResolvedComponent, texts: list[str], modality: str, state: str | None) -> Any:
    """Fitted on ``texts``, or restored from ``state`` (from a checkpoint, which may be damaged)."""
    if state is None:
        return _build(resolved, texts)
    try:  # the factory itself: what it raises here is the saved state's fault, not a bug of its provider
        return resolved.component.load_factory()(resolved.params, texts, state=state)
    except Exception as error:  # whatever the tokenizer's own parser raises on a damaged state
        raise CheckpointError(f"its '{modality}' tokenizer cannot be restored ({type(error).__name__}: "
                              f"{str(error)[:200]})") from None


def _tabular(split: Split, modality: str) -> TabularColumn:
    column = split.data[modality]
    if not isinstance(column, TabularColumn):
        raise DataError(f"the dataset's tabular modality '{modality}' must be a transmodal.TabularColumn, "
                        f"got {type(column).__name__}")
    return column


def prepare_data(
    experiment: Experiment, components: dict[str, ResolvedComponent], tokenizer_states: dict[str, str]
) -> PreparedData:
    bundle: DatasetBundle = _build(components["data.dataset"], experiment.trainer.seed)
    used = list(experiment.model.encoders)
    unknown = [m for m in used if m not in bundle.modalities]
    if unknown:
        raise ConfigError(
            f"model.encoders: dataset '{experiment.data.dataset.name}' has no modality {unknown}; "
            f"it has {sorted(bundle.modalities)}."
        )

    splits: list[Split] = [bundle.train, *bundle.evaluation.values()]
    if bundle.unlabelled is not None:
        splits.append(bundle.unlabelled)
    tokenizers: dict[str, Any] = {}
    specs: dict[str, ModalitySpec] = {}
    for modality in used:
        kind = bundle.modalities[modality]
        if kind == "text":
            texts = _tokenizer_texts(bundle, modality, experiment.data.tokenizer_fit)
            tokenizer = tokenizer_for(components["data.tokenizer"], texts, modality, tokenizer_states.get(modality))
            for split in splits:
                split.data[modality] = tokenizer.encode_batch(list(split.data[modality]))
            fitted = modality not in tokenizer_states
            if fitted and not bool((bundle.train.data[modality] > UNK_ID).any()):
                raise ConfigError(
                    f"data.tokenizer: the training texts of '{modality}' come out as padding and unknown words alone "
                    f"(a vocabulary of {tokenizer.vocab_size} tokens): the text would carry nothing. Lower "
                    f"data.tokenizer.min_freq, or check the texts")
            tokenizers[modality] = tokenizer
            specs[modality] = ModalitySpec(modality, kind, vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)
        elif kind == "tabular":
            schema = TabularSchema.fit(_tabular(bundle.train, modality))  # the training split's statistics only
            for split in splits:
                split.data[modality] = schema.encode(_tabular(split, modality))
            specs[modality] = ModalitySpec(modality, kind, shape=(schema.width,),
                                           extras={SCHEMA_KEY: schema.to_dict()})
        else:
            specs[modality] = ModalitySpec(modality, kind, shape=tuple(bundle.train.data[modality].shape[1:]))

    text_keys = tuple(m for m in used if bundle.modalities[m] == "text")
    trainer = experiment.trainer
    seed = trainer.seed

    def loader(split: Split, keys: list[str], batch_size: int, train: bool, offset: int) -> BatchLoader:
        keys = keys + [presence_key(m) for m in used if presence_key(m) in split.data]
        return BatchLoader(
            split_columns(split, keys), batch_size, shuffle=train, drop_last=train, seed=seed + offset,
            text_keys=text_keys, bucket=experiment.data.bucket_by_length and train,
        )

    if len(bundle.train) == 0:
        raise DataError("the training split is empty")
    domain = ["domain"] if "domain" in bundle.train.data else []
    train_loader = loader(bundle.train, used + ["label"] + domain, trainer.batch_size, True, 0)
    unlabelled = None
    if bundle.unlabelled is not None and len(bundle.unlabelled) > 0:
        target_batch = trainer.target_batch_size or trainer.batch_size
        unlabelled = loader(bundle.unlabelled, used, min(target_batch, len(bundle.unlabelled)), True, 1)
    evaluation = {
        name: loader(split, used + ["label"], trainer.eval_batch_size, False, 0)
        for name, split in bundle.evaluation.items()
    }
    return PreparedData(bundle, specs, train_loader, unlabelled, evaluation, tokenizers)


def build_model(
    experiment: Experiment, components: dict[str, ResolvedComponent], modalities: dict[str, ModalitySpec],
    num_classes: int,
) -> TransmodalModel:
    """The model, refused before allocation if training it cannot fit in the training device's memory. It needs
    only the modalities' specs and the number of classes, so a saved run rebuilds it without its dataset."""
    def parts(model: nn.Module) -> dict[str, nn.Module]:
        assert isinstance(model, TransmodalModel)
        return {**{f"model.encoders.{m}": e for m, e in model.encoders.items()},
                "model.fusion": model.fusion, "model.head": model.head}

    model = build_if_it_fits(lambda: _assemble_model(experiment, components, modalities, num_classes), parts,
                             resolve_device(experiment.trainer.device), experiment.optimizer.name)
    assert isinstance(model, TransmodalModel)
    return model


def _assemble_model(
    experiment: Experiment, components: dict[str, ResolvedComponent], modalities: dict[str, ModalitySpec],
    num_classes: int,
) -> TransmodalModel:
    encoders: dict[str, Encoder] = {}
    inputs = {}
    for modality, spec in modalities.items():
        encoder = _build(components[f"model.encoders.{modality}"], spec)
        encoders[modality] = encoder
        if spec.kind == "image":
            augment = experiment.data.augment
            inputs[modality] = ImageInput(
                mean=getattr(encoder, "input_mean", (0.5,) * spec.shape[0]),
                std=getattr(encoder, "input_std", (0.5,) * spec.shape[0]),
                crop_padding=augment.crop_padding,
                hflip=augment.hflip,
                invert=augment.invert,
                per_image=experiment.data.image_normalization == "per-image",
                size=getattr(encoder, "input_size", None),
            )
    fusion = _build(components["model.fusion"], {m: e.out_dim for m, e in encoders.items()})
    if experiment.model.late_fusion:
        head = LateFusionHeads(
            {m: _build(components["model.head"], e.out_dim, num_classes) for m, e in encoders.items()}
        )
    else:
        head = _build(components["model.head"], fusion.output_dim, num_classes)
    return TransmodalModel(inputs, encoders, fusion, head, num_classes, experiment.model.modality_dropout)


def build_strategies(
    experiment: Experiment, components: dict[str, ResolvedComponent], data: PreparedData, model: TransmodalModel
) -> list[Strategy]:
    strategies: list[Strategy] = []
    for index, spec in enumerate(experiment.adaptation):
        strategy = _build(components[f"adaptation.{index}"])
        if strategy.needs_unlabelled_target and data.unlabelled is None:
            raise ConfigError(
                f"adaptation.{index}: strategy '{spec.name}' trains on unlabelled target data, but dataset "
                f"'{experiment.data.dataset.name}' provides no target domain. Remove the strategy or use a "
                f"dataset with a target split."
            )
        if strategy.needs_init_from and experiment.model.init_from is None:
            raise ConfigError(
                f"adaptation.{index}: strategy '{spec.name}' refines a trained model, and without model.init_from "
                f"it would start from random weights; set model.init_from to the run it refines (see "
                f"examples/glyphs_dirt_t.yaml)"
            )
        strategies.append(strategy)
    name_uniquely(experiment.adaptation, strategies)
    adversarial = [spec.name for spec, s in zip(experiment.adaptation, strategies) if s.adversarial]
    if len(adversarial) > 1:
        raise ConfigError(
            f"adaptation: {' and '.join(adversarial)} are both adversarial; two domain discriminators pulling on "
            f"the same features cannot be combined. Keep one."
        )
    freezers = list(dict.fromkeys(spec.name for spec, s in zip(experiment.adaptation, strategies)
                                  if s.decides_trainable))
    if len(freezers) > 1:
        raise ConfigError(f"adaptation: {' and '.join(freezers)} both decide which parameters train and would "
                          f"overrule each other; keep one of them.")
    for strategy in strategies:
        strategy.check(model, strategies)
    return strategies


def name_uniquely(specs: list[ComponentSpec], strategies: list[Strategy]) -> None:
    """A strategy's name keys its loss terms, metrics, parameter group and checkpoint entry, so each must have its
    own: one that kept the base class's placeholder takes the name it is registered under, and a name listed again
    gets its count ("mmd", then "mmd-2"), instead of the second silently replacing the first's loss."""
    counts: Counter[str] = Counter()
    for spec, strategy in zip(specs, strategies):
        if strategy.name == Strategy.name:
            strategy.name = spec.name
        counts[strategy.name] += 1
        if counts[strategy.name] > 1:
            strategy.name = f"{strategy.name}-{counts[strategy.name]}"
