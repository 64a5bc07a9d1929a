"""Which torch device a config's ``trainer.device`` names, refused with a clear reason when it is not here."""

from __future__ import annotations

import torch

from transmodal.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device: '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device: '{name}' asked for, but CUDA is not available here; use auto or cpu")
    return device
