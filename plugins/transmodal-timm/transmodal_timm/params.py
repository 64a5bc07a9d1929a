"""Parameters of the ``timm`` backbone. Imported at plugin discovery: pydantic only, no torch and no timm (a model
name is checked against timm's list when the backbone is built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator

# create_model arguments that the backbone sets itself
RESERVED_KWARGS = frozenset({"pretrained", "num_classes", "pretrained_cfg", "pretrained_cfg_overlay", "in_chans",
                             "features_only", "checkpoint_path"})


class TimmParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: str = Field(min_length=1, description="A timm model name: vit_small_patch16_224, convnext_tiny, "
                                                 "efficientnet_b0, ... (python -c 'import timm; "
                                                 "print(timm.list_models())').")
    pretrained: Path | None = Field(
        None, description="null (random init) or the path of a local weights file of this model (.safetensors, "
                          ".pth, .pt, .bin): a state dict as timm saves it, the classifier's keys optional. "
                          "Relative to the working directory; ~ accepted. Read when a run starts (a saved run does "
                          "not need it). Nothing is ever downloaded.")
    tokens: bool = Field(False, description="false: pooled features, timm's forward_head(pre_logits=True) (B, D). "
                                            "true: forward_features as tokens (B, T, D) for attention fusions "
                                            "(a CNN's feature map flattened, a ViT's sequence with its class token).")
    input_size: int | None = Field(None, ge=8, le=4096,
                                   description="Resize images on the device to this side; default: the data's size, "
                                               "or the model's own for models that need it (ViT).")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="More timm.create_model arguments: img_size (a ViT at another "
                                          "resolution), drop_path_rate, drop_rate, global_pool, ...")
    mean: list[float] | None = Field(None, min_length=1,
                                     description="Per-channel input mean; default: the model's pretrained config.")
    std: list[PositiveFloat] | None = Field(None, min_length=1,
                                            description="Per-channel input std; default: the model's pretrained "
                                                        "config.")

    @field_validator("pretrained", mode="before")
    @classmethod
    def _a_file_not_a_download(cls, value: Any) -> Any:
        if value is True:
            raise ValueError(
                "pretrained: true would download the weights from the Hugging Face Hub, which transmodal-timm never "
                "does. On a machine with network, save them once (timm.create_model(NAME, pretrained=True), then "
                "torch.save(model.state_dict(), 'NAME.pth'), or take model.safetensors from the Hugging Face cache) "
                "and set pretrained to that file's path")
        if value is False:
            return None
        return value

    @field_validator("model_kwargs")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(RESERVED_KWARGS & set(value))
        if reserved:
            raise ValueError(f"{', '.join(reserved)} cannot be set here: the backbone sets them itself (weights "
                             f"through pretrained, channels from the data)")
        return value
