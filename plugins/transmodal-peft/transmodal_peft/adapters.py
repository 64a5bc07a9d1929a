"""Adapter strategies through ``peft``, and what to do with the adapters after training.

``peft`` injects its adapter layers into any ``nn.Module`` (``inject_adapter_in_model``), so a
TransmodalModel stays itself: its forward, layer groups and checkpoints work as before, with the adapted
layers' base weights under ``<layer>.base_layer`` and the adapters beside them. The strategy freezes every
weight except the adapters and the ``train`` groups (fusion and head by default: they are new layers).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
from pathlib import Path
from typing import Any

import peft
import torch
import yaml
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transmodal.builtin.adaptation.groups import match_groups
from transmodal.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from transmodal.errors import CheckpointError, ConfigError
from transmodal.experiment import assemble
from transmodal.model import TransmodalModel
from transmodal.plugins import Plugins
from transmodal.run_dir import load_run_experiment
from transmodal.strategy import Strategy, TrainingContext
from transmodal.trained_model import MODEL_INFO
from transmodal.trainer import Trainer, load_model_weights

from transmodal_peft.params import AdapterParams, IA3Params, LoRAParams

ADAPTER_FORMAT = 1
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SUPPORTED_LAYERS: dict[str, tuple[type[nn.Module], ...]] = {
    "lora": (nn.Linear, *_CONV, nn.Embedding),
    "dora": (nn.Linear, *_CONV, nn.Embedding),
    "ia3": (nn.Linear, nn.Conv2d, nn.Conv3d),
}


def _matches(name: str, patterns: list[str]) -> bool:
    """The module or one of its ancestors matches a pattern ('encoders.image' covers everything below it)."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes for pattern in patterns)


def _exact(names: list[str]) -> str:
    """A regular expression that peft fully matches against module names: exactly these names (a list would
    also match any module whose name merely ends with one of them)."""
    return "|".join(re.escape(name) for name in names)


class AdapterStrategy(Strategy):
    decides_trainable = True
    method = "lora"

    def __init__(self, params: AdapterParams) -> None:
        self.params = params
        self.targets: list[str] = []
        self.adapter_keys: list[str] = []
        self.train_prefixes: list[str] = []
        self.frozen_norms: list[nn.Module] = []

    # -- which layers -----------------------------------------------------------------------------------------

    def resolve_targets(self, model: TransmodalModel) -> list[str]:
        """Names of the layers that get adapters; a config error when the patterns select none."""
        supported = SUPPORTED_LAYERS[self.method]
        modules = dict(model.named_modules())
        selected = [n for n in modules if n and _matches(n, self.params.target_modules)
                    and not _matches(n, self.params.exclude_modules)]
        if not selected:
            top = sorted({n.rsplit(".", 1)[0] for n in modules if n.count(".") <= 2 and n})
            raise ConfigError(f"{self.name}.target_modules: {self.params.target_modules} match no module; module "
                              f"names look like {', '.join(top[:12])}")
        targets = [n for n in selected if isinstance(modules[n], supported) and not self._inside_attention(n, modules)]
        if not targets:
            kinds = ", ".join(t.__name__ for t in supported)
            raise ConfigError(f"{self.name}.target_modules: {self.params.target_modules} select no layer {self.name} can "
                              f"adapt ({kinds}); choose layers of those types (EmbeddingBag, for one, is not)")
        return targets

    @staticmethod
    def _inside_attention(name: str, modules: dict[str, nn.Module]) -> bool:
        # nn.MultiheadAttention reads out_proj.weight directly instead of calling out_proj, and a Transformer layer's
        # fast path (in evaluation, without gradients) reads linear1 and linear2's weights: an adapter there would
        # not run when the model is evaluated.
        parent, _, leaf = name.rpartition(".")
        return isinstance(modules.get(parent), nn.MultiheadAttention) or (
            isinstance(modules.get(parent), nn.TransformerEncoderLayer | nn.TransformerDecoderLayer)
            and leaf in ("linear1", "linear2"))

    def _train_groups(self, model: TransmodalModel) -> list[tuple[str, nn.Module]]:
        return match_groups(model, self.params.train, f"{self.name}.train") if self.params.train else []

    def check(self, model: TransmodalModel, strategies: list[Strategy]) -> None:
        targets = self.resolve_targets(model)
        prefixes = self._module_names(model, self._train_groups(model))
        overlap = [t for t in targets if any(t == p or t.startswith(p + ".") for p in prefixes)]
        if overlap:
            raise ConfigError(f"{self.name}: {', '.join(overlap[:5])} would get an adapter but lie in a group that "
                              f"trains fully ({', '.join(self.params.train)}); narrow target_modules or train")

    @staticmethod
    def _module_names(model: nn.Module, groups: list[tuple[str, nn.Module]]) -> list[str]:
        names = {id(module): name for name, module in model.named_modules()}
        return [names[id(module)] for _, module in groups]

    # -- training ---------------------------------------------------------------------------------------------

    def peft_config(self, targets: list[str]) -> peft.PeftConfig:
        raise NotImplementedError

    def reshape_model(self, model: TransmodalModel) -> None:
        """Inject the adapters; a trained model's checkpoint holds their weights and the base layers' under
        ``<layer>.base_layer``, so a saved run is rebuilt with them before its weights are loaded."""
        self.targets = self.resolve_targets(model)
        before = {id(p) for p in model.parameters()}
        peft.inject_adapter_in_model(self.peft_config(self.targets), model)
        self.adapter_keys = [name for name, p in model.named_parameters() if id(p) not in before]

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        self.reshape_model(model)
        adapters = set(self.adapter_keys)
        train_groups = self._train_groups(model)
        self.train_prefixes = self._module_names(model, train_groups)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in adapters)
        for _, module in train_groups:
            for parameter in module.parameters():
                parameter.requires_grad_(True)
        trained = {id(m) for _, group in train_groups for m in group.modules()}
        self.frozen_norms = [m for m in model.modules()
                             if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in trained]

    def on_epoch_start(self, epoch: int) -> None:
        if self.params.freeze_batchnorm:  # the trainer has just put the whole model in training mode
            for module in self.frozen_norms:
                module.eval()

    def adapter_state(self, model: TransmodalModel) -> dict[str, torch.Tensor]:
        """What training changed: the adapters, the fully trained groups (parameters and buffers) and, unless
        ``freeze_batchnorm``, every buffer (BatchNorm statistics move in training)."""
        keys = set(self.adapter_keys)
        if not self.params.freeze_batchnorm:
            keys.update(name for name, _ in model.named_buffers())
        return {key: value for key, value in model.state_dict().items()
                if key in keys or any(key.startswith(prefix + ".") for prefix in self.train_prefixes)}


