"""Evaluation in a space where two modalities are aligned (what ``contrastive-alignment`` trains).

For each evaluation split with both modalities, three kinds of numbers:

* **retrieval** (``transmodal.retrieval``): each modality's embedding as a query against the other's, among the
  first ``retrieval_pool`` pairs of the split (rows lacking either modality are left out);
* **zero-shot** classification, when one of the two modalities is text: each class name, in the strategy's
  ``zero_shot_prompt`` (CLIP's "a photo of a {}."; default the bare name), is embedded through the text encoder
  and its projection, a prototype per class, and a sample of the other modality takes the class of its nearest
  prototype (cosine; the logits are 100 x cosine, CLIP's final scale). It is only as good as the tokenizer's
  knowledge of the class names' words: ``unknown_token_fraction`` says how many of the prompts' tokens it did not
  know, and ``indistinct_classes`` lists classes whose prompts it tokenizes alike;
* **cross-modal transfer** (``transmodal evaluate RUN_DIR --via MODALITY``): a linear probe (multinomial
  logistic regression) is trained on the *other* modality's aligned embeddings of the labelled ``source/val``
  split and then predicts each evaluation sample from the ``via`` modality's embedding alone. The model's own
  head cannot do this: it reads the fused features, which live in another space. ``within`` is the same probe
  trained on the ``via`` modality itself, the reference that transfer is measured against.

  The probe never trains on the training split: there the aligned encoders have memorised each pair, so a
  training image's embedding carries its own caption's content, and a probe trained on it "transfers" what the
  image never showed (on synthetic-shapes, whose images carry no attribute, a probe trained on training-split image
  embeddings read the attribute from captions: 25% against 14% held out, chance 11%). On ``source/val`` itself the
  numbers are cross-fitted: a probe trained on the even rows predicts the odd ones and the reverse.

Without an aligned space (no ``contrastive-alignment`` in the run) none of these is reported: two encoders'
outputs, even of the same width, are coordinates of unrelated spaces, and ranking one against the other would
measure nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from transmodal.data import PAD_ID, UNK_ID, Batch, presence_key
from transmodal.distributed import SINGLE, World
from transmodal.errors import ConfigError
from transmodal.fusion import pool_tokens
from transmodal.metrics import ClassificationMeter
from transmodal.model import ModelOutput, TransmodalModel
from transmodal.retrieval import retrieval_metrics


@dataclass
class AlignedSpace:
    """Two modalities' shared space: ``embed(modality, encoder_features)`` gives L2-normalised (B, D) rows."""

    modalities: tuple[str, str]
    embed: Callable[[str, torch.Tensor], torch.Tensor]
    retrieval_pool: int = 1000
    probe_samples: int = 5000
    zero_shot_prompt: str = "{}"  # the text embedded for each class, "{}" standing for its name

    def other(self, modality: str) -> str:
        first, second = self.modalities
        return second if modality == first else first


def present_rows(batch: Batch, modality: str, size: int, device: torch.device) -> torch.Tensor:
    """(B,) bool: the rows of ``batch`` that have ``modality`` (its presence column; all rows when it has none;
    no row when the batch lacks the modality)."""
    if modality not in batch:
        return torch.zeros(size, dtype=torch.bool, device=device)
    if presence_key(modality) in batch:
        return batch[presence_key(modality)].to(device=device, dtype=torch.bool)
    return torch.ones(size, dtype=torch.bool, device=device)


def zero_shot_modalities(space: AlignedSpace, kinds: dict[str, str]) -> tuple[str, str] | None:
    """(text modality giving the prototypes, modality classified) or None when neither is text. When both are,
    the second named gives the prototypes."""
    first, second = space.modalities
    if kinds.get(second) == "text":
        return second, first
    if kinds.get(first) == "text":
        return first, second
    return None


@dataclass
class Prototypes:
    embeddings: torch.Tensor  # (C, D), L2-normalised
    unknown_token_fraction: float  # of the prompts' tokens, those the tokenizer does not know
    indistinct: list[str]  # classes whose prompt's tokens equal another class's: no prototype tells them apart


