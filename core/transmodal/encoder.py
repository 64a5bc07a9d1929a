"""The encoder contract: one modality's batch tensor in, features out.

An encoder returns (B, D) features, or (B, T, D) tokens when ``returns_tokens`` is set (for attention
fusion). ``layer_groups`` lists its layers from input to output; freezing, gradual unfreezing and
layer-wise learning rates work on these groups.
"""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """Base class of encoders and backbones. Subclasses set ``out_dim`` and implement ``forward``."""

    out_dim: int
    returns_tokens: bool = False

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        """(name, module) pairs from input to output. Default: the direct children in order."""
        return list(self.named_children())

    def token_mask(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """For token outputs: (B, T) True where a token is real. None means every token is real."""
        return None


class ImageInput(nn.Module):
    """uint8 images to normalised floats on the training device, with batched augmentation in training.

    Whole-batch tensor ops replace per-sample PIL transforms: random crop with zero padding (one offset per
    sample, gathered at once), horizontal flip, optional resize, normalisation.
    """

    def __init__(
        self,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
        crop_padding: int = 0,
        hflip: bool = False,
        size: int | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if self.training and self.crop_padding > 0:
            x = random_crop(x, self.crop_padding)
        if self.training and self.hflip:
            x = random_hflip(x)
        if self.size is not None and x.shape[-1] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Pad by ``padding`` with zeros and cut a random window of the original size for each sample."""
    batch, channels, height, width = images.shape
    padded = nn.functional.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), device=images.device)
    rows = (offsets[0].view(batch, 1) + torch.arange(height, device=images.device)).view(batch, 1, height, 1)
    cols = (offsets[1].view(batch, 1) + torch.arange(width, device=images.device)).view(batch, 1, 1, width)
    padded_width = width + 2 * padding
    flat = padded.flatten(2)
    index = (rows * padded_width + cols).expand(batch, channels, height, width).flatten(2)
    return flat.gather(2, index).view(batch, channels, height, width)


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