class LoRA(AdapterStrategy):
    """LoRA (Hu et al., 2022): each adapted layer computes W x + (alpha / r) B A x with A, B of rank r; B starts
    at zero, so training starts from the pretrained model exactly."""

    name = method = "lora"

    def peft_config(self, targets: list[str]) -> peft.PeftConfig:
        assert isinstance(self.params, LoRAParams)
        return peft.LoraConfig(r=self.params.r, lora_alpha=self.params.alpha, lora_dropout=self.params.dropout,
                               target_modules=_exact(targets), use_dora=self.method == "dora")


class DoRA(LoRA):
    """DoRA (Liu et al., 2024): the weight split into magnitude and direction; LoRA updates the direction and
    the magnitude trains on its own."""

    name = method = "dora"


class IA3(AdapterStrategy):
    """IA3 (Liu et al., 2022): each adapted layer's output (or, for ``feedforward_modules``, its input) is
    rescaled by a learned vector that starts at one."""

    name = method = "ia3"

    def peft_config(self, targets: list[str]) -> peft.PeftConfig:
        assert isinstance(self.params, IA3Params)
        feedforward = [t for t in targets if _matches(t, self.params.feedforward_modules)]
        if self.params.feedforward_modules and not feedforward:
            raise ConfigError(f"ia3.feedforward_modules: {self.params.feedforward_modules} match none of the adapted "
                              f"layers ({', '.join(targets[:8])})")
        return peft.IA3Config(target_modules=_exact(targets),
                              feedforward_modules=_exact(feedforward) if feedforward else [])


def build_lora(params: LoRAParams) -> LoRA:
    return LoRA(params)


def build_dora(params: LoRAParams) -> DoRA:
    return DoRA(params)


def build_ia3(params: IA3Params) -> IA3:
    return IA3(params)