def class_prototypes(model: TransmodalModel, space: AlignedSpace, text: str, tokenizer: Any,
                     classes: Sequence[str], device: torch.device) -> Prototypes:
    """Each class name, in the space's prompt, embedded through the text modality's tokenizer, encoder and
    projection."""
    texts = [space.zero_shot_prompt.replace("{}", name.replace("_", " ")) for name in classes]
    ids = tokenizer.encode_batch(texts).to(device)
    encoder = model.encoders[text]
    inputs = model.inputs[text](ids) if text in model.inputs else ids
    encoded = encoder(inputs)
    if encoded.dim() == 3:
        encoded = pool_tokens(encoded, encoder.token_mask(ids))
    real = ids != PAD_ID
    unknown = float(((ids == UNK_ID) & real).sum()) / max(1, int(real.sum()))
    rows = [tuple(row[row != PAD_ID].tolist()) for row in ids.cpu()]
    indistinct = [name for name, row in zip(classes, rows) if rows.count(row) > 1]
    return Prototypes(space.embed(text, encoded).float(), unknown, indistinct)


class SplitAlignment:
    """Accumulates one evaluation split's aligned embeddings batch by batch, then computes its metrics."""

    def __init__(self, space: AlignedSpace, num_classes: int, device: torch.device,
                 prototypes: tuple[str, str, Prototypes] | None = None,
                 probes: dict[str, tuple[nn.Linear, nn.Linear]] | None = None) -> None:
        self.space = space
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.paired = 0
        self.prototypes = prototypes
        self.zero_shot = ClassificationMeter(num_classes, device) if prototypes else None
        # via modality -> (probe trained on the other modality, probe trained on the via modality itself)
        self.probes = probes or {}
        self.transfer = {via: (ClassificationMeter(num_classes, device), ClassificationMeter(num_classes, device))
                         for via in self.probes}

    def update(self, batch: Batch, output: ModelOutput) -> None:
        first, second = self.space.modalities
        features = output.modality_features
        if first not in features or second not in features:
            return
        size = output.logits.shape[0]
        device = output.logits.device
        has = {m: present_rows(batch, m, size, device) for m in (first, second)}
        embedded = {m: self.space.embed(m, features[m]).float() for m in (first, second)}
        both = has[first] & has[second]
        if self.paired < self.space.retrieval_pool:
            kept = embedded[first][both][: self.space.retrieval_pool - self.paired]
            self.pairs.append((kept, embedded[second][both][: kept.shape[0]]))
            self.paired += kept.shape[0]
        labels = batch.get("label")
        if labels is None:
            return
        if self.zero_shot is not None and self.prototypes is not None:
            _, query, prototypes = self.prototypes
            rows = has[query]
            self.zero_shot.update(embedded[query][rows] @ prototypes.embeddings.T * 100.0, labels[rows])
        for via, (transfer, within) in self.transfer.items():
            rows = has[via]
            across, own = self.probes[via]
            transfer.update(across(embedded[via][rows]), labels[rows])
            within.update(own(embedded[via][rows]), labels[rows])

    def compute(self, world: World = SINGLE) -> dict[str, Any]:
        result: dict[str, Any] = {}
        gathered = world.gather([(a.cpu(), b.cpu()) for a, b in self.pairs]) if world.distributed else [self.pairs]
        pairs = [pair for part in gathered for pair in part]
        if pairs:
            first = torch.cat([a for a, _ in pairs])[: self.space.retrieval_pool]
            second = torch.cat([b for _, b in pairs])[: self.space.retrieval_pool]
            if first.shape[0] >= 2:
                result["retrieval"] = retrieval_metrics(first, second, self.space.modalities)
        if self.zero_shot is not None and self.prototypes is not None:
            text, query, prototypes = self.prototypes
            result["zero_shot"] = {**_classification(self.zero_shot, world), "modality": query,
                                   "prototypes": text, "unknown_token_fraction": prototypes.unknown_token_fraction,
                                   **({"indistinct_classes": prototypes.indistinct} if prototypes.indistinct else {})}
        for via, (transfer, within) in self.transfer.items():
            result.setdefault("transfer", {})[via] = {
                "trained_on": self.space.other(via), **_classification(transfer, world),
                "within": _classification(within, world),
            }
        return result


