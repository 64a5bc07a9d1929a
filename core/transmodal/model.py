"""The model: an input pipeline and encoder per modality, a fusion operator and a head."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from transmodal.data import presence_key
from transmodal.encoder import Encoder
from transmodal.fusion import Fusion, pool_tokens, presence


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, num_classes)
    features: torch.Tensor  # (B, fusion.output_dim): what alignment strategies work on
    # Each modality's encoder output, (B, out_dim), token outputs mean-pooled over their real tokens: what
    # cross-modal strategies (contrastive-alignment) align. Rows of an absent modality are zeros or meaningless;
    # the batch's presence masks say which (``transmodal.cross_modal.present_rows``).
    modality_features: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, index: slice) -> ModelOutput:
        """The same outputs for a slice of the batch's rows."""
        return ModelOutput(self.logits[index], self.features[index],
                           {m: value[index] for m, value in self.modality_features.items()})


class TransmodalModel(nn.Module):
    """Encoders + fusion + head. One modality works the same way (a fusion over one input).

    A modality missing from the batch, or marked absent in ``present``, is handled by the fusion operator;
    ``modality_dropout`` drops each modality of each training sample with that probability (never all).
    """

    def __init__(
        self,
        inputs: dict[str, nn.Module],
        encoders: dict[str, Encoder],
        fusion: Fusion,
        head: nn.Module,
        num_classes: int,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.modalities = sorted(encoders)
        self.inputs = nn.ModuleDict(inputs)
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = head
        self.num_classes = num_classes
        self.modality_dropout = modality_dropout

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        """Every trainable part from input to output: encoder groups, then fusion, then head."""
        groups: list[tuple[str, nn.Module]] = []
        for modality in self.modalities:
            encoder = self.encoders[modality]
            groups.extend((f"encoders.{modality}.{name}", module) for name, module in encoder.layer_groups())
        groups.append(("fusion", self.fusion))
        groups.append(("head", self.head))
        return groups

    def encode(
        self, batch: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
        """Features, presence masks and token masks per modality. A presence mask comes from ``present`` or from
        the batch's ``present/<modality>`` column (datasets whose samples may lack a modality)."""
        batch_size = _batch_size(batch)
        present = dict(present or {})
        for modality in self.modalities:
            if modality not in present and presence_key(modality) in batch:
                present[modality] = batch[presence_key(modality)]
        features: dict[str, torch.Tensor] = {}
        token_masks: dict[str, torch.Tensor | None] = {}
        device = next(self.parameters()).device
        for modality in self.modalities:
            encoder = self.encoders[modality]
            raw = batch.get(modality)
            if raw is None:
                width = (1, encoder.out_dim) if encoder.returns_tokens else (encoder.out_dim,)
                features[modality] = torch.zeros(batch_size, *width, device=device)
                present[modality] = torch.zeros(batch_size, dtype=torch.bool, device=device)
                token_masks[modality] = None
                continue
            encoded = encoder(self.inputs[modality](raw) if modality in self.inputs else raw)
            token_masks[modality] = encoder.token_mask(raw) if encoded.dim() == 3 else None
            features[modality] = encoded
        if self.training and self.modality_dropout > 0 and len(self.modalities) > 1:
            present = self._drop_modalities(present, batch_size, device)
        if not self.fusion.accepts_tokens:
            for modality, value in features.items():
                if value.dim() == 3:
                    features[modality] = pool_tokens(value, token_masks[modality])
        return features, present, token_masks

    def forward(
        self, batch: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
    ) -> ModelOutput:
        features, present, token_masks = self.encode(batch, present)
        fused = self.fusion(features, present or None, token_masks)
        pooled = {m: pool_tokens(value, token_masks[m]) if value.dim() == 3 else value
                  for m, value in features.items()}
        if isinstance(self.head, LateFusionHeads):
            logits = self.head(features, present or None, token_masks)
        else:
            logits = self.head(fused)
        return ModelOutput(logits=logits, features=fused, modality_features=pooled)

    def _drop_modalities(
        self, present: dict[str, torch.Tensor], batch_size: int, device: torch.device
    ) -> dict[str, torch.Tensor]:
        keep = torch.rand(batch_size, len(self.modalities), device=device) >= self.modality_dropout
        for column, modality in enumerate(self.modalities):
            if modality in present:
                keep[:, column] &= present[modality]
        # A sample that lost every modality keeps one at random, so no sample is left with nothing.
        empty = ~keep.any(dim=1)
        rescue = torch.randint(0, len(self.modalities), (batch_size,), device=device)
        keep[empty, rescue[empty]] = True
        return {modality: keep[:, column] for column, modality in enumerate(self.modalities)}


class LateFusionHeads(nn.Module):
    """Late fusion: one head per modality; class probabilities averaged over the modalities each sample has.

    Returns the log of the averaged probabilities, which cross-entropy takes as logits. The fusion operator
    still runs, for the features that strategies align.
    """

    def __init__(self, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(heads)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor] | None,
        token_masks: dict[str, torch.Tensor | None],
    ) -> torch.Tensor:
        log_probs, masks = [], []
        for modality in sorted(self.heads):
            feature = features[modality]
            if feature.dim() == 3:
                feature = pool_tokens(feature, token_masks.get(modality))
            log_probs.append(torch.log_softmax(self.heads[modality](feature).float(), dim=1))
            masks.append(presence(features, present, modality).bool())
        stacked = torch.stack(log_probs).masked_fill(~torch.stack(masks), float("-inf"))
        count = torch.stack(masks).sum(dim=0).clamp(min=1)
        averaged = torch.logsumexp(stacked, dim=0) - count.log()
        # A sample with no modality at all: uniform prediction instead of NaN.
        return torch.where(torch.stack(masks).any(dim=0), averaged, torch.zeros_like(averaged))


def _batch_size(batch: dict[str, torch.Tensor]) -> int:
    for value in batch.values():
        return value.shape[0]  # not int(): under torch.export that would fix the batch size at the sample's
    raise ValueError("empty batch")
