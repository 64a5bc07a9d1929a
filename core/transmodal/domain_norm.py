"""Domain-specific BatchNorm statistics: the target domain normalised by its own statistics, in training and in
evaluation, while the layers' weights stay shared (Chang et al., 2019, "Domain-Specific Batch Normalization for
Unsupervised Domain Adaptation"; the statistics half of AdaBN, Li et al., 2016, carried into training).

With ``trainer.batchnorm: per-domain``, each training step passes the source batch, then the target batch,
through the model: each is normalised by its own batch statistics, the source's running statistics follow the
source batches only, and a second set of running statistics follows the target batches. Target evaluation
splits are then normalised by the target's running statistics. A joint pass instead normalises both domains by
their mixture, which on a strong low-level shift (scanned -> printed glyphs) cost the target 40 points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class TargetStatistics:
    """The target domain's running BatchNorm statistics, swapped into the layers while the target is served."""

    _BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, model: nn.Module) -> None:
        self.layers = batchnorm_layers(model)
        # Start from the source's statistics, as DSBN's target branch starts from the pretrained ones.
        self.buffers = [{name: getattr(layer, name).clone() for name in self._BUFFERS} for layer in self.layers]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside: the layers hold (and, in training mode, update) the target's statistics. The buffers are
        swapped, never copied, so autograd's record of the forward pass stays valid for the backward pass."""
        source = [{name: getattr(layer, name) for name in self._BUFFERS} for layer in self.layers]
        self._install(self.buffers)
        try:
            yield
        finally:
            self._install(source)

    def _install(self, buffers: list[dict[str, torch.Tensor]]) -> None:
        for layer, tensors in zip(self.layers, buffers):
            for name, tensor in tensors.items():
                setattr(layer, name, tensor)

    def state_dict(self) -> list[dict[str, torch.Tensor]]:
        return [{name: tensor.clone() for name, tensor in buffers.items()} for buffers in self.buffers]

    def load_state_dict(self, state: list[dict[str, torch.Tensor]]) -> None:
        if len(state) != len(self.buffers):
            raise ValueError(f"target BatchNorm statistics for {len(state)} layers, the model has {len(self.buffers)}")
        with torch.no_grad():
            for buffers, saved in zip(self.buffers, state):
                for name, tensor in buffers.items():
                    tensor.copy_(saved[name])
