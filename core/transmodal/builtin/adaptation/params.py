"""Parameter models of the adaptation strategies and validators, kept apart so that discovery stays light.

Loss-adding strategies share :class:`WeightSchedule`: a weight that is zero during a warm-up and then ramps
up to its full value. The factor is a pure function of training progress (the trainer's step count over the
total), so a resumed run, which restores the step count, continues the schedule exactly.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class WeightSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    weight: float = Field(1.0, ge=0.0, description="Weight of the loss term once the ramp is over.")
    warmup: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of training during which the weight is 0.")
    ramp: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of training, after the warm-up, over which "
                                                         "the weight rises to its full value (0: at once).")
    ramp_shape: Literal["linear", "sigmoid", "dann"] = Field(
        "linear", description="linear; sigmoid: exp(-5 (1 - t)^2) (Laine and Aila, 2017); "
                              "dann: 2 / (1 + exp(-10 t)) - 1 (Ganin et al., 2016).",
    )

    def factor(self, progress: float) -> float:
        """The weight after ``progress`` (in [0, 1]) of training."""
        if progress < self.warmup:
            return 0.0
        t = 1.0 if self.ramp == 0 else min(1.0, (progress - self.warmup) / self.ramp)
        if self.ramp_shape == "sigmoid":
            shaped = math.exp(-5.0 * (1.0 - t) ** 2)
        elif self.ramp_shape == "dann":
            shaped = 2.0 / (1.0 + math.exp(-10.0 * t)) - 1.0
        else:
            shaped = t
        return self.weight * shaped


# -- fine-tuning family ---------------------------------------------------------------------------------------


class FreezeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    groups: list[str] = Field([], description="Layer groups to freeze, as patterns (fnmatch) of group names such "
                                              "as 'encoders.image.block1' or 'encoders.*'.")
    first: int = Field(0, ge=0, description="Also freeze the first (input-side) k groups of every encoder.")
    freeze_batchnorm: bool = Field(True, description="Frozen groups run in eval mode, keeping their BatchNorm "
                                                     "statistics (and switching off their dropout).")

    @model_validator(mode="after")
    def _something(self) -> FreezeParams:
        if not self.groups and self.first == 0:
            raise ValueError("say what to freeze: groups (patterns) and/or first (k input-side groups per encoder)")
        return self


class LPFTParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    probe_epochs: int = Field(1, ge=1, description="Epochs of linear probing before everything trains.")
    probe_groups: list[str] = Field(["fusion", "head"], min_length=1,
                                    description="Groups (patterns) that train during the probing phase.")
    freeze_batchnorm: bool = Field(True, description="Frozen groups run in eval mode during probing.")


class GradualUnfreezeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    every: int = Field(1, ge=1, description="Open one more level of groups every this many epochs or steps.")
    unit: Literal["epoch", "step"] = Field("epoch", description="Unit of 'every'.")
    start: int = Field(1, ge=1, description="Levels open from the start (1: the head only).")
    freeze_batchnorm: bool = Field(True, description="Groups still frozen run in eval mode.")


class LayerwiseLRParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    decay: float = Field(0.5, gt=0.0, le=1.0, description="Learning-rate factor per level below the head: the "
                                                          "group d levels down trains at lr * decay^d.")


# -- regularisers -----------------------------------------------------------------------------------------------


class L2SPParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    alpha: float = Field(0.01, ge=0.0, description="Weight of the pull toward the starting weights.")
    beta: float = Field(0.01, ge=0.0, description="Weight of plain L2 on the other (new) layers.")
    pretrained: list[str] = Field(["encoders.*"], description="Groups (patterns) pulled toward their start.")
    disable_weight_decay: bool = Field(True, description="Set the optimizer's weight decay to 0 on the model's "
                                                         "groups: decay toward zero would fight the pull.")


class L2Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    weight: float = Field(1e-4, ge=0.0, description="lambda in lambda/2 * ||w||^2.")
    groups: list[str] = Field(["*"], min_length=1, description="Groups (patterns) penalised.")


# -- normalisation ----------------------------------------------------------------------------------------------


class AdaBNParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_batches: int | None = Field(None, ge=1, description="Target batches used (default: all of them).")


# -- alignment and self-training --------------------------------------------------------------------------------


class CDANParams(WeightSchedule):
    """Defaults of Long et al. (2018): DANN's discriminator (1024-1024, dropout 0.5), the multilinear map up to
    4096 dimensions and a randomized one of width 1024 above."""

    hidden: int = Field(1024, ge=1, description="Width of the domain discriminator (1024: Long et al., 2018).")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout after each hidden layer of the discriminator "
                                                            "(0.5: Long et al., 2018).")
    entropy: bool = Field(False, description="CDAN+E: weight samples by 1 + exp(-entropy) of their predictions.")
    gamma: float = Field(10.0, gt=0.0, description="Steepness of the reversal coefficient's warm-up (10, as DANN).")
    max_coefficient: float = Field(1.0, gt=0.0, description="Reversal coefficient reached at the end.")
    max_multilinear_dim: int = Field(4096, ge=1, description="Above this features x classes size the "
                                                             "randomized multilinear map is used (4096: the paper).")
    randomized_dim: int = Field(1024, ge=1, description="Output width of the randomized multilinear map "
                                                        "(1024: the paper).")


class MMDParams(WeightSchedule):
    kernel: Literal["gaussian", "linear"] = Field("gaussian", description="gaussian: multi-kernel (DAN); "
                                                                          "linear: distance of the means.")
    kernels: int = Field(5, ge=1, description="Number of Gaussian bandwidths.")
    multiplier: float = Field(2.0, gt=1.0, description="Ratio between successive bandwidths.")


class CoralParams(WeightSchedule):
    pass


class EntropyMinParams(WeightSchedule):
    diversity: float = Field(1.0, ge=0.0, description="Weight of the entropy of the batch's mean prediction, "
                                                      "subtracted: 1 is information maximisation as in SHOT "
                                                      "(Liang et al., 2020), which keeps predictions from collapsing "
                                                      "onto one class; 0 is plain entropy minimisation.")


class MCCParams(WeightSchedule):
    temperature: float = Field(2.5, gt=0.0, description="Softmax temperature of the target predictions (2.5 as "
                                                         "in the MCC examples of TLlib; the paper's ablation finds "
                                                         "values from 2 to 3 alike).")


class PseudoLabelParams(WeightSchedule):
    threshold: float = Field(0.9, gt=0.0, lt=1.0, description="Confidence a target prediction needs to be used.")
    ema: float | None = Field(None, gt=0.0, lt=1.0, description="Mean teacher: labels come from an exponential "
                                                                "moving average of the model with this decay.")


class DIRTTParams(WeightSchedule):
    """Defaults of Shu et al. (2018): the teacher's term at 0.01, the teacher refreshed every 5,000 steps."""

    weight: float = Field(0.01, ge=0.0, description="Weight of KL(teacher || model) on target batches (0.01: Shu et "
                                                    "al., 2018).")
    teacher_every: int = Field(5000, ge=1, description="Steps between refreshes of the teacher from the model "
                                                       "(5000: Shu et al., 2018; a run shorter than that keeps the "
                                                       "starting model as its teacher).")


