"""Polyak averaging: an exponential moving average of the trained weights, evaluated and saved in their place.

Averaging the iterates of stochastic training gives a model that sits in a flatter region than any single iterate
(Polyak and Juditsky, 1992); domain-adaptation recipes evaluate such an average (Shu et al., 2018, VADA and
DIRT-T: decay 0.998), and weight averaging is among the few changes that carry out-of-domain gains across data sets
(Cha et al., 2021, SWAD). The average covers every tensor the trained model is made of, BatchNorm statistics
included; integer buffers (BatchNorm's batch counter) follow the trained model as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from transmodal.errors import CheckpointError


class WeightAverage:
    """The average of the tensors ``trained()`` returns (live references, keyed by stable names), updated after
    every optimizer step with the decay ``min(decay, (1 + n) / (10 + n))`` at the n-th update: TensorFlow's
    ExponentialMovingAverage with ``num_updates``, so that the average of a short run is not held by the initial
    weights (at 0.998, the initial weights would still weigh 0.73 after 155 steps)."""

    def __init__(self, decay: float, trained: Callable[[], dict[str, torch.Tensor]]) -> None:
        self.decay = decay
        self.trained = trained
        self.updates = 0
        self.average = {name: tensor.detach().clone() for name, tensor in trained().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for name, tensor in self.trained().items():
            kept = self.average[name]
            if kept.is_floating_point():
                kept.lerp_(tensor.detach().to(kept.dtype), 1.0 - decay)
            else:
                kept.copy_(tensor)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside: the model holds the averaged weights; after: the trained ones again, bit for bit."""
        tensors = self.trained()
        trained = {name: tensor.detach().clone() for name, tensor in tensors.items()}
        with torch.no_grad():
            for name, tensor in tensors.items():
                tensor.copy_(self.average[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, tensor in tensors.items():
                    tensor.copy_(trained[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates,
                "average": {name: tensor.clone() for name, tensor in self.average.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        average = state.get("average") if isinstance(state, dict) else None
        if not isinstance(average, dict) or set(average) != set(self.average):
            raise CheckpointError("its averaged weights (trainer.ema_decay) do not fit this model")
        with torch.no_grad():
            for name, tensor in self.average.items():
                tensor.copy_(average[name])
        self.updates = int(state["updates"])
