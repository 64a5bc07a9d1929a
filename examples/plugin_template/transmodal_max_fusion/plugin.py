"""Imported when transmodal discovers plugins: keep it light (no heavy imports, lazy factories)."""

from pydantic import BaseModel, ConfigDict, Field

import transmodal


class MaxFusionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = Field(128, ge=1, description="Width each modality is projected to.")


@transmodal.hookimpl
def register_fusions(register):
    register("max", "transmodal_max_fusion.fusion:build", MaxFusionParams,
             "Element-wise maximum over projected modalities.")