# -- after training -----------------------------------------------------------------------------------------------


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and put the plain layer back, in place: the model computes the
    same function with the structure (and state-dict keys) it had before the adapters were injected."""
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def _adapter_strategy(trainer: Trainer, run_dir: Path) -> AdapterStrategy:
    found = [s for s in trainer.strategies if isinstance(s, AdapterStrategy)]
    if not found:
        raise CheckpointError(f"{run_dir} was not trained with an adapter strategy (lora, dora, ia3)")
    return found[0]


def _load_run(run_dir: Path, checkpoint: str, plugins: Plugins | None) -> tuple[Any, dict[str, Any], Trainer]:
    """The run's experiment, the checkpoint, and a trainer whose model (adapters injected) holds its weights."""
    experiment = load_run_experiment(run_dir)
    state = read_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt")
    assembled = assemble(experiment, plugins, tokenizer_states=state["tokenizers"])
    trainer = Trainer(assembled, quiet=True)
    load_model_weights(trainer.model, state["model"])
    return experiment, state, trainer


def export_adapters(run_dir: str | Path, path: str | Path, checkpoint: str = "best",
                    plugins: Plugins | None = None) -> Path:
    """Save a run's adapters on their own (with the groups that trained fully): a small file that, loaded with
    :func:`load_adapters` into a model built from the same config, restores the trained model."""
    run_dir, path = Path(run_dir), Path(path)
    if path.exists() or path.is_symlink():  # a run's best.pt, another run's adapters: never replaced
        raise ConfigError(f"{path} exists; name a new file for the adapters")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: the folder {path.parent} does not exist")
    _, state, trainer = _load_run(run_dir, checkpoint, plugins)
    strategy = _adapter_strategy(trainer, run_dir)
    save_checkpoint({
        "format": ADAPTER_FORMAT,
        "method": strategy.name,
        "params": strategy.params.model_dump(mode="json"),
        "targets": strategy.targets,
        "weights": strategy.adapter_state(trainer.model),
        "selected_by": state.get("selected_by"),
    }, path)
    return path


def load_adapters(model: TransmodalModel, path: str | Path) -> dict[str, Any]:
    """Load adapters saved by :func:`export_adapters` into a model built with the same adapter strategy
    (e.g. ``Trainer(assemble(experiment)).model``); returns the file's header."""
    saved = load_checkpoint(Path(path))
    if saved.get("format") != ADAPTER_FORMAT or "weights" not in saved:
        raise CheckpointError(f"{path} is not an adapter file written by transmodal-peft")
    own = model.state_dict()
    missing = [key for key in saved["weights"] if key not in own]
    if missing:
        raise CheckpointError(f"{path}: the model has no {', '.join(missing[:5])}; build it with the same "
                              f"{saved['method']} strategy ({saved['params']}) first")
    try:
        model.load_state_dict(saved["weights"], strict=False)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not fit this model: {error}") from None
    return {key: value for key, value in saved.items() if key != "weights"}


def merge_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best",
              plugins: Plugins | None = None) -> Path:
    """Write a new run directory holding the run's model with its adapters merged: plain layers, the original
    state-dict keys, no adapter strategy in its config, so ``transmodal evaluate`` (and anything that loads
    weights into the plain architecture) uses it as it would a fully fine-tuned run."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} already exists and is not an empty folder; choose another directory")
    if not out_dir.parent.is_dir() or not os.access(out_dir.parent, os.W_OK):
        raise ConfigError(f"{out_dir}: cannot create it in {out_dir.parent} (not a folder you can write)")
    experiment, state, trainer = _load_run(run_dir, checkpoint, plugins)
    _adapter_strategy(trainer, run_dir)
    merge_adapters(trainer.model)

    config = experiment.model_dump(mode="json")
    config["adaptation"] = [spec for spec in config["adaptation"] if spec["name"] not in SUPPORTED_LAYERS]
    config["output"] = {"dir": str(out_dir.parent), "name": out_dir.name}
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if (run_dir / "tokenizers").is_dir():
        shutil.copytree(run_dir / "tokenizers", out_dir / "tokenizers")
    for name in (MODEL_INFO, "summary.json", "metrics.jsonl"):  # what predict, export and report read
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out_dir / name)
    merged = {**{k: v for k, v in state.items() if k != "model"}, "model": trainer.model.state_dict(),
              "merged_from": str(run_dir / "checkpoints" / f"{checkpoint}.pt")}
    save_checkpoint(merged, out_dir / "checkpoints" / "best.pt")
    return out_dir
