"""Optimizers and learning-rate schedules (per step, with linear warm-up)."""

from __future__ import annotations

import math

import torch

from transmodal.config import OptimizerConfig, ScheduleConfig
from transmodal.strategy import ParamGroup


def build_optimizer(groups: list[ParamGroup], config: OptimizerConfig) -> torch.optim.Optimizer:
    """Groups with the same learning-rate scale and weight decay become one optimizer group (fewer kernel
    launches per step). Frozen parameters stay in: they get no gradient, so no update, and a strategy can
    unfreeze them later in training."""
    merged: dict[tuple[float, float | None], dict] = {}
    for group in groups:
        key = (group.lr_scale, group.weight_decay)
        entry = merged.setdefault(key, {"params": [], "lr": config.lr * group.lr_scale, "names": []})
        entry["params"].extend(group.params)
        entry["names"].append(group.name)
        if group.weight_decay is not None:
            entry["weight_decay"] = group.weight_decay
    torch_groups = [{**entry, "names": ",".join(entry["names"])} for entry in merged.values()]
    on_cuda = all(p.is_cuda for entry in torch_groups for p in entry["params"])
    if config.name == "sgd":
        return torch.optim.SGD(
            torch_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(torch_groups, lr=config.lr, weight_decay=config.weight_decay, fused=on_cuda or None)


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
    if config.name == "annealed":
        return (1.0 + config.alpha * min(1.0, progress)) ** -config.beta
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_scale + (1.0 - config.min_lr_scale) * cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, steps_per_epoch: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(config, step, steps_per_epoch, total_steps)
    )
