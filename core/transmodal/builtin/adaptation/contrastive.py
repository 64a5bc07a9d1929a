"""Contrastive alignment of two modalities (CLIP; Radford et al., 2021).

Each of the two modalities' encoder outputs (``ModelOutput.modality_features``) goes through its own linear
projection, without bias, to a shared space and is L2-normalised. In a batch of N pairs, the logits are the
N x N cosine similarities times a learnable scale exp(s), with s starting at log(1 / 0.07) and exp(s) clamped at
100; the loss is the mean of the cross-entropies of the rows (each first-modality sample picks its partner among
the batch's second-modality samples) and of the columns (the reverse): the symmetric InfoNCE of CLIP's pseudocode.

Only rows that have both modalities take part (the batch's ``present/<modality>`` masks, not modality dropout:
a dropped modality is still a real observation to align). With ``target_pairs`` the unlabelled target batch's
pairs join the source's in the same similarity matrix, so target samples also serve as negatives. Under
torchrun, negatives are the rank's own share of the batch (CLIP gathers every rank's embeddings; we do not).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transmodal.builtin.adaptation.params import ContrastiveAlignmentParams
from transmodal.cross_modal import AlignedSpace, present_rows
from transmodal.errors import ConfigError
from transmodal.model import TransmodalModel
from transmodal.strategy import StepData, Strategy, TrainingContext


def info_nce(first: torch.Tensor, second: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE of paired, L2-normalised rows (N, D) x (N, D): with logits = scale * first @ second^T,
    (CE(logits, diag) + CE(logits^T, diag)) / 2, where row i's target is column i."""
    logits = scale * first.float() @ second.float().T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (nn.functional.cross_entropy(logits, targets) + nn.functional.cross_entropy(logits.T, targets)) / 2


class Projections(nn.Module):
    """The two projections and the logit scale: the aligned space, kept with the model's weights."""

    def __init__(self, dims: dict[str, int], dim: int, temperature: float, learn_temperature: bool,
                 max_scale: float) -> None:
        super().__init__()
        self.projections = nn.ModuleDict({m: nn.Linear(d, dim, bias=False) for m, d in sorted(dims.items())})
        start = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.logit_scale = nn.Parameter(start)
        else:
            self.register_buffer("logit_scale", start)
        self.max_log_scale = math.log(max_scale)

    def embed(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.projections[modality](features).float(), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """As CLIP: the scale's parameter is clipped after each step, so exp(s) never exceeds max_scale."""
        self.logit_scale.clamp_(max=self.max_log_scale)


class ContrastiveAlignment(Strategy):
    name = "contrastive-alignment"
    saved_with_weights = True

    def __init__(self, params: ContrastiveAlignmentParams) -> None:
        self.params = params
        self.needs_unlabelled_target = params.target_pairs
        self.task_weight = params.task_weight
        self.pair: tuple[str, str] | None = None
        self.parts: Projections | None = None

    def resolve_pair(self, model: TransmodalModel) -> tuple[str, str]:
        available = list(model.modalities)
        if len(available) < 2:
            raise ConfigError(
                f"adaptation: contrastive-alignment aligns two modalities, but the model has only "
                f"{', '.join(available) or 'none'} (model.encoders); give it a second modality's encoder, or remove "
                f"the strategy")
        if self.params.modalities is None:
            first, second = available[:2]
            return first, second
        unknown = [m for m in self.params.modalities if m not in available]
        if unknown:
            raise ConfigError(
                f"adaptation: contrastive-alignment.modalities names {', '.join(unknown)}, which the model does not "
                f"have; its modalities (model.encoders) are {', '.join(available)}")
        first, second = self.params.modalities
        return first, second

    def check(self, model: TransmodalModel, strategies: list[Strategy]) -> None:
        self.pair = self.resolve_pair(model)
        aligners = [s for s in strategies if isinstance(s, ContrastiveAlignment)]
        if len(aligners) > 1:
            raise ConfigError("adaptation: contrastive-alignment is listed more than once; one run trains one "
                              "aligned space (evaluation's retrieval and zero-shot metrics read it)")

    def setup(self, model: TransmodalModel, context: TrainingContext) -> None:
        self.pair = self.pair or self.resolve_pair(model)
        dims = {m: model.encoders[m].out_dim for m in self.pair}
        p = self.params
        self.parts = Projections(dims, p.dim, p.temperature, p.learn_temperature, p.max_scale)

    def modules(self) -> nn.Module | None:
        return self.parts

    def aligned_space(self) -> AlignedSpace | None:
        if self.parts is None or self.pair is None:
            return None
        return AlignedSpace(self.pair, self.parts.embed, self.params.retrieval_pool, self.params.probe_samples,
                            self.params.zero_shot_prompt)

    def loss_terms(self, step: StepData) -> dict[str, torch.Tensor]:
        assert self.parts is not None and self.pair is not None
        first, second = self.pair
        sides = []
        if self.params.source_pairs:
            sides.append((step.source, step.source_output))
        if self.params.target_pairs and step.target is not None and step.target_output is not None:
            sides.append((step.target, step.target_output))
        a_rows, b_rows = [], []
        for batch, output in sides:
            features = output.modality_features
            size, device = output.logits.shape[0], output.logits.device
            both = present_rows(batch, first, size, device) & present_rows(batch, second, size, device)
            a_rows.append(features[first][both])
            b_rows.append(features[second][both])
        a = self.parts.embed(first, torch.cat(a_rows))
        b = self.parts.embed(second, torch.cat(b_rows))
        scale = self.parts.scale()
        if a.shape[0] < 2:  # no negative to contrast with: a zero that still reaches every parameter (DDP)
            loss = (a.sum() + b.sum()) * 0.0 + scale * 0.0
        else:
            loss = info_nce(a, b, scale)
            with torch.no_grad():  # how often each side picks its own partner, both directions averaged
                similarity = a @ b.T
                targets = torch.arange(a.shape[0], device=a.device)
                hits = (similarity.argmax(dim=1) == targets).float().mean() + \
                    (similarity.argmax(dim=0) == targets).float().mean()
                step.metrics["batch_accuracy"] = hits / 2
        step.metrics["logit_scale"] = scale.detach()
        return {"infonce": self.params.factor(step.progress) * loss}

    def on_step_end(self, step: int) -> None:
        if self.parts is not None:
            self.parts.clamp_()


def build_contrastive_alignment(params: ContrastiveAlignmentParams) -> ContrastiveAlignment:
    return ContrastiveAlignment(params)
