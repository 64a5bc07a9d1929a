"""The plugin's hooks. Imported at discovery: the factory is a lazy "module:attr" string, so timm is imported only
when the backbone is built."""

from __future__ import annotations

from transmodal import hookimpl
from transmodal.hookspecs import Register

from transmodal_timm.params import TimmParams


@hookimpl
def register_backbones(register: Register) -> None:
    register("timm", "transmodal_timm.backbone:build_timm", TimmParams,
             "Any timm image model by name (ViT, ConvNeXt, EfficientNet, ...); weights from a local file only.")
