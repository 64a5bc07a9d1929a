"""The plugin's hooks and parameters. Imported at discovery: the factory is a lazy "module:attr" string, so
Pillow and the fonts are touched only when the dataset is built."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from transmodal import hookimpl
from transmodal.hookspecs import Register

Domain = Literal["print", "scan", "handwritten", "signs"]


def _one_or_many_domains(schema: dict) -> None:
    """The schema of ``source`` as it is read: one domain, or a list of them."""
    one = schema.pop("items")
    many = {"type": schema.pop("type"), "items": one, "minItems": schema.pop("minItems")}
    schema["anyOf"] = [one, many]


class GlyphsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # One domain may be written alone (source: print): the schema says so too, for editors that check configs
    source: list[Domain] = Field(["print"], min_length=1, json_schema_extra=_one_or_many_domains, description="Labelled source domain(s); several for "
                                                                       "multi-source / leave-one-domain-out.")
    target: Domain = Field("signs", description="Target domain: unlabelled for training, labelled for testing.")
    characters: Literal["digits", "letters"] = Field("digits", description="digits: 0-9 (10 classes); "
                                                                           "letters: A-Z (26 classes).")
    train_size: int = Field(5000, ge=1, le=1_000_000, description="Labelled training samples per source domain.")
    val_size: int = Field(1000, ge=1, le=1_000_000, description="Source validation samples per source domain.")
    target_train_size: int = Field(5000, ge=0, le=1_000_000, description="Unlabelled target training samples.")
    target_test_size: int = Field(2000, ge=1, le=1_000_000, description="Labelled target test samples.")
    also_test: list[Domain] = Field([], description="More labelled test splits, 'test/<domain>' (same size as "
                                                    "target/test), to see the transfer to other domains in one run.")
    image_size: int = Field(32, ge=16, le=128)
    seed: int = Field(0, ge=0, lt=2**31, description="Seed of the rendered data (independent of training).")
    train_on: Literal["source", "target", "both"] = Field(
        "source", description="What the labelled training split holds. 'source': the adaptation setting. 'target' "
                              "and 'both': references that train on the target's training samples with their "
                              "labels ('both': beside the source's), select on val_size target samples rendered "
                              "apart and test on the same target/test split; no unlabelled data. They show what "
                              "the target's own labels give, the ceiling an adaptation method is measured against.")

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _target_apart(self) -> GlyphsParams:
        if self.target in self.source:
            raise ValueError(f"target '{self.target}' is also a source domain; choose a target outside "
                             f"{self.source}")
        if len(set(self.source)) != len(self.source):
            raise ValueError(f"source lists a domain twice: {self.source}")
        return self


@hookimpl
def register_datasets(register: Register) -> None:
    register("glyphs", "transmodal_glyphs.dataset:build_glyphs", GlyphsParams,
             "Digits or letters from real font families in 4 domains (print, scan, handwritten, signs); offline.")
