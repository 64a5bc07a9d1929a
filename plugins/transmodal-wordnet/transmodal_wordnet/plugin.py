"""The plugin's hook and parameters. Imported at discovery: the factory is a lazy "module:attr" string, so the
WordNet files are read only when the dataset is built."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from transmodal import hookimpl
from transmodal.hookspecs import Register

Domain = Literal["definition", "usage"]

# Verb supersenses whose meanings do not overlap much (WordNet's lexicographer files), each with at least 200 usage
# sentences. change, contact, social, stative and cognition are left out by default: they are catch-alls.
DEFAULT_CLASSES = ["body", "communication", "competition", "consumption", "creation", "emotion", "motion",
                   "perception", "possession", "weather"]
VERB_SUPERSENSES = ["body", "change", "cognition", "communication", "competition", "consumption", "contact",
                    "creation", "emotion", "motion", "perception", "possession", "social", "stative", "weather"]


class WordNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Domain = Field("definition", description="Labelled source domain: 'definition' (dictionary entries, "
                                                     "headwords then gloss) or 'usage' (example sentences).")
    target: Domain = Field("usage", description="Target domain: unlabelled for training, labelled for testing.")
    classes: list[str] = Field(DEFAULT_CLASSES, min_length=2, description="Verb supersenses to classify "
                               f"(WordNet lexicographer files without 'verb.'): any of {VERB_SUPERSENSES}.")
    headwords: bool = Field(True, description="Begin each definition with its synset's words ('eat, feed: take in "
                                              "solid food'), as a dictionary entry does.")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Source samples held out as source/val.")
    target_test_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="Target samples held out, labelled, as "
                                                                         "target/test; the rest are unlabelled.")
    seed: int = Field(0, ge=0, lt=2**31, description="Seed of the splits (independent of training).")
    train_on: Literal["source", "target", "both"] = Field(
        "source", description="What the labelled training split holds. 'source': the adaptation setting. 'target' "
                              "and 'both': references that read the labels of the target rows an adaptation run "
                              "gets unlabelled ('both': with the source's training rows), hold val_fraction of "
                              "those target rows out as source/val and test on the same target/test split; no "
                              "unlabelled data. They show what the target's own labels give, the ceiling an "
                              "adaptation method is measured against.")

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, classes: list[str]) -> list[str]:
        unknown = [name for name in classes if name not in VERB_SUPERSENSES]
        if unknown:
            raise ValueError(f"unknown supersense(s) {unknown}; choose from {VERB_SUPERSENSES}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes lists a supersense twice: {classes}")
        return classes

    @model_validator(mode="after")
    def _target_apart(self) -> WordNetParams:
        if self.source == self.target:
            raise ValueError(f"source and target are both '{self.source}'; the domains are 'definition' and 'usage'")
        return self


@hookimpl
def register_datasets(register: Register) -> None:
    register("wordnet", "transmodal_wordnet.dataset:build_wordnet", WordNetParams,
             "Verbs' supersenses from WordNet definitions -> usage sentences (a real text shift); offline.")