def _classification(meter: ClassificationMeter, world: World) -> dict[str, Any]:
    for total in (meter.confusion, meter.loss_sum):
        world.sum_(total)
    return meter.compute()


# -- the probe of cross-modal transfer --------------------------------------------------------------------------


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 1e-4,
              steps: int = 100) -> nn.Linear:
    """Multinomial logistic regression on ``features`` (N, D): mean cross-entropy + l2/2 ||W||^2, fitted by
    LBFGS from zero weights, so the same inputs always give the same probe."""
    with torch.inference_mode(False), torch.enable_grad():
        x = features.detach().float().clone()
        y = labels.detach().clone()
        probe = nn.Linear(x.shape[1], num_classes).to(x.device)
        nn.init.zeros_(probe.weight)
        nn.init.zeros_(probe.bias)
        optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, history_size=20,
                                      line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(probe(x), y) + 0.5 * l2 * probe.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    return probe.requires_grad_(False)


def embeddings_of(batches: Iterable[Batch], model: TransmodalModel, space: AlignedSpace, modality: str,
                  limit: int, autocast: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``modality``'s aligned embeddings, labels and positions in the split of the first ``limit`` labelled
    samples that have it."""
    embedded, labels, positions, count, seen = [], [], [], 0, 0
    for batch in batches:
        if count >= limit:
            break
        with autocast():
            output = model(batch)
        size = output.logits.shape[0]
        rows = present_rows(batch, modality, size, output.logits.device)
        embedded.append(space.embed(modality, output.modality_features[modality][rows]).float()[: limit - count])
        labels.append(batch["label"][rows][: limit - count])
        positions.append((seen + rows.nonzero().squeeze(1))[: limit - count])
        count += embedded[-1].shape[0]
        seen += size
    if count < 4:
        raise ConfigError(f"--via: the source/val split has {count} samples with '{modality}', too few to train "
                          f"the transfer probe on")
    return torch.cat(embedded), torch.cat(labels), torch.cat(positions)


def cross_fitted_transfer(train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                          test: tuple[torch.Tensor, torch.Tensor, torch.Tensor], num_classes: int,
                          device: torch.device) -> dict[str, Any]:
    """Transfer within one split, two-fold: probes trained on ``train``'s (embeddings, labels, positions) of even
    positions predict ``test``'s odd ones, and the reverse, so that no sample is predicted by a probe that saw
    it through either modality; ``within``: the same with ``test``'s own embeddings."""
    across, within = ClassificationMeter(num_classes, device), ClassificationMeter(num_classes, device)
    for parity in (0, 1):
        fit_rows = train[2] % 2 == parity
        own_rows = test[2] % 2 == parity
        rows = test[2] % 2 != parity
        probe = fit_probe(train[0][fit_rows], train[1][fit_rows], num_classes)
        own = fit_probe(test[0][own_rows], test[1][own_rows], num_classes)
        across.update(probe(test[0][rows]), test[1][rows])
        within.update(own(test[0][rows]), test[1][rows])
    return {**across.compute(), "within": within.compute(), "cross_fitted": True}


def check_via(space: AlignedSpace | None, via: str, modalities: Sequence[str]) -> None:
    if space is None:
        raise ConfigError(f"--via {via}: cross-modal transfer needs modalities aligned in one space, and this run "
                          f"has none; train it with the contrastive-alignment strategy (adaptation: "
                          f"[{{name: contrastive-alignment}}])")
    if via not in space.modalities:
        raise ConfigError(f"--via {via}: the run aligns {' and '.join(space.modalities)}; name one of them "
                          f"(the model's modalities: {', '.join(modalities)})")
