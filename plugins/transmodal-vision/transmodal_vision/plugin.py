"""The plugin's hooks. Imported at discovery: factories are lazy "module:attr" strings, so torchvision is
imported only when a component is built."""

from __future__ import annotations

from transmodal import hookimpl
from transmodal.hookspecs import Register

from transmodal_vision.params import (
    RESNET_ARCHS,
    RESNET_PARAMS,
    CifarParams,
    ImageFolderParams,
    TorchvisionParams,
)

_HERE = "transmodal_vision"

_RESNET_DESCRIPTIONS = {
    "resnet18": "ResNet-18 (He et al., 2016), 512-d features.",
    "resnet34": "ResNet-34, 512-d features.",
    "resnet50": "ResNet-50 (bottleneck blocks), 2048-d features.",
    "resnet101": "ResNet-101, 2048-d features.",
    "resnet152": "ResNet-152, 2048-d features.",
    "resnext50_32x4d": "ResNeXt-50 32x4d (Xie et al., 2017), 2048-d features.",
    "wide_resnet50_2": "Wide ResNet-50-2 (Zagoruyko and Komodakis, 2016), 2048-d features.",
}


@hookimpl
def register_backbones(register: Register) -> None:
    for arch in RESNET_ARCHS:
        register(arch, f"{_HERE}.backbones:build_{arch}", RESNET_PARAMS[arch],
                 _RESNET_DESCRIPTIONS[arch] + " torchvision weights or a local file; optional 32x32 stem.")
    register("torchvision", f"{_HERE}.backbones:build_torchvision", TorchvisionParams,
             "Any torchvision classification architecture by name (arch: ...), classifier removed.")


@hookimpl
def register_datasets(register: Register) -> None:
    register("cifar10", f"{_HERE}.cifar:build_cifar10", CifarParams,
             "CIFAR-10 in memory (downloaded on request); optional CIFAR-10-C corrupted target domain.")
    register("cifar100", f"{_HERE}.cifar:build_cifar100", CifarParams,
             "CIFAR-100 (fine labels) in memory; optional CIFAR-10-C-style corrupted target domain.")
    register("image-folder", f"{_HERE}.image_folder:build_image_folder", ImageFolderParams,
             "Images from one folder per class; a second folder can be the target domain.")
