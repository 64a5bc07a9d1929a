"""Refusing a model that cannot fit in memory before any of it is allocated.

The model is first built on PyTorch's meta device, where parameters have shapes but no storage, so its size is
known for free; only if training it fits the memory available on the training device is it built for real.
This generalises the tensor fusion's own check of its outer product to every component.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from transmodal.errors import ComponentBuildError, ConfigError

GIB = 2**30
# Bytes per float32 parameter while training: the weights and their gradients, plus the optimizer's state
# (AdamW: two moment buffers; SGD: one momentum buffer).
TRAINING_BYTES_PER_PARAMETER = {"adamw": 16, "sgd": 12}


def available_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now, or None where that cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def build_if_it_fits(build: Callable[[], nn.Module], parts: Callable[[nn.Module], dict[str, nn.Module]],
                     device: torch.device, optimizer: str) -> nn.Module:
    """``build()`` once on the meta device to measure it; raise ConfigError naming the size and its largest part
    (from ``parts``: config path -> module) if training it would not fit on ``device``; else build it for real."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "loading weights into meta parameters is a no-op"
            measured = build()
    except ComponentBuildError:
        measured = None  # a factory that cannot run on the meta device: its size is not known beforehand
    if measured is not None:
        _check(measured, parts(measured), device, optimizer)
    return build()


def _count(module: nn.Module) -> int:
    return sum(tensor.numel() for tensor in [*module.parameters(), *module.buffers()])


def _check(model: nn.Module, parts: dict[str, nn.Module], device: torch.device, optimizer: str) -> None:
    free = available_memory(device)
    count = _count(model)
    needed = count * TRAINING_BYTES_PER_PARAMETER[optimizer]
    if free is None or needed <= free:
        return
    largest, module = max(parts.items(), key=lambda item: _count(item[1]))
    raise ConfigError(
        f"model: the model has {count:,} parameters, {count * 4 / GIB:,.1f} GiB as float32 weights and "
        f"{needed / GIB:,.1f} GiB to train with {optimizer} (weights, gradients and optimizer state), more than "
        f"the {free / GIB:,.1f} GiB of memory free on {device}. Most of it is {largest} ({_count(module):,} "
        f"parameters): make it smaller (its widths or channels), or train on a device with more memory."
    )
