"""Parameter models of the adapter strategies (light: imported at plugin discovery)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AdapterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_modules: list[str] = Field(
        ["encoders.*"], min_length=1,
        description="Modules that get adapters, as patterns (fnmatch; '*' crosses dots) of their names in the model, "
                    "e.g. 'encoders.image.*' or 'encoders.*.blocks.3.*'; layers of a type the method cannot adapt "
                    "are skipped.",
    )
    exclude_modules: list[str] = Field([], description="Patterns of module names never adapted.")
    train: list[str] = Field(["fusion", "head"], description="Layer groups (patterns) that train fully, as new "
                                                             "layers do; every other weight stays frozen.")
    freeze_batchnorm: bool = Field(True, description="BatchNorm layers outside the trained groups keep their "
                                                     "statistics, so base model + adapter file = trained model.")


class LoRAParams(AdapterParams):
    r: int = Field(8, ge=1, description="Rank of the low-rank update B A.")
    alpha: float = Field(16.0, gt=0.0, description="Scaling: the update is multiplied by alpha / r.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")


class IA3Params(AdapterParams):
    feedforward_modules: list[str] = Field(
        [], description="Patterns of adapted modules whose input (rather than output) is rescaled, as IA3 does "
                        "for the second layer of feed-forward blocks.",
    )
