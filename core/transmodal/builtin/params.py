"""Parameter models of the core's own components, kept apart from their implementations so that listing and
validating components (``transmodal components``, ``config validate``) imports pydantic only, never torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

# synthetic-shapes keeps its images in memory: a million 32x32 samples are 3 GiB.
MAX_SAMPLES = 1_000_000


class SyntheticShapesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    train_size: int = Field(6000, ge=1, le=MAX_SAMPLES, description="Labelled source training samples.")
    val_size: int = Field(1000, ge=1, le=MAX_SAMPLES, description="Labelled source validation samples.")
    target_train_size: int = Field(6000, ge=0, le=MAX_SAMPLES,
                                   description="Target samples whose labels training never sees.")
    target_test_size: int = Field(1000, ge=1, le=MAX_SAMPLES, description="Labelled target test samples.")
    image_size: int = Field(32, ge=16, le=128)
    seed: int = Field(0, ge=0, le=2**32 - 1,
                      description="Seed of the generated data (independent of the training seed).")
    caption_shape: bool = Field(False, description="End each caption with the shape's name ('it is a circle.'): "
                                                   "the caption then carries the whole class, and image and caption "
                                                   "share the shape, which cross-modal transfer and zero-shot "
                                                   "classification by class names need. Off: the shape is only in "
                                                   "the image, the attribute only in the caption.")

class SmallCNNParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    channels: list[PositiveInt] = Field([16, 32, 64], min_length=1, description="Output channels of each conv block.")
    tokens: bool = Field(False, description="Return the last feature map as (B, H*W, C) tokens.")

class MLPParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    hidden: list[PositiveInt] = Field([256, 128], min_length=1, description="Width of each layer; the last is out_dim.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

class TabularParams(BaseModel):
    """Gorishniy et al. (2021) tune these per dataset; the defaults lie inside their search space (width 64-512,
    hidden factor 1-4, 1-8 blocks, dropouts 0-0.5) and suit a few thousand rows."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    width: int = Field(128, ge=1, le=8192, description="Width of the residual stream; the encoder's out_dim.")
    hidden_factor: float = Field(2.0, gt=0.0, le=16.0, description="Hidden width of each block, times width.")
    blocks: int = Field(2, ge=0, le=64, description="Residual blocks.")
    embedding_dim: int = Field(8, ge=1, le=1024, description="Width of each categorical column's embedding.")
    hidden_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside each block, after its ReLU.")
    residual_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on each block's output before "
                                                                     "it is added back.")

class BagOfWordsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    embedding_dim: int = Field(64, ge=1)
    out_dim: int | None = Field(None, ge=1, description="Add a ReLU projection to this width; none keeps the mean.")

class ConcatParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    hidden: int | None = Field(None, ge=1, description="Project the concatenation through a ReLU MLP of this width.")
    batchnorm: bool = Field(False, description="With hidden: BatchNorm between the projection and its ReLU, as in "
                                               "the bottleneck of the domain-adaptation recipes (Linear, "
                                               "BatchNorm1d, ReLU). It keeps units from all dying under an "
                                               "alignment loss that a constant feature minimises (mmd, coral).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

class MeanParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    dim: int = Field(256, ge=1, description="Width every modality is projected to before averaging.")

class GatedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    dim: int = Field(128, ge=1, description="Width of each modality's tanh projection, and of the output.")

class BilinearParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rank: int = Field(256, ge=1, description="Width of the joint space where the projections are multiplied.")
    dim: int = Field(128, ge=1, description="Output width (a linear map of the product).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the product.")

class TensorParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    project: int | None = Field(
        None, ge=1, description="Project each modality to this width first, to keep the outer product small; "
        "none multiplies the features as they are.",
    )
    dim: int = Field(128, ge=1, description="Width of the ReLU layer applied to the flattened product.")
    max_size: int = Field(
        2**18, ge=1, description="Most entries per sample allowed in the outer product (product of width + 1 "
        "over modalities); a larger product is refused before anything is allocated.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the flattened product.")

class LowRankTensorParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rank: int = Field(4, ge=1, description="Rank of the decomposition of the fusion weight tensor.")
    dim: int = Field(128, ge=1, description="Output width.")

class FiLMParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    conditioning: str = Field(
        "text", description="The modality that conditions the others: each other modality x becomes "
        "gamma(c) * x + beta(c)."
    )

class LinearHeadParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    hidden: int = Field(0, ge=0, description="Width of an optional hidden layer; 0 for a plain linear head.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

class FinetuneParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    encoder_lr_scale: float = Field(
        1.0, gt=0.0, description="Learning-rate multiplier for the encoders (below 1 keeps pretrained weights closer)."
    )

class DANNParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    weight: float = Field(1.0, ge=0.0, description="Weight of the domain loss.")
    hidden: int = Field(1024, ge=1, description="Width of the domain discriminator (1024: Ganin et al., 2016).")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout after each hidden layer of the discriminator "
                                                            "(0.5: Ganin et al., 2016).")
    gamma: float = Field(10.0, gt=0.0, description="Steepness of the reversal coefficient's warm-up "
                                                   "(10: Ganin et al., 2016).")
    max_coefficient: float = Field(1.0, gt=0.0, description="Reversal coefficient reached at the end of training.")
    delay: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Fraction of training before the reversal coefficient starts its warm-up: until then the "
                    "discriminator learns but sends no gradient to the encoders (lets the task features form first).",
    )

class WordTokenizerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_length: int = Field(64, ge=1, description="Tokens kept per text; longer texts are truncated.")
    vocab_size: int = Field(20_000, ge=2, description="Most frequent words kept, including <pad> and <unk>.")
    min_freq: int = Field(1, ge=1, description="Words seen fewer times in training become <unk>.")
    lowercase: bool = True

class MetricParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    split: str = Field("source/val", description="Evaluation split whose metric is read.")
    metric: Literal["accuracy", "macro_f1", "loss"] = Field("accuracy", description="accuracy, macro_f1, or loss "
                                                                                 "(lower is better).")

class OracleParams(MetricParams):
    split: str = Field("target/test", description="Labelled target split whose metric is read.")
