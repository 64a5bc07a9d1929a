"""The transmodal hooks of transmodal-hf (the entry point). Imported at discovery: keep it light."""

from __future__ import annotations

import transmodal
from transmodal.hookspecs import Register

from transmodal_hf.params import HFDatasetParams, HFTextParams, HFTokenizerParams

_HERE = "transmodal_hf"


@transmodal.hookimpl
def register_tokenizers(register: Register) -> None:
    register("hf-tokenizer", f"{_HERE}.tokenizer:build_hf_tokenizer", HFTokenizerParams,
             "A Hugging Face model's own tokenizer (special tokens added); saved with the run.")


@transmodal.hookimpl
def register_encoders(register: Register) -> None:
    register("hf-text", f"{_HERE}.encoder:build_hf_text", HFTextParams,
             "A Hugging Face transformer (default all-MiniLM-L6-v2, offline): mean/cls pooling or tokens.")


@transmodal.hookimpl
def register_datasets(register: Register) -> None:
    register("hf-dataset", f"{_HERE}.dataset:build_hf_dataset", HFDatasetParams,
             "A Hugging Face dataset saved to disk, or local Parquet/CSV/JSON files; columns mapped as manifest's.")
