"""Image backbones from torchvision: the ResNet family with named layer groups, and any classification
architecture by name with its classifier removed.

Weights come from torchvision's own builders (its download, cache and checksum code), or from a local
state-dict file. The input normalisation comes from the weights' metadata and reaches the model's
``ImageInput`` through ``input_mean`` / ``input_std``; ``input_size`` makes it resize on the device.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet
from transmodal.data import ModalitySpec
from transmodal.encoder import Encoder
from transmodal.errors import CheckpointError, ConfigError, DataError

from transmodal_vision.params import (
    RESNET_FAMILY_PREFIXES,
    ResNetParams,
    TorchvisionParams,
    _BackboneParams,
    is_weights_file,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SHOWN = 5  # keys listed per kind of mismatch in an error message


# -- weights --------------------------------------------------------------------------------------------------


def _named_model(arch: str, name: str, load: bool) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """The model with torchvision weights ``name``, through torchvision's builder (which downloads into, or
    reads from, the torch hub cache) and the normalisation the weights were trained with. Without ``load`` (a
    saved run's weights follow), only the normalisation is read from the weights' metadata: nothing downloads."""
    weights = torchvision.models.get_model_weights(arch)[name]
    preset = weights.transforms()
    normalisation = tuple(getattr(preset, "mean", IMAGENET_MEAN)), tuple(getattr(preset, "std", IMAGENET_STD))
    if not load:
        return torchvision.models.get_model(arch, weights=None), *normalisation
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        net = torchvision.models.get_model(arch, weights=weights)
    except OSError as error:  # URLError, connection and timeout errors
        raise DataError(
            f"Could not download the {arch} weights {name} from {weights.url} ({error}). On a machine without "
            f"network, download that file elsewhere and place it at {cached} (the torch hub cache; the TORCH_HOME "
            f"environment variable moves it), or set weights to the path of a local state-dict file."
        ) from None
    except Exception as error:
        raise CheckpointError(
            f"The cached {arch} weights {cached} cannot be loaded ({type(error).__name__}: {error}). Delete the "
            f"file so that it is downloaded again."
        ) from None
    return net, *normalisation


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch.save file (read with weights_only: no code runs)."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(
                f"weights file {path} is in safetensors format, which needs the safetensors package: "
                f"pip install safetensors (or pip install 'transmodal-vision[safetensors]')"
            ) from None
        try:
            return load_file(str(path))
        except Exception as error:
            raise CheckpointError(f"Cannot read {path} as safetensors: {type(error).__name__}: {error}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"Cannot read weights file {path}: {type(error).__name__}: {error}") from None
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(
            f"{path} does not hold a state dict (parameter names to tensors); save one with "
            f"torch.save(model.state_dict(), path)"
        )
    return loaded


def load_weights_file(
    net: nn.Module, path: Path, state: dict[str, torch.Tensor], description: str, skip: tuple[str, ...]
) -> None:
    """Load the state dict read from ``path`` into ``net``; keys under the ``skip`` prefixes (the
    classifier, which is removed anyway) may be absent, present or of another shape. The rest must fit."""
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith(skip)}
    # Files saved by torch < 0.4.1 (torchvision's own ImageNet weights among them) lack BatchNorm counters.
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    problems = [
        f"{label}: {', '.join(keys[:_SHOWN])}{' ...' if len(keys) > _SHOWN else ''} ({len(keys)} in all)"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("different shape", mismatched))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"weights file {path} does not fit {description}: " + "; ".join(problems)
            + ". Use a state dict of this architecture (torch.save(model.state_dict(), path)), or another backbone."
        )
    net.load_state_dict(state, strict=False)


def _base_model(
    arch: str, params: _BackboneParams, load: bool
) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """The torchvision model with named weights loaded if ``load`` (local files are loaded later, once the model
    has its final shape), and its normalisation (params override the weights' metadata)."""
    if params.weights is not None and not is_weights_file(params.weights):
        net, mean, std = _named_model(arch, params.weights, load)
    else:
        net, mean, std = torchvision.models.get_model(arch, weights=None), IMAGENET_MEAN, IMAGENET_STD
    return net, tuple(params.mean or mean), tuple(params.std or std)


def _require_rgb(modality: ModalitySpec, name: str) -> None:
    if modality.kind != "image":
        raise ConfigError(
            f"model.encoders.{modality.name}: backbone '{name}' takes images, but modality '{modality.name}' is "
            f"{modality.kind}. Choose an encoder for {modality.kind} (transmodal components encoder)."
        )
    if modality.shape and modality.shape[0] != 3:
        raise ConfigError(
            f"model.encoders.{modality.name}: backbone '{name}' takes 3-channel RGB images, but the dataset's "
            f"'{modality.name}' images have {modality.shape[0]} channels."
        )


class _Inputs(NamedTuple):
    """What the model's ImageInput reads from an encoder: normalisation and the side to resize to."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None


# -- ResNet ---------------------------------------------------------------------------------------------------


class ResNetBackbone(Encoder):
    """A torchvision ResNet without its classifier. Module names are torchvision's (conv1, bn1, layer1...),
    so a state dict of a torchvision ResNet loads into it."""

    def __init__(self, net: ResNet, tokens: bool, channels_last: bool, inputs: _Inputs) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_dim = net.fc.in_features
        self.returns_tokens = tokens
        self.channels_last = channels_last
        self.input_mean, self.input_std, self.input_size = inputs.mean, inputs.std, inputs.size
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        return [
            ("stem", nn.Sequential(self.conv1, self.bn1)),
            ("layer1", self.layer1), ("layer2", self.layer2), ("layer3", self.layer3), ("layer4", self.layer4),
        ]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.returns_tokens:
            return x.flatten(2).transpose(1, 2)
        return x.mean(dim=(2, 3))


def _use_cifar_stem(net: ResNet) -> None:
    """3x3 stride-1 convolution and no max-pool: 32x32 images keep their resolution into layer1."""
    net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.bn1.reset_parameters()  # pretrained statistics belonged to the replaced convolution
    net.maxpool = nn.Identity()


def _resnet_backbone(arch: str, params: ResNetParams | TorchvisionParams, load: bool) -> ResNetBackbone:
    net, mean, std = _base_model(arch, params, load)
    if params.cifar_stem:
        _use_cifar_stem(net)
    if load and params.weights is not None and is_weights_file(params.weights):
        path = Path(params.weights).expanduser()
        state = read_weights_file(path)
        skip: tuple[str, ...] = ("fc.",)
        conv1 = state.get("conv1.weight")
        if params.cifar_stem and conv1 is not None and conv1.shape[-1] == 7:
            skip += ("conv1.", "bn1.")  # an ImageNet-stem file: as with named weights, all but the stem
        load_weights_file(net, path, state, arch + (" with cifar_stem" if params.cifar_stem else ""), skip)
    return ResNetBackbone(net, params.tokens, params.channels_last, _Inputs(mean, std, params.input_size))


def build_resnet(arch: str, params: ResNetParams, modality: ModalitySpec) -> ResNetBackbone:
    _require_rgb(modality, arch)
    return _resnet_backbone(arch, params, not modality.from_checkpoint)


build_resnet18 = functools.partial(build_resnet, "resnet18")
build_resnet34 = functools.partial(build_resnet, "resnet34")
build_resnet50 = functools.partial(build_resnet, "resnet50")
build_resnet101 = functools.partial(build_resnet, "resnet101")
build_resnet152 = functools.partial(build_resnet, "resnet152")
build_resnext50_32x4d = functools.partial(build_resnet, "resnext50_32x4d")
build_wide_resnet50_2 = functools.partial(build_resnet, "wide_resnet50_2")


# -- any torchvision classifier -------------------------------------------------------------------------------


class TorchvisionBackbone(Encoder):
    """A torchvision classification model whose final linear layer is removed (pooled features), or cut at
    its last spatial feature map (tokens)."""

    def __init__(
        self, net: nn.Module, out_dim: int, tokens: bool, channels_last: bool, inputs: _Inputs,
        group_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.group_names = group_names
        self.out_dim = out_dim
        self.returns_tokens = tokens
        self.channels_last = channels_last
        self.input_mean, self.input_std, self.input_size = inputs.mean, inputs.std, inputs.size
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        return block_groups(self.net, self.group_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        output = self.net(x)
        if not self.returns_tokens:
            return output
        features = output["map"]
        return features.flatten(2).transpose(1, 2) if features.dim() == 4 else features


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear] | None:
    found = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


def _drop_auxiliary_heads(net: nn.Module) -> None:
    """GoogLeNet and Inception v3 return auxiliary logits in training mode; a backbone needs one output."""
    if getattr(net, "aux_logits", False):
        net.aux_logits = False
        for name in ("AuxLogits", "aux1", "aux2"):
            if hasattr(net, name):
                setattr(net, name, None)


def _feature_map_node(net: nn.Module, arch: str) -> str:
    """The graph node of the last feature map: the input of the final global pooling, or for vision
    transformers the encoder's output sequence."""
    from torchvision.models.feature_extraction import get_graph_node_names

    _, nodes = get_graph_node_names(net)
    if isinstance(net, torchvision.models.VisionTransformer):
        return "encoder.ln"
    modules = dict(net.named_modules())
    for index in range(len(nodes) - 1, 0, -1):
        node = nodes[index]
        if isinstance(modules.get(node), nn.AdaptiveAvgPool2d) or node.startswith(("adaptive_avg_pool2d", "mean")):
            return nodes[index - 1]
    raise ConfigError(f"backbone torchvision: tokens are not available for {arch} (no global pooling found); "
                      f"use tokens: false")


def build_torchvision(params: TorchvisionParams, modality: ModalitySpec) -> Encoder:
    _require_rgb(modality, f"torchvision ({params.arch})")
    load = not modality.from_checkpoint
    if params.arch.startswith(RESNET_FAMILY_PREFIXES):
        return _resnet_backbone(params.arch, params, load)
    net, mean, std = _base_model(params.arch, params, load)
    _drop_auxiliary_heads(net)
    last = _last_linear(net)
    if last is None:
        raise ConfigError(f"backbone torchvision: {params.arch} has no final linear classifier to remove; "
                          f"choose another architecture")
    classifier, linear = last
    if load and params.weights is not None and is_weights_file(params.weights):
        path = Path(params.weights).expanduser()
        load_weights_file(net, path, read_weights_file(path), params.arch, (classifier + ".",))
    size = params.input_size
    if isinstance(net, torchvision.models.VisionTransformer):  # needs its training resolution
        if size not in (None, net.image_size):
            raise ConfigError(f"backbone torchvision: {params.arch} takes {net.image_size}x{net.image_size} "
                              f"images; set input_size to {net.image_size} or leave it out")
        size = net.image_size
    inputs = _Inputs(mean, std, size)
    if not params.tokens:
        net.set_submodule(classifier, nn.Identity())
        return TorchvisionBackbone(net, linear.in_features, False, params.channels_last, inputs)

    from torchvision.models.feature_extraction import create_feature_extractor

    # The extracted graph module keeps the model's module paths but not its container types, so the groups
    # are found on the model itself.
    group_names = [name for name, _ in block_groups(net)]
    extractor = create_feature_extractor(net, return_nodes={_feature_map_node(net, params.arch): "map"})
    side = size or (modality.shape[-1] if modality.shape else 224)
    extractor.eval()
    with torch.no_grad():  # the width of the feature map, measured once
        sample = extractor(torch.zeros(1, 3, side, side))["map"]
    extractor.train()
    width = sample.shape[1] if sample.dim() == 4 else sample.shape[-1]
    return TorchvisionBackbone(extractor, width, True, params.channels_last, inputs, group_names)


# -- layer groups of arbitrary architectures ------------------------------------------------------------------


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _is_stack(module: nn.Module) -> bool:
    """A plain container of several trainable blocks."""
    return isinstance(module, nn.Sequential | nn.ModuleList) and sum(
        _has_parameters(child) for child in module.children()
    ) > 1


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _expand(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    if _is_stack(module):
        return [(f"{name}.{child_name}", child) for child_name, child in module.named_children()]
    total = _parameter_count(module)
    stacks = {id(c) for c in module.children() if _is_stack(c) and 2 * _parameter_count(c) > total}
    if not stacks:  # e.g. a transformer encoder whose layer stack holds most of its weights is split
        return [(name, module)]
    groups: list[tuple[str, nn.Module]] = []
    for child_name, child in module.named_children():
        if id(child) in stacks:
            groups.extend((f"{name}.{child_name}.{n}", c) for n, c in child.named_children())
        else:
            groups.append((f"{name}.{child_name}", child))
    return groups


def block_groups(net: nn.Module, names: list[str] | None = None) -> list[tuple[str, nn.Module]]:
    """Layer groups from input to output: the model's top-level blocks, with stacks of blocks (features.0,
    features.1, ...; a transformer's layers) split into their blocks; or the modules at ``names``, where
    they still exist. Parameters outside every block (a vision transformer's class token and position
    embedding) join the first group, so that freezing the groups freezes the whole model."""
    if names is None:
        groups = [group for name, child in net.named_children() for group in _expand(name, child)]
    else:
        modules = dict(net.named_modules())
        groups = [(name, modules[name]) for name in names if name in modules]
    groups = [(name, module) for name, module in groups if _has_parameters(module)]
    covered = {id(p) for _, module in groups for p in module.parameters()}
    loose = [(name, p) for name, p in net.named_parameters() if id(p) not in covered]
    if loose and groups:
        name, first = groups[0]
        holder = nn.Module()
        holder.add_module("block", first)
        for parameter_name, parameter in loose:
            holder.register_parameter(parameter_name.replace(".", "_"), parameter)
        groups[0] = (name, holder)
    return groups
