"""Classification metrics accumulated on the device, read once per evaluation (no per-batch sync)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

DETAILS = ("per_class", "confusion")  # what ``compute`` adds given the class names



class ClassificationMeter:
    """Summed loss and a confusion matrix; ``compute`` gives loss, accuracy and macro-F1."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        self.loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").double()
        predictions = logits.argmax(dim=1)
        self.confusion += torch.bincount(
            labels * self.num_classes + predictions, minlength=self.num_classes**2
        ).view(self.num_classes, self.num_classes)

    def compute(self, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Loss, accuracy, macro-F1; given the class names, also each class's precision, recall, F1 and support,
        and the confusion matrix (rows: true class, columns: predicted class, in the order of ``classes``)."""
        confusion = self.confusion.double().cpu()
        total = confusion.sum()
        if total == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "macro_f1": float("nan"), "samples": 0}
        true_positive = confusion.diag()
        precision = true_positive / confusion.sum(dim=0).clamp(min=1)
        recall = true_positive / confusion.sum(dim=1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        seen = (confusion.sum(dim=1) + confusion.sum(dim=0)) > 0  # classes absent from labels and predictions
        metrics: dict[str, Any] = {
            "loss": float(self.loss_sum.cpu() / total),
            "accuracy": float(true_positive.sum() / total),
            "macro_f1": float(f1[seen].mean()),
            "samples": int(total),
        }
        if classes is not None:
            support = confusion.sum(dim=1)
            metrics["per_class"] = {
                name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                       "support": int(support[i])}
                for i, name in enumerate(classes)
            }
            metrics["confusion"] = self.confusion.cpu().tolist()
        return metrics
