"""Layer groups as the fine-tuning strategies see them: matched by name pattern, ranked by level from the top.

A model's groups run from input to output: each encoder's groups, then ``fusion``, then ``head``. With
several encoders "one more group from the top" is ambiguous, so strategies work on *levels*: the head is
level 0, fusion level 1, and each encoder's last group level 2, the one before it level 3, and so on, so
the encoders of every modality open (or slow down) together.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from transmodal.errors import ConfigError
from transmodal.model import TransmodalModel


def group_levels(model: TransmodalModel) -> dict[str, int]:
    """Level of each layer group, counted from the head (0)."""
    levels = {"head": 0, "fusion": 1}
    for modality in model.modalities:
        names = [name for name, _ in model.encoders[modality].layer_groups()]
        for index, name in enumerate(names):
            levels[f"encoders.{modality}.{name}"] = 2 + len(names) - 1 - index
    return levels


def match_groups(model: TransmodalModel, patterns: list[str], where: str) -> list[tuple[str, nn.Module]]:
    """The groups whose names match any pattern; a pattern that matches nothing is a config error."""
    groups = model.layer_groups()
    names = [name for name, _ in groups]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ConfigError(f"{where}: no layer group matches '{pattern}'; this model's groups are "
                              f"{', '.join(names)}")
    return [(name, module) for name, module in groups if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def first_encoder_groups(model: TransmodalModel, k: int) -> list[tuple[str, nn.Module]]:
    """The first (input-side) k groups of every encoder."""
    chosen: list[tuple[str, nn.Module]] = []
    for modality in model.modalities:
        chosen.extend((f"encoders.{modality}.{name}", module)
                      for name, module in model.encoders[modality].layer_groups()[:k])
    return chosen


def set_trainable(module: nn.Module, trainable: bool, freeze_batchnorm: bool) -> None:
    """Switch a group's gradients on or off; a frozen group also runs in eval mode if ``freeze_batchnorm``."""
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)
    if freeze_batchnorm:
        module.train(trainable)
