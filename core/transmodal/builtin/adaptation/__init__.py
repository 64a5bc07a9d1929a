"""The core's adaptation plugin: fine-tuning schedules, regularisers, AdaBN, domain alignment, self-training,
contrastive alignment of two modalities, and validators that select checkpoints without target labels.
Registered through the same hooks as any plugin; the modules with the implementations are imported only when a
component is built."""

from __future__ import annotations

from transmodal.builtin.adaptation.params import (
    AdaBNParams,
    CDANParams,
    ContrastiveAlignmentParams,
    CoralParams,
    DEVParams,
    DIRTTParams,
    EntropyMinParams,
    FreezeParams,
    GradualUnfreezeParams,
    L2Params,
    L2SPParams,
    LayerwiseLRParams,
    LPFTParams,
    MCCParams,
    MMDParams,
    PseudoLabelParams,
    SNDParams,
    TargetValidatorParams,
    VATParams,
)
from transmodal.hookspecs import Register, hookimpl

_HERE = "transmodal.builtin.adaptation"


@hookimpl
def register_strategies(register: Register) -> None:
    register("lp-ft", f"{_HERE}.finetuning:build_lp_ft", LPFTParams,
             "Linear probe (fusion and head only) for some epochs, then full fine-tuning (Kumar et al., 2022).")
    register("freeze", f"{_HERE}.finetuning:build_freeze", FreezeParams,
             "Chosen layer groups (patterns, or the first k of each encoder) never train.")
    register("gradual-unfreeze", f"{_HERE}.finetuning:build_gradual_unfreeze", GradualUnfreezeParams,
             "ULMFiT: only the head trains at first; one more level opens every N epochs or steps.")
    register("layerwise-lr", f"{_HERE}.finetuning:build_layerwise_lr", LayerwiseLRParams,
             "Learning rate decayed level by level from the head toward the input.")
    register("l2-sp", f"{_HERE}.regularizers:build_l2_sp", L2SPParams,
             "L2-SP: pull pretrained layers toward their starting weights, plain L2 on new layers (Li et al., 2018).")
    register("l2", f"{_HERE}.regularizers:build_l2", L2Params, "Plain L2 penalty on the weights, as a loss term.")
    register("adabn", f"{_HERE}.normalization:build_adabn", AdaBNParams,
             "AdaBN: evaluate with BatchNorm statistics re-estimated on the unlabelled target data.")
    register("cdan", f"{_HERE}.alignment:build_cdan", CDANParams,
             "Conditional adversarial alignment of features x predictions, optionally entropy-weighted (CDAN+E).")
    register("mmd", f"{_HERE}.alignment:build_mmd", MMDParams,
             "Maximum mean discrepancy between source and target features: multi-kernel Gaussian (DAN) or linear.")
    register("coral", f"{_HERE}.alignment:build_coral", CoralParams,
             "Deep CORAL: match source and target feature covariances.")
    register("entropy-min", f"{_HERE}.alignment:build_entropy_min", EntropyMinParams,
             "Information maximisation on target predictions (SHOT); diversity 0: plain entropy minimisation.")
    register("mcc", f"{_HERE}.alignment:build_mcc", MCCParams,
             "Minimum class confusion of target predictions (Jin et al., 2020): no discriminator.")
    register("dirt-t", f"{_HERE}.refinement:build_dirt_t", DIRTTParams,
             "DIRT-T (Shu et al., 2018): refine a VADA run (model.init_from) on the target alone, near a teacher copy.")
    register("vat", f"{_HERE}.smoothness:build_vat", VATParams,
             "Virtual adversarial training on source and target inputs (Miyato et al., 2018); with entropy-min and "
             "dann, VADA (Shu et al., 2018).")
    register("pseudo-label", f"{_HERE}.self_training:build_pseudo_label", PseudoLabelParams,
             "Confident target predictions as labels, optionally from a mean teacher (EMA).")
    register("contrastive-alignment", f"{_HERE}.contrastive:build_contrastive_alignment", ContrastiveAlignmentParams,
             "CLIP's symmetric InfoNCE between two modalities' projected encoder outputs (Radford et al., 2021).")


@hookimpl
def register_validators(register: Register) -> None:
    register("entropy", f"{_HERE}.validators:build_entropy", TargetValidatorParams,
             "Minus the mean entropy of target predictions (no target labels).")
    register("infomax", f"{_HERE}.validators:build_infomax", TargetValidatorParams,
             "Mutual information between target inputs and predictions (no target labels).")
    register("snd", f"{_HERE}.validators:build_snd", SNDParams,
             "Soft neighbourhood density of target predictions (Saito et al., 2021; no target labels).")
    register("dev", f"{_HERE}.validators:build_dev", DEVParams,
             "Deep Embedded Validation: importance-weighted source/val loss (You et al., 2019; no target labels).")
