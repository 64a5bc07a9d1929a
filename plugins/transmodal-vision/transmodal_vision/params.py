"""Parameter models of the vision components.

Imported at plugin discovery, so it imports pydantic only. Validators that need torchvision (is this a
weights name of this architecture?) import it when they run, which is when a config is validated: a
wrong name is reported before any data is downloaded or loaded.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator, model_validator

RESNET_ARCHS: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2",
)
# torchvision architectures built on torchvision.models.ResNet: they get the ResNet backbone (cifar_stem, groups).
RESNET_FAMILY_PREFIXES: tuple[str, ...] = ("resnet", "resnext", "wide_resnet")
WEIGHTS_FILE_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".safetensors")

CorruptionName = Literal[
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "gaussian_blur", "defocus_blur", "contrast", "brightness", "jpeg_compression",
]


def is_weights_file(weights: str) -> bool:
    """A weights value names a local file (rather than torchvision weights) if it looks like a path."""
    return weights.endswith(WEIGHTS_FILE_SUFFIXES) or "/" in weights or os.sep in weights


def classification_archs() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def weights_names(arch: str) -> list[str]:
    """Valid torchvision weights names of ``arch`` (DEFAULT first)."""
    import torchvision.models

    members = list(torchvision.models.get_model_weights(arch).__members__)
    return sorted(members, key=lambda name: (name != "DEFAULT", name))


def check_weights(arch: str, weights: str | None) -> str | None:
    """Normalise ``weights`` (strip a ``ResNet18_Weights.`` prefix) and check it exists for ``arch``."""
    if weights is None:
        return None
    if is_weights_file(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ValueError(
                f"weights file {path} does not exist. Give the path of a state-dict file "
                f"({', '.join(WEIGHTS_FILE_SUFFIXES)}), a torchvision weights name, or null for random weights"
            )
        return weights
    import torchvision.models

    enum = torchvision.models.get_model_weights(arch)
    name = weights.removeprefix(f"{enum.__name__}.")
    if name in enum.__members__:
        return name
    valid = weights_names(arch)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise ValueError(
        f"'{weights}' is not a torchvision weights name for {arch}.{hint} Valid names: {', '.join(valid)}; "
        f"or a path to a local state-dict file ({', '.join(WEIGHTS_FILE_SUFFIXES)}); or null for random weights"
    )


class _BackboneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(
        None,
        description="null (random init), a torchvision weights name (DEFAULT, IMAGENET1K_V1, ...), or the path "
        "of a local state-dict file (.pth, .pt, .safetensors) for machines without network.",
    )
    tokens: bool = Field(
        False,
        description="Return the last feature map as (B, H*W, D) tokens (for attention fusion), not pooled (B, D).",
    )
    input_size: int | None = Field(
        None, ge=8,
        description="Resize images on the device to this side before the backbone (e.g. 224 to feed 32x32 "
        "CIFAR images to ImageNet weights at their resolution); null keeps the data's size.",
    )
    channels_last: bool = Field(False, description="Run the backbone in channels-last memory format.")
    mean: list[float] | None = Field(
        None, min_length=3, max_length=3,
        description="Per-channel input mean; default: from the weights' metadata (ImageNet's without weights).",
    )
    std: list[PositiveFloat] | None = Field(
        None, min_length=3, max_length=3, description="Per-channel input std; default as for mean."
    )

    def architecture(self) -> str:
        raise NotImplementedError

    @model_validator(mode="after")
    def _known_weights(self) -> _BackboneParams:
        self.weights = check_weights(self.architecture(), self.weights)
        return self


class ResNetParams(_BackboneParams):
    """Parameters of one ResNet architecture (each registered name has its own subclass)."""

    arch: ClassVar[str] = "resnet18"

    cifar_stem: bool = Field(
        False,
        description="Replace the stem for 32x32 inputs: 3x3 convolution with stride 1 and no max-pool (with "
        "pretrained weights the new stem starts from random weights; the rest is pretrained).",
    )

    def architecture(self) -> str:
        return self.arch


RESNET_PARAMS: dict[str, type[ResNetParams]] = {
    arch: type(f"{arch.title().replace('_', '')}Params", (ResNetParams,), {"arch": arch, "__module__": __name__})
    for arch in RESNET_ARCHS
}


class TorchvisionParams(_BackboneParams):
    arch: str = Field(
        description="Any torchvision classification architecture: efficientnet_b0, convnext_tiny, vit_b_16, "
        "regnet_y_400mf, ... (its classifier is removed)."
    )
    cifar_stem: bool = Field(False, description="ResNet-family architectures only: the 32x32 stem (see resnet18).")

    def architecture(self) -> str:
        return self.arch

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        archs = classification_archs()
        if arch not in archs:
            close = difflib.get_close_matches(arch, archs, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(f"'{arch}' is not a torchvision classification architecture.{hint} "
                             f"All of them: {', '.join(archs)}")
        return arch

    @model_validator(mode="after")
    def _stem_needs_resnet(self) -> TorchvisionParams:
        if self.cifar_stem and not self.arch.startswith(RESNET_FAMILY_PREFIXES):
            raise ValueError(f"cifar_stem applies to ResNet-family architectures only, not {self.arch}")
        return self


# -- datasets -------------------------------------------------------------------------------------------------


class CorruptionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: CorruptionName = Field(description="A CIFAR-10-C corruption (Hendrycks and Dietterich, 2019).")
    severity: int = Field(3, ge=1, le=5, description="1 (mild) to 5 (strong), with the published parameters.")
    unlabelled_fraction: float = Field(
        0.5, gt=0.0, lt=1.0,
        description="Share of the corrupted test images given to training without labels; the rest is target/test.",
    )


class CifarParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: Path = Field(Path("data"), description="Folder holding (or receiving) the dataset's archive.")
    download: bool = Field(False, description="Download the archive (checksum-verified) when it is missing.")
    val_size: int = Field(5000, ge=0, description="Training images held out as source/val, chosen by seed.")
    train_size: int | None = Field(None, ge=1, description="Use only this many training images (quick runs).")
    test_size: int | None = Field(None, ge=1, description="Use only this many test images (quick runs).")
    corruption: CorruptionParams | None = Field(
        None, description="Add a target domain: the test images corrupted as in CIFAR-10-C."
    )
    seed: int = Field(0, description="Seed of the splits and corruption noise (independent of the training seed).")


class ImageFolderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: Path = Field(description="Source domain: one sub-folder of images per class.")
    target_root: Path | None = Field(
        None, description="Target domain with the same class folders: unlabelled training images and target/test."
    )
    image_size: int = Field(64, ge=8, description="Images are resized (shorter side) and centre-cropped to this side.")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of source images held out as source/val.")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of source images held out as source/test.")
    target_test_fraction: float = Field(
        0.5, gt=0.0, lt=1.0, description="Share of target images kept (labelled) as target/test."
    )
    storage: Literal["memory", "mmap"] = Field(
        "memory", description="memory: images in RAM; mmap: read batch by batch from the on-disk image cache."
    )
    cache_dir: Path | None = Field(None, description="Image cache folder; default $TRANSMODAL_CACHE_DIR, "
                                                     "$XDG_CACHE_HOME/transmodal or ~/.cache/transmodal.")
    num_workers: int | None = Field(None, ge=1, description="Processes decoding images; default: one per core.")
    seed: int = Field(0, description="Seed of the splits (independent of the training seed).")

    @model_validator(mode="after")
    def _some_training_data(self) -> ImageFolderParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave some images for training (sum below 1)")
        return self