class VATParams(BaseModel):
    """Defaults of Shu et al. (2018) for MNIST -> SVHN (VADA): radius 3.5, xi 1e-6, source 1, target 0.01."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # Bounds far outside any useful setting: a probe shorter than 1e-12 does not move a float32 input, and one
    # of 1e39 (or such a radius) overflows it.
    radius: float = Field(3.5, gt=0.0, le=1e4, description="L2 norm of the adversarial perturbation of each "
                          "sample's image (as its encoder receives it) or word embeddings (3.5: Shu et al., 2018, on "
                          "images in [-1, 1]).")
    xi: float = Field(1e-6, ge=1e-12, le=1e4, description="Length of the random probe whose gradient gives the "
                      "adversarial direction (one power iteration; 1e-6: Miyato et al., 2018).")
    source_weight: float = Field(1.0, ge=0.0, description="Weight of the smoothness term on source inputs.")
    target_weight: float = Field(0.01, ge=0.0, description="Weight of the smoothness term on unlabelled target "
                                                           "inputs (0: source only, no target data needed).")

    @model_validator(mode="after")
    def _something(self) -> VATParams:
        if self.source_weight == 0 and self.target_weight == 0:
            raise ValueError("source_weight and target_weight are both 0: vat would do nothing")
        return self


# -- validators -------------------------------------------------------------------------------------------------


class TargetValidatorParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_batches: int | None = Field(None, ge=1, description="Unlabelled target batches scored (default: all).")
    max_samples: int | None = Field(None, ge=1, description="Unlabelled target samples scored (default: all).")


class SNDParams(TargetValidatorParams):
    temperature: float = Field(0.05, gt=0.0, description="Temperature of the neighbourhood softmax.")
    max_samples: int = Field(2000, ge=2, description="Target samples compared (the similarity matrix is N x N).")


class DEVParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_samples: int = Field(2000, ge=2, description="Samples used from each of source train, source val and "
                                                     "unlabelled target.")
    l2: float = Field(1e-2, gt=0.0, description="L2 penalty of the logistic domain classifier (on standardised "
                                                "features); keeps the importance weights finite.")
    steps: int = Field(200, ge=1, description="LBFGS iterations fitting the domain classifier.")


# -- cross-modal alignment --------------------------------------------------------------------------------------


class ContrastiveAlignmentParams(WeightSchedule):
    """CLIP's objective (Radford et al., 2021) between two modalities of one model."""

    modalities: list[str] | None = Field(
        None, min_length=2, max_length=2,
        description="The two modalities aligned, as named in model.encoders (default: the model's first two, in "
                    "sorted order, e.g. [image, text]).")
    dim: int = Field(128, ge=1, le=65_536, description="Width of the shared space each modality's encoder output "
                                                       "is projected to (a linear map without bias, as in CLIP).")
    temperature: float = Field(0.07, gt=0.0, le=100.0, description="Starting softmax temperature: the logit scale "
                                                                   "starts at log(1 / temperature) (0.07: CLIP).")
    learn_temperature: bool = Field(True, description="Learn the logit scale, as CLIP does; false keeps it fixed.")
    max_scale: float = Field(100.0, ge=1.0, le=1e4, description="The logit scale exp(s) is clamped at this value "
                                                                "after each step (100: CLIP).")
    source_pairs: bool = Field(True, description="Align the labelled source batch's pairs (their labels are not "
                                                 "used by this loss).")
    target_pairs: bool = Field(False, description="Also align the unlabelled target-domain pairs of each step (the "
                                                  "dataset must have an unlabelled target split).")
    task_weight: float = Field(1.0, ge=0.0, description="Factor on the classification loss while this strategy "
                                                        "is used: 0 trains the alignment alone (pre-alignment; the "
                                                        "head then stays untrained).")
    retrieval_pool: int = Field(1000, ge=2, le=100_000, description="Retrieval metrics rank each query among the "
                                                                   "first this many pairs of an evaluation split "
                                                                   "(Recall@K depends on the pool's size: 1000 as "
                                                                   "Flickr30k's test set).")
    zero_shot_prompt: str = Field("{}", min_length=2, max_length=500,
                                  description="Text embedded for each class in zero-shot classification, '{}' "
                                              "standing for the class name (CLIP: 'a photo of a {}.').")
    probe_samples: int = Field(5000, ge=2, le=1_000_000, description="source/val samples (held out from "
                                                                    "training) whose embeddings train the probe of "
                                                                    "`transmodal evaluate --via`.")

    @model_validator(mode="after")
    def _consistent(self) -> ContrastiveAlignmentParams:
        if self.modalities is not None and self.modalities[0] == self.modalities[1]:
            raise ValueError(f"modalities: name two different modalities, not {self.modalities[0]} twice")
        if "{}" not in self.zero_shot_prompt:
            raise ValueError(f"zero_shot_prompt: write {{}} where the class name goes, e.g. 'a photo of a {{}}.'; "
                             f"got {self.zero_shot_prompt!r}")
        if not (self.source_pairs or self.target_pairs):
            raise ValueError("source_pairs and target_pairs are both false: nothing would be aligned")
        if self.temperature < 1.0 / self.max_scale:
            raise ValueError(f"temperature {self.temperature} starts the logit scale at {1 / self.temperature:g}, "
                             f"above max_scale {self.max_scale:g}")
        return self
