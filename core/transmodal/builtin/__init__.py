"""The core's own plugin: its components register through the same hooks as any installed plugin."""

from __future__ import annotations

from transmodal.builtin.params import (
    BagOfWordsParams,
    BilinearParams,
    ConcatParams,
    DANNParams,
    FiLMParams,
    FinetuneParams,
    GatedParams,
    LinearHeadParams,
    LowRankTensorParams,
    MeanParams,
    MetricParams,
    MLPParams,
    OracleParams,
    SmallCNNParams,
    SyntheticShapesParams,
    TabularParams,
    TensorParams,
    WordTokenizerParams,
)
from transmodal.datasets.manifest_params import ManifestParams
from transmodal.hookspecs import Register, hookimpl
from transmodal.registry import NoParams

_HERE = "transmodal.builtin"


@hookimpl
def register_encoders(register: Register) -> None:
    register("small-cnn", f"{_HERE}.encoders:build_small_cnn", SmallCNNParams,
             "Small CNN for images: conv-BN-ReLU blocks and global average pooling.")
    register("mlp", f"{_HERE}.encoders:build_mlp", MLPParams, "Multi-layer perceptron for vector inputs.")
    register("bow", f"{_HERE}.encoders:build_bag_of_words", BagOfWordsParams,
             "Bag of words for text: mean of word embeddings (EmbeddingBag).")
    register("tabular", f"{_HERE}.tabular:build_tabular", TabularParams,
             "Tabular data: standardised numeric and embedded categorical columns, then a residual MLP.")


@hookimpl
def register_fusions(register: Register) -> None:
    register("concat", f"{_HERE}.fusions:build_concat", ConcatParams,
             "Concatenation of modality features, with an optional projection MLP.")
    register("mean", f"{_HERE}.fusions:build_mean", MeanParams,
             "Projected modality features averaged over the modalities present.")
    register("gated", f"{_HERE}.fusions:build_gated", GatedParams,
             "Gated multimodal unit: tanh projections weighted by sigmoid gates that see every modality.")
    register("bilinear", f"{_HERE}.fusions:build_bilinear", BilinearParams,
             "Low-rank bilinear pooling (MLB): Hadamard product of tanh projections, then a linear map.")
    register("tensor", f"{_HERE}.fusions:build_tensor", TensorParams,
             "Tensor fusion: outer product of the modality vectors each extended with a 1, then a ReLU layer.")
    register("low-rank-tensor", f"{_HERE}.fusions:build_low_rank_tensor", LowRankTensorParams,
             "Low-rank multimodal fusion: tensor fusion through rank-R modality factors, never forming the product.")
    register("film", f"{_HERE}.fusions:build_film", FiLMParams,
             "FiLM: one modality scales and shifts the features of the others (identity when it is absent).")


@hookimpl
def register_heads(register: Register) -> None:
    register("linear", f"{_HERE}.heads:build_linear_head", LinearHeadParams,
             "Linear classifier, with an optional hidden layer.")


@hookimpl
def register_strategies(register: Register) -> None:
    register("finetune", f"{_HERE}.strategies:build_finetune", FinetuneParams,
             "Everything trains; optional learning-rate multiplier for the encoders.")
    register("linear-probe", f"{_HERE}.strategies:build_linear_probe", NoParams,
             "Encoders frozen (BatchNorm statistics too); fusion and head train.")
    register("dann", f"{_HERE}.strategies:build_dann", DANNParams,
             "Domain-adversarial training with a gradient-reversal layer, on unlabelled target batches.")


@hookimpl
def register_datasets(register: Register) -> None:
    register("synthetic-shapes", f"{_HERE}.datasets:build_synthetic_shapes", SyntheticShapesParams,
             "Embedded paired image + caption data with a source/target domain shift; no download.")
    register("manifest", "transmodal.datasets.manifest:build_manifest", ManifestParams,
             "Your own data: a CSV/TSV/JSONL/Parquet file mapping columns to image, text and vector modalities.")


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("word", "transmodal.tokenizer:build_word_tokenizer", WordTokenizerParams,
             "Lower-cased words and punctuation with a frequency-ranked vocabulary.")


@hookimpl
def register_validators(register: Register) -> None:
    register("source-val", "transmodal.validator:build_source_val", MetricParams,
             "A metric on held-out labelled source data (default: source/val accuracy).")
    register("oracle", "transmodal.validator:build_oracle", OracleParams,
             "A metric on target test labels: an upper bound, always marked oracle, never a result.")
