"""Any timm image model as a transmodal backbone.

The model is created with ``pretrained=False`` and without its classifier (``num_classes=0``), so timm never
reaches for the network; weights come only from a local file, passed through the model's own checkpoint filter
(timm's conversion of original checkpoints, e.g. a ViT's position embeddings resampled to another image size) and
checked key by key. Pooled features are timm's ``forward_head(pre_logits=True)``, tokens its
``forward_features``; layer groups follow the model's own ``group_matcher`` (what timm's layer-wise learning-rate
decay uses); the input normalisation is the model's pretrained config.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv, group_parameters, load_state_dict
from torch import nn
from transmodal.data import ModalitySpec
from transmodal.encoder import Encoder
from transmodal.errors import CheckpointError, ConfigError

from transmodal_timm.params import TimmParams

_SHOWN = 5  # keys named per kind of mismatch in an error message


def _create(params: TimmParams, channels: int) -> nn.Module:
    if not timm.is_model(params.model):
        close = difflib.get_close_matches(params.model, timm.list_models(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"backbone timm: '{params.model}' is not a timm model.{hint} List them with: python -c "
                          f"\"import timm; print(timm.list_models('*{params.model[:4]}*'))\"")
    try:
        return timm.create_model(params.model, pretrained=False, num_classes=0, in_chans=channels,
                                 **params.model_kwargs)
    except TypeError as error:  # an argument the model's constructor does not take
        raise ConfigError(f"backbone timm: {params.model} does not take model_kwargs {params.model_kwargs} "
                          f"({error})") from None


def _load_file(net: nn.Module, path: Path, channels: int) -> None:
    """The weights of ``path`` into ``net``: timm's reader (safetensors, or torch.load with weights_only), the
    model's checkpoint filter, the classifier's keys dropped, the first convolution adapted to ``channels`` as timm
    does; every other key must fit."""
    if not path.is_file():
        raise ConfigError(f"backbone timm: weights file {path} does not exist; give the path of a local weights file "
                          f"of the model, or pretrained: null for random weights")
    try:
        state = load_state_dict(str(path))
    except Exception as error:  # torch.load and safetensors raise their own errors on a damaged or foreign file
        raise CheckpointError(f"Cannot read weights file {path}: {type(error).__name__}: {error}") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (parameter names to tensors); save one with "
                              f"torch.save(model.state_dict(), path)")
    config = net.pretrained_cfg
    checkpoint_filter = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
    if checkpoint_filter is not None:
        try:
            state = checkpoint_filter(state, net)
        except Exception as error:  # a file of another model breaks the filter before the keys are compared
            raise CheckpointError(f"weights file {path} does not fit timm model {config.get('architecture')} "
                                  f"({type(error).__name__}: {error})") from None
    classifiers = config.get("classifier") or ()
    for name in (classifiers,) if isinstance(classifiers, str) else classifiers:
        state = {key: value for key, value in state.items() if not key.startswith(name + ".")}
    first_conv = config.get("first_conv")
    weight = state.get(f"{first_conv}.weight") if isinstance(first_conv, str) else None
    if weight is not None and weight.dim() == 4 and weight.shape[1] != channels:
        state[f"{first_conv}.weight"] = adapt_input_conv(channels, weight, base_chans=weight.shape[1])
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(f"{key} (file {tuple(state[key].shape)}, model {tuple(expected[key].shape)})"
                      for key in set(state) & set(expected) if state[key].shape != expected[key].shape)
    problems = [f"{label}: {', '.join(keys[:_SHOWN])}{' ...' if len(keys) > _SHOWN else ''} ({len(keys)} in all)"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("different shape", reshaped))
                if keys]
    if problems:
        raise CheckpointError(f"weights file {path} does not fit timm model {config.get('architecture')}: "
                              f"{'; '.join(problems)}. Save it from the same model name and model_kwargs "
                              f"(torch.save(model.state_dict(), path)).")
    net.load_state_dict(state)


def _fixed_size(net: nn.Module) -> int | None:
    """The side a model insists on (a ViT's patch embedding with a strict image size), or None."""
    embed = getattr(net, "patch_embed", None)
    if not getattr(embed, "strict_img_size", False) or getattr(net, "dynamic_img_size", False):
        return None
    height, width = embed.img_size
    return height if height == width else None


def _drop_unused(net: nn.Module, sample: tuple[int, ...]) -> None:
    """For tokens, which stop at forward_features: remove the layers that only the pooling head uses (a
    ConvNeXt's head norm, ...), found as the parameters that one backward pass of forward_features leaves without
    a gradient, so that every parameter left trains (DistributedDataParallel requires it)."""
    training = net.training
    net.eval()  # BatchNorm takes a batch of one
    net.forward_features(torch.zeros(1, *sample)).float().sum().backward()
    unused = {name for name, parameter in net.named_parameters() if parameter.grad is None}
    net.zero_grad(set_to_none=True)
    net.train(training)
    removed: list[str] = []
    for path, module in list(net.named_modules()):
        if not path or any(path.startswith(prefix + ".") for prefix in removed):
            continue
        inside = [f"{path}.{name}" for name, _ in module.named_parameters()]
        if inside and unused.issuperset(inside):
            net.set_submodule(path, nn.Identity())
            removed.append(path)


def _normalisation(net: nn.Module, params: TimmParams, channels: int) -> tuple[tuple[float, ...], ...]:
    """Mean and std from the parameters, else from the model's pretrained config; a config made for another
    number of channels is averaged over them."""
    result = []
    for given, key, default in ((params.mean, "mean", 0.5), (params.std, "std", 0.5)):
        values = tuple(given or net.pretrained_cfg.get(key) or (default,) * channels)
        if len(values) != channels:
            if given is not None:
                raise ConfigError(f"backbone timm: {key} has {len(values)} values for {channels}-channel images")
            values = (sum(values) / len(values),) * channels
        result.append(values)
    return tuple(result)


class TimmBackbone(Encoder):
    """A timm model without its classifier: pooled pre-logits features, or ``forward_features`` as tokens."""

    def __init__(self, net: nn.Module, tokens: bool, mean: tuple[float, ...], std: tuple[float, ...],
                 size: int | None) -> None:
        super().__init__()
        self.net = net
        self.returns_tokens = tokens
        self.out_dim = net.num_features if tokens else getattr(net, "head_hidden_size", None) or net.num_features
        self.channels_last_map = getattr(net, "output_fmt", "NCHW") == "NHWC"
        self.input_mean, self.input_std, self.input_size = mean, std, size

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        """timm's fine-grained groups (stem, then each block; a final norm joins the last block), each as a module
        holding the largest submodules whose parameters all belong to it, plus its loose parameters (a ViT's class
        token), so that freezing a group also puts its BatchNorm layers in eval mode."""
        names = group_parameters(self.net, self.net.group_matcher(coarse=False))
        parameters = dict(self.net.named_parameters())
        groups = []
        for ordinal, group in sorted(names.items()):
            members = set(group)
            holder = nn.Module()
            taken: list[str] = []
            for path, module in self.net.named_modules():
                if not path or any(path.startswith(prefix + ".") for prefix in taken):
                    continue
                inside = [f"{path}.{name}" for name, _ in module.named_parameters()]
                if inside and members.issuperset(inside):
                    holder.add_module(path.replace(".", "_"), module)
                    taken.append(path)
            for name in group:
                if not any(name.startswith(prefix + ".") for prefix in taken):
                    holder.register_parameter(name.replace(".", "_"), parameters[name])
            groups.append((_group_name(group, ordinal), holder))
        return groups

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.net.forward_features(images)
        if not self.returns_tokens:
            return self.net.forward_head(features, pre_logits=True)
        if features.dim() == 4:
            return features.flatten(1, 2) if self.channels_last_map else features.flatten(2).transpose(1, 2)
        return features


def _group_name(parameters: list[str], ordinal: int) -> str:
    """``stem`` for timm's first group; else the module path that the group's parameters share (``blocks.3``,
    ``stages.1.blocks.0``), with the other top-level modules that timm joins to it after a ``+`` (a ViT's last
    group is ``blocks.11+norm``)."""
    if ordinal == 0:
        return "stem"
    tops = list(dict.fromkeys(name.split(".")[0] for name in parameters))
    paths = [name.split(".")[:-1] for name in parameters if name.split(".")[0] == tops[0]]
    common: list[str] = []
    for parts in zip(*paths):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return "+".join([".".join(common) or tops[0], *tops[1:]])


def build_timm(params: TimmParams, modality: ModalitySpec) -> TimmBackbone:
    if modality.kind != "image":
        raise ConfigError(f"model.encoders.{modality.name}: backbone 'timm' takes images, but modality "
                          f"'{modality.name}' is {modality.kind}. Choose an encoder for {modality.kind} "
                          f"(transmodal components encoder).")
    channels = modality.shape[0] if modality.shape else 3
    net = _create(params, channels)
    # A saved run's weights follow (from_checkpoint); on the meta device the size is measured, nothing is read.
    if params.pretrained is not None and not modality.from_checkpoint and torch.get_default_device().type != "meta":
        _load_file(net, params.pretrained.expanduser(), channels)
    size = params.input_size
    fixed = _fixed_size(net)
    if fixed is not None and size not in (None, fixed):
        raise ConfigError(f"backbone timm: {params.model} takes {fixed}x{fixed} images, not input_size {size}; "
                          f"leave input_size out, or create it at your size with model_kwargs: {{img_size: {size}}}")
    size = size or fixed
    if params.tokens:
        _drop_unused(net, (channels, size, size) if size else tuple(modality.shape or (channels, 224, 224)))
    mean, std = _normalisation(net, params, channels)
    return TimmBackbone(net, params.tokens, mean, std, size)
