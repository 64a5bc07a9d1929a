"""Optimizers and learning-rate schedules (per step, with linear warm-up)."""

from __future__ import annotations

import math

import torch

from transmodal.config import OptimizerConfig, ScheduleConfig
from transmodal.strategy import ParamGroup


def build_optimizer(groups: list[ParamGroup], config: OptimizerConfig) -> torch.optim.Optimizer:
    torch_groups = []
    for group in groups:
        # Frozen parameters stay in the optimizer (they get no gradient, so no update) so that a strategy
        # can unfreeze them later in training.
        entry: dict = {"params": group.params, "lr": config.lr * group.lr_scale, "name": group.name}
        if group.weight_decay is not None:
            entry["weight_decay"] = group.weight_decay
        torch_groups.append(entry)
    if config.name == "sgd":
        return torch.optim.SGD(
            torch_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(torch_groups, lr=config.lr, weight_decay=config.weight_decay)


def schedule_factor(config: ScheduleConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of every group's base rate after ``step`` optimizer steps."""
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if config.name == "constant":
        return 1.0
    if config.name == "step":
        return config.gamma ** (step // (config.step_epochs * steps_per_epoch))
    progress = (step - warmup) / max(1, total_steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_scale + (1.0 - config.min_lr_scale) * cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, steps_per_epoch: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(config, step, steps_per_epoch, total_steps)
    )
